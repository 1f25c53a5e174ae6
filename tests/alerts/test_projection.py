"""The projection reads exactly what fastavro reads, for the kept fields, and fails cleanly."""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.alerts import RejectedAlert
from streamer.alerts.dia import DIA_FIELDS
from streamer.alerts.projection import AvroProjection, named_types, reader_schema
from streamer.alerts.schemas import parse_record_schema
from streamer.alerts.synthetic import (
    encode_schemaless,
    lsst_schema,
    make_light_curve,
    make_lsst_alert_from_light_curve,
)

from .conftest import RUBIN_VERSIONS, fake_alert_path, read_container


def _plain(schema: Any) -> Any:
    """A parsed schema without fastavro's bookkeeping or logical types (raw values)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if not k.startswith("__") and k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _all_field_names(schema: dict[str, Any]) -> set[str]:
    return {field["name"] for record in named_types(schema).values() for field in record.get("fields", ())}


def _fastavro(data: bytes, writer: dict[str, Any], reader: dict[str, Any] | None = None) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), writer, reader)


@pytest.mark.parametrize("version", RUBIN_VERSIONS)
def test_rubin_fake_alert_matches_fastavro(version: str) -> None:
    _, records = read_container(fake_alert_path(version).read_bytes())
    writer = lsst_schema(version)
    data = encode_schemaless(records[0], writer)

    projected = AvroProjection(writer, DIA_FIELDS).read_whole(data)

    assert projected == _fastavro(data, writer, reader_schema(writer, DIA_FIELDS))
    assert projected["diaSource"]["diaSourceId"] == 281323062375219200
    assert "cutoutDifference" not in projected


@pytest.mark.parametrize("version", ["3.0", "7.4", "8.0", "11.1"])
def test_every_field_kept_equals_a_full_decode(version: str) -> None:
    curve = make_light_curve(30, seed=4)
    record = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=100, schema_version=version)
    writer = lsst_schema(version)
    data = encode_schemaless(record, writer)
    raw_writer = parse_record_schema(_plain(writer))

    projection = AvroProjection(writer, _all_field_names(writer))

    assert projection.compiled
    assert projection.read_whole(data) == _fastavro(data, raw_writer)


EVERY_TYPE = parse_record_schema(
    {
        "type": "record",
        "name": "test.every",
        "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "small", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "ratio", "type": "float"},
            {"name": "value", "type": "double"},
            {"name": "label", "type": "string"},
            {"name": "blob", "type": "bytes"},
            {
                "name": "colour",
                "type": {"type": "enum", "name": "test.colour", "symbols": ["RED", "GREEN", "BLUE"]},
            },
            {"name": "digest", "type": {"type": "fixed", "name": "test.digest", "size": 4}},
            {"name": "maybe", "type": ["null", "double"]},
            {"name": "choice", "type": ["null", "string", "long", "test.colour"]},
            {"name": "items", "type": {"type": "array", "items": "long"}},
            {"name": "table", "type": {"type": "map", "values": ["null", "float"]}},
            {
                "name": "rows",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "test.row",
                        "fields": [
                            {"name": "id", "type": "long"},
                            {"name": "note", "type": ["null", "string"]},
                            {"name": "value", "type": "double"},
                            {"name": "colour", "type": "test.colour"},
                        ],
                    },
                },
            },
            {"name": "tail", "type": ["test.row", "null"]},
        ],
    }
)

_longs = st.integers(-(2**63), 2**63 - 1)
_finite = st.floats(allow_nan=False)
_float32 = st.floats(width=32, allow_nan=False)
_row = st.fixed_dictionaries(
    {
        "id": _longs,
        "note": st.none() | st.text(max_size=80),
        "value": _finite,
        "colour": st.sampled_from(["RED", "GREEN", "BLUE"]),
    }
)
_every = st.fixed_dictionaries(
    {
        "flag": st.booleans(),
        "small": st.integers(-(2**31), 2**31 - 1),
        "big": _longs,
        "ratio": _float32,
        "value": _finite,
        "label": st.text(max_size=200),
        "blob": st.binary(max_size=300),
        "colour": st.sampled_from(["RED", "GREEN", "BLUE"]),
        "digest": st.binary(min_size=4, max_size=4),
        "maybe": st.none() | _finite,
        "choice": st.none() | st.text(max_size=5) | _longs | st.sampled_from(["RED", "BLUE"]),
        "items": st.lists(_longs, max_size=20),
        "table": st.dictionaries(st.text(max_size=10), st.none() | _float32, max_size=5),
        "rows": st.lists(_row, max_size=5),
        "tail": st.none() | _row,
    }
)


@settings(max_examples=200, deadline=None)
@given(
    record=_every,
    kept=st.sets(st.sampled_from(sorted(_all_field_names(EVERY_TYPE)))),
)
def test_random_records_of_every_type_match_fastavro(record: dict[str, Any], kept: set[str]) -> None:
    data = encode_schemaless(record, EVERY_TYPE)

    projected = AvroProjection(EVERY_TYPE, kept).read_whole(data)

    assert projected == _fastavro(data, EVERY_TYPE, reader_schema(EVERY_TYPE, kept))


def test_skips_array_blocks_written_with_byte_sizes() -> None:
    # Encoders may write a block as (-count, byte size): skippers jump over it whole.
    schema = parse_record_schema(
        {
            "type": "record",
            "name": "test.blocks",
            "fields": [
                {"name": "values", "type": {"type": "array", "items": "long"}},
                {"name": "end", "type": "int"},
            ],
        }
    )
    items = b"\x02\x04\x06"  # longs 1, 2, 3
    data = b"\x05" + b"\x06" + items + b"\x00" + b"\x54"  # count -3, size 3, items, end of array, end=42

    assert AvroProjection(schema, {"end"}).read_whole(data) == {"end": 42}
    assert AvroProjection(schema, {"values", "end"}).read_whole(data) == {"values": [1, 2, 3], "end": 42}


def test_recursive_schemas_fall_back_to_fastavro() -> None:
    schema = parse_record_schema(
        {
            "type": "record",
            "name": "test.node",
            "fields": [
                {"name": "value", "type": "long"},
                {"name": "label", "type": "string"},
                {"name": "next", "type": ["null", "test.node"]},
            ],
        }
    )
    data = encode_schemaless(
        {"value": 1, "label": "a", "next": {"value": 2, "label": "b", "next": None}}, schema
    )

    projection = AvroProjection(schema, {"value", "next"})

    assert not projection.compiled
    assert projection.read_whole(data) == {"value": 1, "next": {"value": 2, "next": None}}
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data[:-2])
    assert caught.value.reason == "truncated"


@pytest.fixture(scope="module")
def rubin_message() -> tuple[AvroProjection, bytes]:
    curve = make_light_curve(50, seed=2)
    record = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=2000)
    return AvroProjection(lsst_schema("7.4"), DIA_FIELDS), encode_schemaless(record, lsst_schema("7.4"))


@pytest.mark.parametrize("cut", [1, 7, 100, 4000, -2500, -1])
def test_cut_short_payloads_are_truncated(rubin_message: tuple[AvroProjection, bytes], cut: int) -> None:
    projection, data = rubin_message
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data[:cut])
    assert caught.value.reason == "truncated"


def test_trailing_bytes_are_a_schema_mismatch(rubin_message: tuple[AvroProjection, bytes]) -> None:
    projection, data = rubin_message
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data + b"\x00")
    assert caught.value.reason == "schema_mismatch"


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"\x04", "union index"),  # index 2 of a two-branch union
        (b"\x02\x03", "negative length"),
        (b"\x02\x04\xff\xfe", "UTF-8"),
        (b"\x02\x00" + b"\xff" * 10 + b"\x7f", "match"),  # 11-byte varint
    ],
)
def test_corrupt_values_are_a_schema_mismatch(payload: bytes, detail: str) -> None:
    schema = parse_record_schema(
        {
            "type": "record",
            "name": "test.corrupt",
            "fields": [{"name": "label", "type": ["null", "string"]}, {"name": "n", "type": "long"}],
        }
    )
    with pytest.raises(RejectedAlert) as caught:
        AvroProjection(schema, {"label", "n"}).read_whole(payload)
    assert caught.value.reason == "schema_mismatch"
    assert detail in caught.value.detail


def test_a_varint_beyond_64_bits_is_a_schema_mismatch() -> None:
    schema = parse_record_schema(
        {"type": "record", "name": "test.id", "fields": [{"name": "n", "type": "long"}]}
    )
    with pytest.raises(RejectedAlert) as caught:
        AvroProjection(schema, {"n"}).read_whole(b"\xff" * 9 + b"\x7f")
    assert caught.value.reason == "schema_mismatch"
    assert AvroProjection(schema, {"n"}).read_whole(b"\xff" * 9 + b"\x01") == {"n": -(2**63)}


def test_floats_decode_like_fastavro() -> None:
    schema = parse_record_schema(
        {
            "type": "record",
            "name": "test.f",
            "fields": [{"name": "x", "type": "float"}, {"name": "y", "type": "double"}],
        }
    )
    data = encode_schemaless({"x": math.inf, "y": math.nan}, schema)
    value = AvroProjection(schema, {"x", "y"}).read_whole(data)
    assert value["x"] == math.inf
    assert math.isnan(value["y"])
