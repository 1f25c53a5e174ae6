"""Bad input gets a rejection (dead letter), never an exception out of the ingest path."""

from __future__ import annotations

import copy
import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from fastavro.read import HEADER_SCHEMA

from streamer.alerts import AlertDecoder, SchemaRegistryUnavailable, photometry_codec
from streamer.alerts.projection import _strip_parse_hints
from streamer.alerts.synthetic import (
    encode_confluent,
    encode_container,
    make_light_curve,
    make_lsst_alert,
    make_ztf_alert,
    ztf_schema,
)
from streamer.history import MemoryHistoryStore
from streamer.photometry import DecodedAlert
from streamer.pipeline import Message, Pipeline, decode_messages
from streamer.sources.archive import ArchiveError, iter_archive_messages

ZTF_SAMPLE = Path(__file__).parents[1] / "data" / "alerts" / "ztf_v3.3_472263571115115000.avro"


def _ztf_record() -> dict:
    curve = make_light_curve(6, bands="gri", forced_every=0, seed=3)
    return make_ztf_alert("ZTF24aaaaaaa", int(curve["source_id"][-1]), curve[-1], curve[:-1])


def _rejected_in_batch(data: bytes) -> list[str]:
    """Decode one message the way the pipeline does; a good alert comes before it."""
    good = encode_container([_ztf_record()], ztf_schema())
    alerts, _, rejections = decode_messages(AlertDecoder(), [Message(good, "t@0"), Message(data, "t@1")])
    assert len(alerts) == 1
    return [r.reason for r in rejections]


# -- photometry records (auto-detected on any topic) ----------------------------------
@pytest.mark.parametrize("where", ["alert_time", "point_time"])
def test_photometry_record_with_non_finite_time_is_rejected_not_a_batch_failure(where: str) -> None:
    curve = make_light_curve(5, seed=1)
    good = DecodedAlert("lsst", "41", 1, float(curve["time"][-1]), curve, "lsst.v7_4")
    bad_curve = curve.copy()
    alert_time = float(curve["time"][-1])
    if where == "alert_time":
        alert_time = float("nan")
    else:
        bad_curve["time"][0] = np.inf
    bad = DecodedAlert("lsst", "42", 2, alert_time, bad_curve, "lsst.v7_4")
    messages = [Message(photometry_codec.encode(a), f"t@{i}") for i, a in enumerate((good, bad))]
    prepared = Pipeline(AlertDecoder(), MemoryHistoryStore(), embedder=None).prepare(messages)  # type: ignore[arg-type]
    assert [r.reason for r in prepared.outcome.rejections] == ["non_finite_time"]
    assert [a.object_id for a in prepared.alerts] == ["41"]


# -- Avro logical types on the fields read, in an embedded (container) schema ---------
def _with_field_type(schema: dict, path: list[str], kind: dict) -> dict:
    schema = copy.deepcopy(schema)
    node = schema
    for name in path[:-1]:
        node = next(f for f in node["fields"] if f["name"] == name)["type"]
    next(f for f in node["fields"] if f["name"] == path[-1])["type"] = kind
    return schema


@pytest.mark.parametrize(
    ("path", "kind", "value"),
    [
        (["candidate", "candid"], {"type": "long", "logicalType": "timestamp-millis"}, None),
        (["candidate", "jd"], {"type": "long", "logicalType": "timestamp-micros"}, 2460000),
        (["objectId"], {"type": "string", "logicalType": "uuid"}, "12345678-1234-5678-1234-567812345678"),
    ],
)
def test_logical_type_on_a_photometry_field_is_rejected(path: list[str], kind: dict, value: object) -> None:
    record = _ztf_record()
    if value is not None:
        target = record
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value
    schema = _with_field_type(_strip_parse_hints(ztf_schema()), path, kind)
    assert _rejected_in_batch(encode_container([record], schema)) == ["unknown_schema"]


# -- a deeply nested embedded schema ---------------------------------------------------
def _container(schema_json: bytes, record: bytes) -> bytes:
    """A one-record container file built by hand (fastavro.writer would parse the schema)."""
    out, sync = io.BytesIO(), b"S" * 16
    header = {"magic": b"Obj\x01", "meta": {"avro.schema": schema_json}, "sync": sync}
    fastavro.schemaless_writer(out, fastavro.parse_schema(HEADER_SCHEMA), header)
    fastavro.schemaless_writer(out, "long", 1)
    fastavro.schemaless_writer(out, "long", len(record))
    return out.getvalue() + record + sync


def test_deeply_nested_embedded_schema_is_rejected() -> None:
    depth = 200  # a nullable field nobody reads, nesting records 200 deep
    nested = '{"type": "record", "name": "n0", "fields": []}'
    for i in range(1, depth):
        field = f'{{"name": "x", "type": ["null", {nested}]}}'
        nested = f'{{"type": "record", "name": "n{i}", "fields": [{field}]}}'
    text = json.dumps(_strip_parse_hints(ztf_schema()))
    text = text[:-2] + f', {{"name": "junk", "type": ["null", {nested}]}}]}}'
    body = io.BytesIO()
    fastavro.schemaless_writer(body, ztf_schema(), _ztf_record())
    data = _container(text.encode(), body.getvalue() + b"\x00")  # junk: null
    assert _rejected_in_batch(data) == ["unknown_schema"]


