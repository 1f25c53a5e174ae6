"""Framing detection, every rejection reason, and the schema registry fallback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamer.alerts import REJECTION_REASONS, AlertDecoder, Framing, RejectedAlert, SchemaRegistryUnavailable
from streamer.alerts.container import read_container_header
from streamer.alerts.projection import _strip_parse_hints
from streamer.alerts.schemas import elasticc_v0_9_schema
from streamer.alerts.synthetic import (
    encode_confluent,
    encode_container,
    encode_schemaless,
    encode_ztf_container,
    lsst_schema,
    make_elasticc_alert,
    make_light_curve,
    make_lsst_alert_from_light_curve,
    make_ztf_alert,
)

from .conftest import ZTF_SAMPLE


def _rubin_record(version: str = "7.4") -> dict[str, Any]:
    curve = make_light_curve(8, seed=1)
    return make_lsst_alert_from_light_curve(curve, 1, 2, schema_version=version, cutout_bytes=500)


def _rubin(mutate: Callable[[dict[str, Any]], object] | None = None, version: str = "7.4") -> bytes:
    record = _rubin_record(version)
    if mutate is not None:
        mutate(record)
    return encode_confluent(record, version)


def _with_schema_id(message: bytes, schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + message[5:]


def _ztf(mutate: Callable[[dict[str, Any]], object]) -> bytes:
    curve = make_light_curve(3, bands="gr", forced_every=0)
    record = make_ztf_alert("ZTF24aaaaaaa", 1, curve[-1], curve[:-1])
    mutate(record)
    return encode_ztf_container(record)


def _ztf_negative_string_length() -> bytes:
    data = bytearray(ZTF_SAMPLE.read_bytes())
    # The record opens with schemavsn "3.3": length byte 0x06. 0x07 is length -1.
    start = data.index(b"\x063.3", read_container_header(bytes(data)).data_offset)
    data[start] = 0x07
    return bytes(data)


def _foreign_container() -> bytes:
    schema = {"type": "record", "name": "test.weather", "fields": [{"name": "temperature", "type": "double"}]}
    return encode_container([{"temperature": 12.5}], schema)


def _clear_object(record: dict[str, Any]) -> None:
    record["diaSource"]["diaObjectId"] = None
    record["diaObject"] = None


def _set_trigger(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda record: record["diaSource"].__setitem__(field, value)


def _nan_everywhere(record: dict[str, Any]) -> None:
    for row in [record["diaSource"], *record["prvDiaSources"], *record["prvDiaForcedSources"]]:
        row["psfFlux"] = float("nan")


def _without_history(record: dict[str, Any]) -> None:
    record["prvDiaSources"] = record["prvDiaForcedSources"] = []


# (case, decoder options, message factory, reason)
REJECTIONS: list[tuple[str, dict[str, Any], Callable[[], bytes], str]] = [
    ("empty", {}, lambda: b"", "truncated"),
    ("confluent header cut", {}, lambda: b"\x00\x00\x00", "truncated"),
    ("confluent payload cut", {}, lambda: _rubin()[:-100], "truncated"),
    ("container magic cut", {}, lambda: b"Ob", "truncated"),
    ("container cut", {}, lambda: ZTF_SAMPLE.read_bytes()[:30_000], "truncated"),
    (
        "elasticc cut",
        {},
        lambda: encode_schemaless(_elasticc_record(), elasticc_v0_9_schema())[:50],
        "truncated",
    ),
    ("wrong magic byte", {"framing": "confluent"}, lambda: b"\x01" + _rubin()[1:], "bad_magic"),
    ("wrong magic byte, auto framing", {}, lambda: b"\x01" + _rubin()[1:], "bad_magic"),
    ("confluent bytes as container", {"framing": "container"}, lambda: _rubin(), "bad_magic"),
    ("no schemaless schema", {"schemaless_schema": None}, lambda: b"hello alert", "not_avro"),
    (
        "two alerts in one message",
        {},
        lambda: encode_container([_rubin_record()] * 2, lsst_schema("7.4")),
        "bad_container",
    ),
    ("unknown schema id", {}, lambda: _with_schema_id(_rubin(), 9999), "unknown_schema"),
    ("foreign container schema", {}, _foreign_container, "unknown_schema"),
    ("trailing bytes", {}, lambda: _rubin() + b"\x00\x00", "schema_mismatch"),
    ("bytes of another version", {}, lambda: _with_schema_id(_rubin(version="3.0"), 1101), "schema_mismatch"),
    ("negative string length", {}, _ztf_negative_string_length, "schema_mismatch"),
    ("null object id", {}, lambda: _rubin(_clear_object), "null_object_id"),
    ("empty ZTF objectId", {}, lambda: _ztf(lambda r: r.update(objectId="")), "null_object_id"),
    ("NaN time", {}, lambda: _rubin(_set_trigger("midpointMjdTai", float("nan"))), "non_finite_time"),
    ("NaN flux", {}, lambda: _rubin(_set_trigger("psfFlux", float("nan"))), "non_finite_flux"),
    ("null flux", {}, lambda: _rubin(_set_trigger("psfFlux", None)), "non_finite_flux"),
    ("NaN flux, v3", {}, lambda: _rubin(_set_trigger("psFlux", float("nan")), "3.0"), "non_finite_flux"),
    ("infinite error", {}, lambda: _rubin(_set_trigger("psfFluxErr", float("inf"))), "non_finite_error"),
    ("negative error", {}, lambda: _rubin(_set_trigger("psfFluxErr", -1.0)), "negative_error"),
    (
        "negative ZTF sigma",
        {},
        lambda: _ztf(lambda r: r["candidate"].update(sigmapsf=-0.1)),
        "negative_error",
    ),
    ("missing band", {}, lambda: _rubin(_set_trigger("band", None)), "unknown_band"),
    ("every row NaN", {}, lambda: _rubin(_nan_everywhere), "no_usable_point"),
    (
        "NaN trigger without history",
        {},
        lambda: _rubin(lambda r: (_without_history(r), _set_trigger("psfFlux", float("nan"))(r))),
        "no_usable_point",
    ),
    ("longer than max_message_bytes", {"max_message_bytes": 1000}, lambda: _rubin(), "oversized"),
    ("ZTF longer than max_message_bytes", {"max_message_bytes": 1000}, ZTF_SAMPLE.read_bytes, "oversized"),
    ("unknown band", {}, lambda: _rubin(_set_trigger("band", "Q")), "unknown_band"),
    ("unknown ZTF filter", {}, lambda: _ztf(lambda r: r["candidate"].update(fid=4)), "unknown_band"),
]


def _elasticc_record() -> dict[str, Any]:
    curve = make_light_curve(4, forced_every=0)
    return make_elasticc_alert(1, 2, curve[-1], curve[:-1])


@pytest.mark.parametrize(
    ("options", "make_message", "reason"), [case[1:] for case in REJECTIONS], ids=[c[0] for c in REJECTIONS]
)
def test_bad_input_is_rejected_with_its_reason(
    options: dict[str, Any], make_message: Callable[[], bytes], reason: str
) -> None:
    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder(**options).decode(make_message())
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert caught.value.detail


def test_every_reason_is_exercised() -> None:
    # decode_error is decode_messages's, for a decoder that raised something else
    # (tests/alerts/test_hostile_input.py).
    assert {case[3] for case in REJECTIONS} == set(REJECTION_REASONS) - {"decode_error"}


def test_max_message_bytes_bounds_archives_too(ztf_sample: bytes) -> None:
    rejected: list[RejectedAlert] = []
    decoder = AlertDecoder(max_message_bytes=len(ztf_sample) - 1)
    assert list(decoder.iter_container(ztf_sample, on_reject=rejected.append)) == []
    assert [r.reason for r in rejected] == ["oversized"]
    assert AlertDecoder(max_message_bytes=len(ztf_sample)).decode(ztf_sample).survey == "ztf"


def test_random_bytes_are_rejected(decoder: AlertDecoder) -> None:
    rng = np.random.default_rng(0)
    for size in (1, 5, 17, 300, 5000):
        for _ in range(20):
            with pytest.raises(RejectedAlert):
                decoder.decode(rng.bytes(size))


def test_unregistered_reasons_cannot_be_raised() -> None:
    with pytest.raises(AssertionError):
        RejectedAlert("oops", "typo in a reason")


@pytest.mark.parametrize("alert_id", [1, 64, 2**40, 22581688068])
def test_auto_framing_never_mistakes_elasticc_payloads(alert_id: int) -> None:
    curve = make_light_curve(3, forced_every=0)
    record = make_elasticc_alert(5, alert_id, curve[-1], curve[:-1])
    assert AlertDecoder().decode(encode_schemaless(record, elasticc_v0_9_schema())).alert_id == alert_id


def test_forced_framings(ztf_sample: bytes) -> None:
    assert AlertDecoder(framing=Framing.CONFLUENT).decode(_rubin()).survey == "lsst"
    assert AlertDecoder(framing="container").decode(ztf_sample).survey == "ztf"
    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder(framing="schemaless").decode(_rubin())
    assert caught.value.reason in {"schema_mismatch", "truncated"}


def test_configuration_errors_are_not_rejections() -> None:
    with pytest.raises(ValueError, match="framing"):
        AlertDecoder(framing="kafka")
    with pytest.raises(ValueError, match="schemaless_schema"):
        AlertDecoder(framing="schemaless", schemaless_schema=None)
    with pytest.raises(ValueError, match="schemaless_schema"):
        AlertDecoder(schemaless_schema={"type": "record", "name": "x.alert", "fields": []})
    with pytest.raises(ValueError):
        AlertDecoder(registry_url="http://registry", registry_client=object())  # type: ignore[arg-type]


def _schema_json(version: str) -> str:
    return json.dumps(_strip_parse_hints(lsst_schema(version)))


def test_registry_serves_ids_the_package_lacks(
    schema_registry: tuple[str, dict[int, str], list[int]],
) -> None:
    url, schemas, requests = schema_registry
    schemas[4242] = _schema_json("7.4")
    decoder = AlertDecoder(registry_url=url)
    message = _with_schema_id(_rubin(), 4242)

    first, second = decoder.decode(message), decoder.decode(message)

    assert first.object_id == second.object_id == "1"
    assert requests == [4242]  # cached per id
    assert decoder.decode(_rubin()).schema == "lsst.v7_4"  # packaged ids never ask
    assert requests == [4242]


def test_registry_unknown_ids_are_rejected_and_not_asked_again(
    schema_registry: tuple[str, dict[int, str], list[int]],
) -> None:
    url, _, requests = schema_registry
    decoder = AlertDecoder(registry_url=url)
    for _ in range(3):
        with pytest.raises(RejectedAlert) as caught:
            decoder.decode(_with_schema_id(_rubin(), 5555))
        assert caught.value.reason == "unknown_schema"
    assert requests == [5555]


class _UnreachableRegistry:
    def get_schema(self, schema_id: int) -> Any:
        raise ConnectionError("connection refused")


def test_an_unreachable_registry_is_not_the_message_s_fault() -> None:
    decoder = AlertDecoder(registry_client=_UnreachableRegistry())
    with pytest.raises(SchemaRegistryUnavailable):
        decoder.decode(_with_schema_id(_rubin(), 4242))
    assert not issubclass(SchemaRegistryUnavailable, RejectedAlert)


def test_a_registry_schema_with_references_is_unknown() -> None:
    class Registry:
        def get_schema(self, schema_id: int) -> Any:
            return type("Registered", (), {"schema_str": _schema_json("7.4"), "references": ["x"]})()

    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder(registry_client=Registry()).decode(_with_schema_id(_rubin(), 4242))
    assert caught.value.reason == "unknown_schema"
