"""The throughput shortcuts give the same records as the plain path.

Plain path: no window cache, no curve memo, one record per alert. Shortcuts: the window
cache (windows already embedded are not recomputed), the curve memo (an input the model
has seen is not embedded again: a repeated alert, or an alert that adds no point to a
band) and coalescing (one record per object per micro-batch, its newest alert's).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from streamer.alerts import AlertDecoder
from streamer.embedder import LightCurveEmbedder, load_model
from streamer.history import MemoryHistoryStore
from streamer.pipeline import Message, Pipeline
from streamer.records import EmbeddingRecord
from tests.alert_factory import make_alerts

BATCH = 6


@pytest.fixture(scope="module")
def stream() -> list[Message]:
    """Alerts of five objects in time order, a few of them delivered twice."""
    alerts = make_alerts(n_objects=5, every=2, base_points=30, cutout_bytes=100)
    alerts.sort(key=lambda a: float(a.curve["time"][-1]))
    messages = [Message(a.data, a.name) for a in alerts]
    rng = random.Random(7)
    for i in sorted(rng.sample(range(len(messages)), 6), reverse=True):
        messages.insert(i + rng.randint(0, 3), messages[i])  # a repeat, soon after
    return messages


def _pipeline(
    model_file: Path, family: str, *, shortcuts: bool, coalesce: bool = False, output: str | None = None
) -> Pipeline:
    model = load_model(
        family, model_file=model_file, output=output, cache_bytes=(64 << 20) if shortcuts else 0
    )
    embedder = LightCurveEmbedder(model, family, memo_bytes=(16 << 20) if shortcuts else 0)
    return Pipeline(AlertDecoder("confluent"), MemoryHistoryStore(), embedder, coalesce=coalesce)


def _run(
    pipeline: Pipeline, messages: list[Message], batch: int = BATCH
) -> tuple[list[list[EmbeddingRecord]], int]:
    """Records per batch, and how many alerts got neither a record nor a rejection."""
    batches, coalesced = [], 0
    for start in range(0, len(messages), batch):
        outcome = pipeline.process(messages[start : start + batch])
        # Astromer's early alerts may hold no positive flux (no magnitude) yet.
        assert {r.reason for r in outcome.rejections} <= {"no_usable_point"}
        batches.append(outcome.records)
        assert len(outcome.records) + len(outcome.rejections) + outcome.coalesced == outcome.alerts
        coalesced += outcome.coalesced
    return batches, coalesced


def _same(a: EmbeddingRecord, b: EmbeddingRecord) -> None:
    fields = {f.name for f in dataclasses.fields(EmbeddingRecord)} - {"embedding", "produced_at_ms"}
    assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
    assert a.embedding.dtype == b.embedding.dtype
    assert a.embedding.tobytes() == b.embedding.tobytes()  # bit for bit, signed zeros included


@pytest.fixture(params=["atcat", "astromer1"])
def model(request: pytest.FixtureRequest, atcat_file: Path, astromer_file: Path) -> tuple[str, Path]:
    return request.param, atcat_file if request.param == "atcat" else astromer_file


def test_cache_and_memo_give_the_plain_records_with_less_model_work(model, stream) -> None:
    family, path = model
    plain, fast = _pipeline(path, family, shortcuts=False), _pipeline(path, family, shortcuts=True)
    expected, _ = _run(plain, stream)
    got, _ = _run(fast, stream)
    assert [len(b) for b in got] == [len(b) for b in expected]
    for want_batch, got_batch in zip(expected, got, strict=True):
        for want, record in zip(want_batch, got_batch, strict=True):
            _same(record, want)
    # Every repeated alert was answered by the memo, and the model computed fewer windows.
    assert fast.embedder.memo.hits >= 6
    assert fast.embedder.model.windows_computed < plain.embedder.model.windows_computed


@pytest.mark.parametrize("output", ["mean", "sequence", "pooled"])
def test_records_do_not_depend_on_the_micro_batch_size(model, stream, output) -> None:
    """onnxruntime rounds differently for different batch sizes; every run is given the
    same number of windows, so a window's embedding does not depend on the rest of its batch."""
    family, path = model
    if output == "pooled":  # the family's other pooled output
        output = {"atcat": "last", "astromer1": "max"}[family]
    by_six, _ = _run(_pipeline(path, family, shortcuts=False, output=output), stream)
    one_by_one, _ = _run(_pipeline(path, family, shortcuts=True, output=output), stream, batch=1)
    flat = [r for b in by_six for r in b]
    assert len(flat) == sum(len(b) for b in one_by_one)
    for want, got in zip(flat, (r for b in one_by_one for r in b), strict=True):
        _same(got, want)