# -- a decoding bug met by one message -----------------------------------------------
class _Buggy(AlertDecoder):
    """A decoder with a bug that some messages (starting with ``bug``) run into."""

    def decode(self, message: bytes) -> DecodedAlert:
        if message.startswith(b"bug"):
            raise TypeError("an unforeseen value")
        return super().decode(message)

    def iter_container(self, message: bytes, **kwargs: Any) -> Iterator[DecodedAlert]:
        alerts = super().iter_container(message, **kwargs)
        yield next(alerts)
        raise KeyError("candidate")


def test_a_decoding_bug_rejects_the_message_that_met_it_and_no_other() -> None:
    curve = make_light_curve(3, seed=2)
    good = encode_confluent(make_lsst_alert(7, 1, curve[-1], curve[:-1]))
    container = encode_container([_ztf_record(), _ztf_record()], ztf_schema())
    messages = [Message(good, "t@0"), Message(b"bug", "t@1"), Message(container, "t@2"), Message(good, "t@3")]
    alerts, origins, rejections = decode_messages(_Buggy(), messages)
    assert [o.source for o in origins] == ["t@0", "t@3"]
    assert [a.alert_id for a in alerts] == [1, 1]
    assert [(r.reason, r.detail, r.source, r.data) for r in rejections] == [
        ("decode_error", "TypeError: an unforeseen value", "t@1", b"bug"),
        ("decode_error", "KeyError: 'candidate'", "t@2", container),  # all of it, bytes kept
    ]


def test_an_unreachable_schema_registry_is_not_taken_for_a_bad_message() -> None:
    class Unreachable(AlertDecoder):
        def decode(self, message: bytes) -> DecodedAlert:
            raise SchemaRegistryUnavailable("registry down")

    with pytest.raises(SchemaRegistryUnavailable):
        decode_messages(Unreachable(), [Message(b"\x00\x00\x00\x00\x01", "t@0")])


# -- a corrupt .avro.gz in an archive --------------------------------------------------
@pytest.mark.parametrize("packed", [False, True])
def test_corrupt_gzip_member_is_a_clear_archive_error(tmp_path: Path, packed: bool) -> None:
    corrupt = bytearray(gzip.compress(ZTF_SAMPLE.read_bytes()))
    corrupt[20:30] = b"\xff" * 10
    (tmp_path / "bad.avro.gz").write_bytes(bytes(corrupt))
    path = tmp_path / "bad.avro.gz"
    if packed:
        path = tmp_path / "night.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(tmp_path / "bad.avro.gz", arcname="bad.avro.gz")
    with pytest.raises(ArchiveError, match=r"bad\.avro\.gz"):
        list(iter_archive_messages([path]))


# -- a history row later than its alert, copying a later alert's trigger ---------------
def test_a_later_alerts_trigger_is_in_its_own_light_curve() -> None:
    curve = make_light_curve(6, seed=5, forced_every=0)
    forged = curve[5:6].copy()  # alert 6's trigger id, claimed by alert 5 with a future time
    forged["time"] += 100.0
    forged["flux"] = 1e6
    first = make_lsst_alert(7, 5, curve[4], np.concatenate([curve[:4], forged]))
    second = make_lsst_alert(7, 6, curve[5], curve[:5])
    decoder, store = AlertDecoder(), MemoryHistoryStore()
    store.merge([decoder.decode(encode_confluent(first))])
    assert decoder.dropped_rows == {"after_trigger": 1}
    alert = decoder.decode(encode_confluent(second))
    store.merge([alert])
    (seen,) = store.light_curves([(alert.object_id, alert.alert_time)])
    assert int(curve["source_id"][5]) in seen["source_id"].tolist()


# -- finite values that overflow the models' float32 inputs ----------------------------
class _SpySession:
    """An onnxruntime session that keeps every feed."""

    def __init__(self, session: object) -> None:
        self.session, self.feeds = session, []

    def get_inputs(self) -> object:
        return self.session.get_inputs()

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> object:
        self.feeds.append(feed)
        return self.session.run(outputs, feed)


def test_absurd_but_finite_history_time_never_reaches_the_model_as_inf(atcat_file: Path) -> None:
    import onnxruntime as ort

    from streamer.embed import ATCAT
    from streamer.embedder import LightCurveEmbedder

    curve = make_light_curve(12, seed=5, forced_every=0)
    curve["time"][0] = -1e39  # a prvDiaSources row: finite, so it passes the checks
    alert = AlertDecoder().decode(encode_confluent(make_lsst_alert(7, 12, curve[-1], curve[:-1])))
    store = MemoryHistoryStore()
    store.merge([alert])
    spy = _SpySession(ort.InferenceSession(str(atcat_file)))
    curves = store.light_curves([(alert.object_id, alert.alert_time)])
    LightCurveEmbedder(ATCAT(spy), "atcat").embed([alert], curves)
    assert all(np.isfinite(v).all() for feed in spy.feeds for v in feed.values() if v.dtype.kind == "f")
