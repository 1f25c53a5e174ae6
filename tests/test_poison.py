"""The poison catalogue: bad and awkward messages sent through a real broker to a running
service. Each bad one ends in the dead-letter topic with its reason, headers and bytes;
each awkward one gets the records the README documents; the good alerts around them all
get theirs; the service exits 0.

One service run serves every test here: a one-partition input topic holds all kinds,
interleaved with good Rubin, ZTF and ELAsTiCC alerts (see the README's poison table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from streamer.alerts import AlertDecoder
from streamer.alerts.synthetic import (
    encode_confluent,
    make_light_curve,
    make_lsst_alert,
    make_lsst_alert_from_light_curve,
)
from streamer.history import DEFAULT_MAX_POINTS_PER_OBJECT
from streamer.photometry import BANDS, PointKind
from streamer.records import EmbeddingRecord
from streamer.sinks.kafka import DEAD_LETTER_MAX_BYTES, decode_record_value
from tests.alert_factory import expected_embedding, make_alerts
from tests.alerts.conftest import ELASTICC_SAMPLE, ZTF_SAMPLE
from tests.test_service import _env, _read_all, _run_service

pytestmark = pytest.mark.kafka

#: The service's limit in this run; the 100,000-point alert (~4.3 MB) stays under it.
MAX_MESSAGE_BYTES = 5_000_000
#: The input topic's limit, above MAX_MESSAGE_BYTES so the oversized message gets through.
INPUT_TOPIC_MAX_BYTES = 16 << 20
HISTORY_POINTS = 100_000

RecordKey = tuple[str, int]  # (object id, alert id)


@dataclass
class Case:
    """One input message and what must become of it.

    ``source`` is the message or a function building it (the large ones are built only
    when a test runs). A case expects either a dead letter with one of ``reasons`` or
    one record per entry of ``curves`` (each embedding that light curve) under ``key``.
    """

    name: str
    source: bytes | Callable[[], bytes]
    reasons: frozenset[str] = frozenset()
    key: RecordKey | None = None
    curves: list[np.ndarray] = field(default_factory=list)

    @cached_property
    def data(self) -> bytes:
        return self.source() if callable(self.source) else self.source


def _dead(name: str, source: bytes | Callable[[], bytes], *reasons: str) -> Case:
    return Case(name, source, reasons=frozenset(reasons))


def _rubin(
    object_id: int, mutate: Callable[[dict[str, Any]], object] | None = None, **options: Any
) -> tuple[bytes, np.ndarray, RecordKey]:
    """A Rubin 7.4 alert of its own object: its bytes, light curve and record key."""
    curve = make_light_curve(12, first_source_id=object_id * 1000, seed=object_id)
    alert_id = int(curve["source_id"][-1])
    record = make_lsst_alert_from_light_curve(curve, object_id, alert_id, **options)
    if mutate is not None:
        mutate(record)
    return encode_confluent(record), curve, (str(object_id), alert_id)


def _set_trigger(column: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda record: record["diaSource"].__setitem__(column, value)


def _clear_object(record: dict[str, Any]) -> None:
    record["diaSource"]["diaObjectId"] = None
    record["diaObject"] = None


def _nan_everywhere(record: dict[str, Any]) -> None:
    for row in [record["diaSource"], *record["prvDiaSources"], *record["prvDiaForcedSources"]]:
        row["psfFlux"] = float("nan")


def _bad_history_row(name: str, object_id: int, column: str, value: object) -> Case:
    """A good trigger with one bad history detection: the row is dropped, the alert embedded."""
    spoiled: list[int] = []

    def spoil(record: dict[str, Any]) -> None:
        row = record["prvDiaSources"][1]
        row[column] = value
        spoiled.append(row["diaSourceId"])

    data, curve, key = _rubin(object_id, spoil)
    return Case(name, data, key=key, curves=[curve[curve["source_id"] != spoiled[0]]])


def _catalogue() -> tuple[list[Case], list[Case]]:
    """The poison and awkward cases, and the good alerts to interleave them with."""
    good, _, _ = _rubin(2001)
    random = np.random.default_rng(6).bytes(400)
    v3 = make_lsst_alert_from_light_curve(make_light_curve(8, seed=1), 2002, 5, schema_version="3.0")

    # Forced photometry (compact rows) and the triggering detection.
    big = make_light_curve(HISTORY_POINTS + 1, cadence_days=0.01, forced_every=1, first_source_id=10**9)
    big_key = ("2020", int(big["source_id"][-1]))
    # A detection of the big object from long before the points its capped history keeps.
    early = big[5].copy()
    early["kind"], early["source_id"] = PointKind.DETECTION, 1

    twice, twice_curve, twice_key = _rubin(2030)
    cases = [
        _dead("truncated packet", good[: len(good) // 2], "truncated"),
        # Auto framing reads unrecognised bytes as schemaless ELAsTiCC.
        _dead("random bytes", b"\x8b" + random, "schema_mismatch", "truncated"),
        _dead("random bytes, Confluent framing", b"\x00" + random, "unknown_schema"),
        _dead("random bytes, container framing", b"Obj\x01" + random, "bad_container", "truncated"),
        _dead("wrong magic byte", b"\x01" + good[1:], "bad_magic"),
        _dead("unknown schema id", b"\x00" + (9999).to_bytes(4, "big") + good[5:], "unknown_schema"),
        _dead(
            "bytes not matching their schema",
            b"\x00" + (1101).to_bytes(4, "big") + encode_confluent(v3, "3.0")[5:],
            "schema_mismatch",
        ),
        _dead("null object id", _rubin(2003, _clear_object)[0], "null_object_id"),
        _dead("NaN flux", _rubin(2004, _set_trigger("psfFlux", float("nan")))[0], "non_finite_flux"),
        _dead("inf flux", _rubin(2005, _set_trigger("psfFlux", float("inf")))[0], "non_finite_flux"),
        _dead("negative error", _rubin(2006, _set_trigger("psfFluxErr", -3.0))[0], "negative_error"),
        _dead("unknown band", _rubin(2007, _set_trigger("band", "w"))[0], "unknown_band"),
        _dead("no usable point", _rubin(2008, _nan_everywhere)[0], "no_usable_point"),
        _dead(
            "oversized message",
            lambda: _rubin(2040, cutout_bytes=MAX_MESSAGE_BYTES // 2)[0],
            "oversized",
        ),
        _bad_history_row("NaN flux in the history", 2010, "psfFlux", float("nan")),
        _bad_history_row("inf flux in the history", 2011, "psfFlux", float("-inf")),
        _bad_history_row("negative error in the history", 2012, "psfFluxErr", -1.0),
        _bad_history_row("unknown band in the history", 2013, "band", "w"),
        # The record embeds the most recent max_points_per_object points.
        Case(
            f"{HISTORY_POINTS}-point history",
            lambda: encode_confluent(make_lsst_alert_from_light_curve(big, 2020, big_key[1])),
            key=big_key,
            curves=[big[-DEFAULT_MAX_POINTS_PER_OBJECT:]],
        ),
        # Its point is older than all the capped history keeps: nothing to embed as of it.
        _dead(
            "alert older than its object's capped history",
            lambda: encode_confluent(make_lsst_alert(2020, 1, early)),
            "no_usable_point",
        ),
        Case("same alert twice", twice, key=twice_key, curves=[twice_curve, twice_curve]),
    ]
    # The same object's alerts, newest first, spread over the stream.
    unordered = make_alerts(n_objects=1, every=5, cutout_bytes=0, first_object_id=3000)[::-1]
    cases += [
        Case(f"out of time order {i}", a.data, key=(a.object_id, a.alert_id), curves=[a.curve])
        for i, a in enumerate(unordered)
    ]
    cases.insert(len(cases) // 2, Case("same alert twice (the repeat)", twice))

    goods = [
        Case(a.name, a.data, key=(a.object_id, a.alert_id), curves=[a.curve])
        for a in make_alerts(n_objects=3, every=3, cutout_bytes=500)
    ]
    # Samples of the other streams: one record per alert, embeddings not recomputed here.
    decoder = AlertDecoder()
    for sample in (ZTF_SAMPLE, ELASTICC_SAMPLE):
        data = sample.read_bytes()
        for i, alert in enumerate(decoder.iter_container(data)):
            goods.append(
                Case(f"{sample.name}#{i}", data if i == 0 else b"", key=(alert.object_id, alert.alert_id))
            )
    return cases, goods


CASES, GOODS = _catalogue()
DEAD_CASES = [c.name for c in CASES if c.reasons]
RECORD_CASES = [c.name for c in CASES if c.curves]


@dataclass
class PoisonRun:
    """What one service run over the catalogue left behind."""

    input_topic: str
    offsets: dict[str, int]  # input offset of each message, by its key (the case name)
    dead: dict[str, Any]  # dead-letter message by key
    records: dict[RecordKey, list[EmbeddingRecord]]
    rejected_metric: Counter[str]
    stats: dict[str, int]


def _publish_keyed(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> dict[str, int]:
    """Produce ``(key, value)`` messages in order; returns each key's offset."""
    offsets: dict[str, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets[msg.key().decode()] = msg.offset()

    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": INPUT_TOPIC_MAX_BYTES})
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    return offsets


@pytest.fixture(scope="module")
def poison_run(kafka_bootstrap: str, module_topic_factory: Callable[..., str], atcat_file: Path) -> PoisonRun:
    topics = {
        "input": module_topic_factory(
            prefix="poison-in", config={"max.message.bytes": str(INPUT_TOPIC_MAX_BYTES)}
        ),
        # Default limits (~1 MB): the oversized message's dead letter has to fit them.
        "output": module_topic_factory(prefix="poison-out"),
        "dlq": module_topic_factory(prefix="poison-dlq"),
    }
    good_messages = [(g.name, g.data) for g in GOODS if g.data]
    assert len(good_messages) > len(CASES)
    # Each case after a good alert, and good alerts after the last case.
    stream = [m for i, case in enumerate(CASES) for m in (good_messages[i], (case.name, case.data))]
    stream += good_messages[len(CASES) :]
    offsets = _publish_keyed(kafka_bootstrap, topics["input"], stream)

    service = _run_service(
        _env(
            kafka_bootstrap,
            topics,
            atcat_file,
            STREAMER_BATCH_MAX_MESSAGES="8",
            STREAMER_MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
        )
    )

    dead = {m.key().decode(): m for m in _read_all(kafka_bootstrap, topics["dlq"], len(DEAD_CASES))}
    records: dict[RecordKey, list[EmbeddingRecord]] = {}
    expected_records = sum(len(c.curves) for c in CASES) + len(GOODS)
    for message in _read_all(kafka_bootstrap, topics["output"], expected_records):
        record = decode_record_value(message.value())
        assert message.key() == record.object_id.encode()
        records.setdefault((record.object_id, record.alert_id), []).append(record)
    rejected: Counter[str] = Counter()
    for metric in service.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "streamer_alerts_rejected_total":
                rejected[sample.labels["reason"]] = int(sample.value)
    return PoisonRun(topics["input"], offsets, dead, records, rejected, dict(service.stats))


def _case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


@pytest.mark.parametrize("name", DEAD_CASES)
def test_poison_is_dead_lettered_with_its_reason_source_and_bytes(poison_run: PoisonRun, name: str) -> None:
    case = _case(name)
    assert name in poison_run.dead, f"{name}: no dead letter"
    message = poison_run.dead[name]
    headers = {k: v.decode() for k, v in message.headers()}
    assert headers["streamer.reason"] in case.reasons, headers
    assert headers["streamer.detail"]
    assert headers["streamer.source.topic"] == poison_run.input_topic
    assert headers["streamer.source.partition"] == "0"
    assert int(headers["streamer.source.offset"]) == poison_run.offsets[name]
    if len(name) + len(case.data) <= DEAD_LETTER_MAX_BYTES:
        assert message.value() == case.data
        assert "streamer.original.size" not in headers
    else:
        # Cut to fit the dead-letter topic's default ~1 MB limit; the full size in a header.
        assert len(message.key()) + len(message.value()) == DEAD_LETTER_MAX_BYTES
        assert case.data.startswith(message.value())
        assert int(headers["streamer.original.size"]) == len(case.data)


@pytest.mark.parametrize("name", RECORD_CASES)
def test_awkward_alerts_get_their_documented_records(
    poison_run: PoisonRun, atcat_file: Path, name: str
) -> None:
    case = _case(name)
    assert case.key is not None and name not in poison_run.dead
    records = poison_run.records.get(case.key, [])
    assert len(records) == len(case.curves), f"{name}: {len(records)} records"
    for record, curve in zip(records, case.curves, strict=True):
        counts = np.bincount(curve["band"], minlength=len(BANDS))
        assert record.points_per_band == {BANDS[b]: int(n) for b, n in enumerate(counts) if n}
        np.testing.assert_allclose(record.embedding, expected_embedding(atcat_file, curve), atol=1e-5)


def test_good_alerts_around_the_poison_get_one_correct_record_each(
    poison_run: PoisonRun, atcat_file: Path
) -> None:
    for good in GOODS:
        assert good.key is not None
        records = poison_run.records.get(good.key, [])
        assert len(records) == 1, f"{good.name}: {len(records)} records"
        if good.curves:
            np.testing.assert_allclose(
                records[0].embedding, expected_embedding(atcat_file, good.curves[0]), atol=1e-5
            )
    # Good alerts came after the last poison message too, and were processed.
    last_poison = max(poison_run.offsets[name] for name in DEAD_CASES)
    assert any(poison_run.offsets[g.name] > last_poison for g in GOODS if g.data)


def test_nothing_else_is_produced_and_metrics_count_every_dead_letter(poison_run: PoisonRun) -> None:
    assert set(poison_run.records) == {c.key for c in [*CASES, *GOODS] if c.key is not None}
    assert set(poison_run.dead) == set(DEAD_CASES)
    reasons = Counter(dict(m.headers())["streamer.reason"].decode() for m in poison_run.dead.values())
    assert poison_run.rejected_metric == reasons
    assert poison_run.stats["rejected"] == len(DEAD_CASES)
