"""Container files: header and blocks read by fastavro, cached schemas, archives with many alerts."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
import pytest

from streamer.alerts import AlertDecoder, RejectedAlert
from streamer.alerts.container import iter_container_blocks, read_container_header
from streamer.alerts.synthetic import (
    encode_container,
    encode_ztf_container,
    lsst_schema,
    make_light_curve,
    make_lsst_alert_from_light_curve,
    make_ztf_alert,
)


def test_header_exposes_the_embedded_schema_unparsed(ztf_sample: bytes) -> None:
    header = read_container_header(ztf_sample)

    assert header.codec == "null"
    assert json.loads(header.schema_json)["name"] == "alert"
    assert header.schema_json == fastavro.reader(io.BytesIO(ztf_sample)).metadata["avro.schema"].encode()
    assert ztf_sample.endswith(header.sync)  # every block ends with it; the sample has one
    assert header.fingerprint == read_container_header(bytes(ztf_sample)).fingerprint
    assert [block.n_records for block in iter_container_blocks(ztf_sample, header)] == [1]


def _archive(n_alerts: int, codec: str = "null", sync_interval: int = 2000) -> tuple[bytes, list[np.ndarray]]:
    """A container of ``n_alerts`` Rubin alerts of distinct objects, several blocks long."""
    curves = [make_light_curve(8 + i, seed=i, first_source_id=1000 * i) for i in range(n_alerts)]
    records = [
        make_lsst_alert_from_light_curve(c, object_id=100 + i, alert_id=i) for i, c in enumerate(curves)
    ]
    buffer = io.BytesIO()
    fastavro.writer(buffer, lsst_schema("7.4"), records, codec=codec, sync_interval=sync_interval)
    return buffer.getvalue(), curves


@pytest.mark.parametrize("codec", ["null", "deflate", "bzip2", "xz"])
def test_archive_yields_every_alert(decoder: AlertDecoder, codec: str) -> None:
    data, curves = _archive(25, codec)
    header = read_container_header(data)
    assert header.codec == codec
    assert len(list(iter_container_blocks(data, header))) > 1

    alerts = list(decoder.iter_container(data))

    assert [a.object_id for a in alerts] == [str(100 + i) for i in range(25)]
    for alert, curve in zip(alerts, curves, strict=True):
        np.testing.assert_array_equal(alert.points["source_id"], curve["source_id"])
        np.testing.assert_allclose(alert.points["flux"], curve["flux"], rtol=1e-6)


def test_decode_wants_exactly_one_alert(decoder: AlertDecoder) -> None:
    data, _ = _archive(3)
    with pytest.raises(RejectedAlert) as caught:
        decoder.decode(data)
    assert caught.value.reason == "bad_container"

    empty = encode_container([], lsst_schema("7.4"))
    with pytest.raises(RejectedAlert) as caught:
        decoder.decode(empty)
    assert caught.value.reason == "bad_container"


def test_bad_alerts_in_an_archive_go_to_the_callback(decoder: AlertDecoder) -> None:
    curves = [make_light_curve(6, seed=i, first_source_id=100 * i) for i in range(4)]
    records = [make_lsst_alert_from_light_curve(c, object_id=1 + i, alert_id=i) for i, c in enumerate(curves)]
    records[2]["diaSource"]["psfFlux"] = float("nan")
    data = encode_container(records, lsst_schema("7.4"))
    rejected: list[RejectedAlert] = []

    alerts = list(decoder.iter_container(data, on_reject=rejected.append))

    assert [a.alert_id for a in alerts] == [0, 1, 3]
    assert [r.reason for r in rejected] == ["non_finite_flux"]
    with pytest.raises(RejectedAlert):
        list(decoder.iter_container(data))


def test_a_corrupt_block_loses_only_that_block(decoder: AlertDecoder) -> None:
    data, _ = _archive(25, sync_interval=2000)
    header = read_container_header(data)
    first_block_end = data.index(header.sync, header.data_offset)
    corrupt = bytearray(data)
    corrupt[first_block_end - 1] ^= 0xFF  # last byte of the first block's data
    rejected: list[RejectedAlert] = []

    alerts = list(decoder.iter_container(bytes(corrupt), on_reject=rejected.append))

    assert 0 < len(alerts) < 25
    assert len(rejected) >= 1
    assert alerts[-1].alert_id == 24


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d[:3], "truncated"),
        (lambda d: d[:40], "truncated"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d[:-16] + bytes(16), "bad_container"),
        (lambda d: b"Obj\x02" + d[4:], "bad_magic"),
    ],
)
def test_broken_container_framing(mangle: Callable[[bytes], bytes], reason: str) -> None:
    data, _ = _archive(1)
    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder(framing="container").decode(mangle(data))
    assert caught.value.reason == reason


def _long(value: int) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    return out.getvalue()


@pytest.mark.parametrize(("size_change", "reason"), [(2, "schema_mismatch"), (-2, "truncated")])
def test_records_must_fill_their_block(size_change: int, reason: str) -> None:
    data, _ = _archive(1)
    header = read_container_header(data)
    (block,) = iter_container_blocks(data, header)
    records = block.records.getvalue()[: block.end]
    # Same record, in a block declared (and cut, or padded) to another size.
    body = records + bytes(size_change) if size_change > 0 else records[:size_change]
    rebuilt = data[: header.data_offset] + _long(1) + _long(len(body)) + body + header.sync
    for decode in (AlertDecoder().decode, lambda d: list(AlertDecoder().iter_container(d))):
        with pytest.raises(RejectedAlert) as caught:
            decode(rebuilt)
        assert caught.value.reason == reason


@pytest.mark.parametrize(
    "metadata",
    [
        _long(1) + _long(2) + b"\xff\xfe" + _long(1) + b"x" + _long(0),  # a key that is not UTF-8
        _long(1) + _long(-3) + bytes(40),  # a key of length -3
    ],
    ids=["UTF-8", "negative length"],
)
def test_malformed_metadata_is_a_bad_container(metadata: bytes) -> None:
    data = b"Obj\x01" + metadata + bytes(16) + _long(0) + _long(0) + bytes(16)
    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder().decode(data)
    assert caught.value.reason == "bad_container"


def test_unsupported_codec_and_missing_schema_are_bad_containers() -> None:
    data, _ = _archive(1)
    header = read_container_header(data)
    # Rewrite the metadata map by hand: same layout, other content.
    for metadata in ({"avro.schema": header.schema_json, "avro.codec": b"snappy"}, {"avro.codec": b"null"}):
        out = io.BytesIO()
        out.write(b"Obj\x01")
        fastavro.schemaless_writer(out, {"type": "map", "values": "bytes"}, metadata)
        out.write(header.sync + data[header.data_offset :])
        with pytest.raises(RejectedAlert) as caught:
            AlertDecoder().decode(out.getvalue())
        assert caught.value.reason == "bad_container"


def test_schemas_are_parsed_once_per_fingerprint(monkeypatch: pytest.MonkeyPatch, ztf_sample: bytes) -> None:
    import streamer.alerts.decoder as decoder_module
    from streamer.alerts.projection import Projection

    calls = []
    original = decoder_module.parse_schema_json
    pruned: list[Projection] = []

    def counting(text: bytes) -> dict[str, Any]:
        calls.append(text)
        return original(text)

    def counting_projection(schema: dict[str, Any], fields: Any) -> Projection:
        pruned.append(Projection(schema, fields))
        return pruned[-1]

    monkeypatch.setattr(decoder_module, "parse_schema_json", counting)
    monkeypatch.setattr(decoder_module, "Projection", counting_projection)
    curve = make_light_curve(3, bands="gr", forced_every=0)
    ztf_4 = encode_ztf_container(make_ztf_alert("ZTF24aaaaaaa", 1, curve[-1], curve[:-1]))
    decoder = AlertDecoder()
    pruned.clear()  # the schemaless ELAsTiCC plan, made up front
    for message in [ztf_sample] * 3 + [ztf_4, ztf_sample, ztf_4, ztf_sample]:
        decoder.decode(message)
    assert len(calls) == 2  # one per distinct embedded schema
    assert len(pruned) == 2  # and one pruned reader schema each


def test_the_schema_cache_is_bounded() -> None:
    decoder = AlertDecoder(schema_cache_size=2)
    for version in ("3.0", "5.0", "7.4", "9.0"):
        curve = make_light_curve(5, seed=1)
        record = make_lsst_alert_from_light_curve(curve, object_id=1, alert_id=2, schema_version=version)
        assert (
            decoder.decode(encode_container([record], lsst_schema(version))).schema
            == f"lsst.v{version.replace('.', '_')}"
        )
    assert len(decoder._container_plans) == 2