def test_repeat_of_an_alert_runs_no_model(atcat_file, stream) -> None:
    pipeline = _pipeline(atcat_file, "atcat", shortcuts=True)
    first = pipeline.process(stream[:1]).records
    runs = pipeline.embedder.model.onnx_runs
    again = pipeline.process(stream[:1]).records
    assert pipeline.embedder.model.onnx_runs == runs
    _same(again[0], first[0])


def test_astromer_band_without_a_new_point_comes_from_the_memo(astromer_file, stream) -> None:
    pipeline = _pipeline(astromer_file, "astromer1", shortcuts=True)
    records = pipeline.process(stream[:BATCH]).records
    record = records[-1]
    assert len(record.bands) > 1
    hits = pipeline.embedder.memo.hits
    # The same object, one alert later: the bands that got no new point are not re-embedded.
    later = next(m for m in stream[BATCH:] if m.source.split("-")[0] == record.object_id)
    newer = pipeline.process([later]).records[0]
    unchanged = [b for b in record.bands if newer.points_per_band.get(b) == record.points_per_band[b]]
    assert unchanged and len(unchanged) < len(newer.bands)
    assert pipeline.embedder.memo.hits - hits == len(unchanged)
    for b in unchanged:
        np.testing.assert_array_equal(
            newer.embedding[newer.bands.index(b)], record.embedding[record.bands.index(b)]
        )


def test_coalescing_emits_each_objects_newest_alert_with_its_plain_record(model, stream) -> None:
    family, path = model
    plain_batches, _ = _run(_pipeline(path, family, shortcuts=False), stream)
    coalesced_batches, dropped = _run(_pipeline(path, family, shortcuts=True, coalesce=True), stream)
    assert dropped > 0
    assert sum(len(b) for b in coalesced_batches) < sum(len(b) for b in plain_batches)
    for plain, coalesced in zip(plain_batches, coalesced_batches, strict=True):
        newest: dict[str, EmbeddingRecord] = {}
        for r in plain:
            if r.object_id not in newest or (r.alert_time, r.alert_id) > (
                newest[r.object_id].alert_time,
                newest[r.object_id].alert_id,
            ):
                newest[r.object_id] = r
        assert sorted(r.object_id for r in coalesced) == sorted(newest)
        for r in coalesced:
            _same(r, newest[r.object_id])


def test_memo_stays_within_its_budget(atcat_file, stream) -> None:
    model = load_model("atcat", model_file=atcat_file)
    one = model.embed_many([(np.arange(5.0), np.ones(5), np.ones(5), np.zeros(5, np.int64))])[0]
    embedder = LightCurveEmbedder(model, "atcat", memo_bytes=3 * one.nbytes)
    pipeline = Pipeline(AlertDecoder("confluent"), MemoryHistoryStore(), embedder)
    _run(pipeline, stream)
    assert 0 < embedder.memo.used <= 3 * one.nbytes


def test_random_subsample_is_never_memoised(atcat_file) -> None:
    model = load_model(
        "atcat", model_file=atcat_file, reduction="random-subsample", reduction_kwargs={"rng": 0}
    )
    assert LightCurveEmbedder(model, "atcat", memo_bytes=1 << 20).memo.budget == 0
