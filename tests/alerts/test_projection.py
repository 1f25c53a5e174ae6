"""Pruned reader schemas: the codecs then read exactly the kept fields, and fail cleanly.

Whole datums are read by cavro first, fastavro reading what cavro does not accept
(:mod:`streamer.alerts.projection`): the tests at the end check that the two give the same
values and the same rejections, byte for byte, on valid, cut, mutated and random data.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.alerts import RejectedAlert
from streamer.alerts.container import iter_container_blocks, read_container_header
from streamer.alerts.dia import DIA_FIELDS
from streamer.alerts.projection import HAVE_CAVRO, Projection, named_types, reader_schema
from streamer.alerts.schemas import elasticc_v0_9_schema, parse_record_schema, parse_schema_json
from streamer.alerts.synthetic import (
    encode_schemaless,
    lsst_schema,
    make_light_curve,
    make_lsst_alert_from_light_curve,
)
from streamer.alerts.ztf import ZTF_FIELDS

from .conftest import ELASTICC_SAMPLE, RUBIN_VERSIONS, ZTF_SAMPLE, fake_alert_path, read_container

CUTOUTS = {"cutoutDifference", "cutoutTemplate", "cutoutScience"}


def _all_field_names(schema: dict[str, Any]) -> set[str]:
    return {field["name"] for record in named_types(schema).values() for field in record.get("fields", ())}


def _branch(value: Any, union: list[Any], named: dict[str, Any]) -> Any:
    """The union branch a decoded value came from, where it matters for pruning."""
    for branch in union:
        kind = named[branch]["type"] if isinstance(branch, str) and branch in named else branch
        kind = kind["type"] if isinstance(kind, dict) else kind
        if (isinstance(value, dict) and kind in ("record", "map")) or (
            isinstance(value, list) and kind == "array"
        ):
            return branch
    return None


def _keep(value: Any, schema: Any, named: dict[str, Any], kept: set[str] | frozenset[str]) -> Any:
    """The kept fields of a fully decoded value, picked out independently of the pruning code."""
    if isinstance(schema, str):
        return _keep(value, named[schema], named, kept) if schema in named else value
    if isinstance(schema, list):
        branch = _branch(value, schema, named)
        return value if branch is None else _keep(value, branch, named, kept)
    kind = schema["type"]
    if kind == "record":
        return {
            field["name"]: _keep(value[field["name"]], field["type"], named, kept)
            for field in schema["fields"]
            if field["name"] in kept
        }
    if kind == "array":
        return [_keep(item, schema["items"], named, kept) for item in value]
    if kind == "map":
        return {key: _keep(item, schema["values"], named, kept) for key, item in value.items()}
    return value


def _expected(writer: dict[str, Any], record: Any, kept: set[str] | frozenset[str]) -> Any:
    return _keep(record, writer, named_types(writer), kept)


def _read_with_fastavro_pieces(data: bytes, fields: frozenset[str]) -> list[Any]:
    """Every record of a container file, header, blocks and records each read by fastavro."""
    header = read_container_header(data)
    projection = Projection(parse_schema_json(header.schema_json), fields)
    records = []
    for count, stream, end in iter_container_blocks(data, header):
        records.extend(projection.read(stream, end) for _ in range(count))
        assert stream.tell() == end
    return records


SCHEMAS = {
    **{f"lsst {version}": lambda version=version: lsst_schema(version) for version in RUBIN_VERSIONS},
    "elasticc": elasticc_v0_9_schema,
    "ztf": lambda: read_container(ZTF_SAMPLE.read_bytes())[0],
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_pruning_keeps_exactly_the_wanted_fields(name: str) -> None:
    writer = SCHEMAS[name]()
    wanted = ZTF_FIELDS if name == "ztf" else DIA_FIELDS
    writer_records = {
        record_name: record
        for record_name, record in named_types(writer).items()
        if record["type"] == "record"
    }

    pruned = reader_schema(writer, wanted)

    assert "__fastavro_parsed" in pruned  # ready for fastavro as it is, never parsed again
    reader_records = {n: r for n, r in named_types(pruned).items() if r["type"] == "record"}
    assert writer["name"] in reader_records
    for record_name, record in reader_records.items():
        expected = [f["name"] for f in writer_records[record_name]["fields"] if f["name"] in wanted]
        assert [field["name"] for field in record["fields"]] == expected
    assert not CUTOUTS & {f["name"] for r in reader_records.values() for f in r["fields"]}


def _real_samples() -> list[tuple[str, Path, frozenset[str]]]:
    rubin = [(f"lsst {v}", fake_alert_path(v), DIA_FIELDS) for v in RUBIN_VERSIONS]
    return [*rubin, ("ztf", ZTF_SAMPLE, ZTF_FIELDS), ("elasticc", ELASTICC_SAMPLE, DIA_FIELDS)]


@pytest.mark.parametrize(("name", "path", "fields"), _real_samples(), ids=[s[0] for s in _real_samples()])
def test_pruned_decode_equals_the_fields_of_a_full_decode(
    name: str, path: Path, fields: frozenset[str]
) -> None:
    data = path.read_bytes()
    writer, full = read_container(data)

    pruned = _read_with_fastavro_pieces(data, fields)

    assert pruned == [_expected(writer, record, fields) for record in full]
    assert len(pruned) >= 1
    assert not CUTOUTS & set(pruned[0])


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
def test_random_records_of_every_type(record: dict[str, Any], kept: set[str]) -> None:
    data = encode_schemaless(record, EVERY_TYPE)
    full = fastavro.schemaless_reader(io.BytesIO(data), EVERY_TYPE)

    projected = Projection(EVERY_TYPE, kept).read_whole(data)

    assert projected == _expected(EVERY_TYPE, full, kept)


def test_recursive_schemas() -> None:
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
    projection = Projection(schema, {"value", "next"})

    # cavro 1.0 crashes the process resolving recursive schemas: fastavro reads them.
    assert not projection.uses_cavro
    assert projection.read_whole(data) == {"value": 1, "next": {"value": 2, "next": None}}
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data[:-2])
    assert caught.value.reason == "truncated"


@pytest.fixture(scope="module")
def rubin_message() -> tuple[Projection, bytes]:
    curve = make_light_curve(50, seed=2)
    record = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=2000)
    return Projection(lsst_schema("7.4"), DIA_FIELDS), encode_schemaless(record, lsst_schema("7.4"))


# 1, 7, 100: inside read fields; -2500 and -1: inside the skipped cutouts that end the alert,
# which fastavro skips without checking that their bytes are there.
@pytest.mark.parametrize("cut", [1, 7, 100, 4000, -2500, -1])
def test_cut_short_payloads_are_truncated(rubin_message: tuple[Projection, bytes], cut: int) -> None:
    projection, data = rubin_message
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data[:cut])
    assert caught.value.reason == "truncated"


def test_trailing_bytes_are_a_schema_mismatch(rubin_message: tuple[Projection, bytes]) -> None:
    projection, data = rubin_message
    with pytest.raises(RejectedAlert) as caught:
        projection.read_whole(data + b"\x00")
    assert caught.value.reason == "schema_mismatch"


@pytest.mark.parametrize(
    ("payload", "kept"),
    [
        (b"\x04\x02", {"label", "n"}),  # index 2 of a two-branch union
        (b"\x04\x02", {"n"}),  # the same, in a skipped field
        (b"\x02\x03\x02", {"label", "n"}),  # a string of length -2
        (b"\x02\x04\xff\xfe\x02", {"label", "n"}),  # a string that is not UTF-8
    ],
    ids=["union index", "union index, skipped", "negative length", "UTF-8"],
)
def test_corrupt_values_are_a_schema_mismatch(payload: bytes, kept: set[str]) -> None:
    # Skipped strings are neither decoded nor length-checked by fastavro: only read ones are.
    schema = parse_record_schema(
        {
            "type": "record",
            "name": "test.corrupt",
            "fields": [{"name": "label", "type": ["null", "string"]}, {"name": "n", "type": "long"}],
        }
    )
    with pytest.raises(RejectedAlert) as caught:
        Projection(schema, kept).read_whole(payload)
    assert caught.value.reason == "schema_mismatch"


def _exact(value: Any) -> Any:
    """``value`` with every float replaced by its bytes: NaN payloads and -0.0 compared too."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return (type(value), value)


def _outcome(projection: Projection, data: bytes) -> tuple[Any, ...]:
    try:
        return ("read", _exact(projection.read_whole(data)))
    except RejectedAlert as rejection:
        return ("rejected", rejection.reason, rejection.detail)


needs_cavro = pytest.mark.skipif(not HAVE_CAVRO, reason="cavro has no wheel for this platform")


def _both(schema: dict[str, Any], kept: Collection[str]) -> tuple[Projection, Projection]:
    with_cavro = Projection(schema, kept)
    assert with_cavro.uses_cavro  # else the comparison would be fastavro with itself
    return with_cavro, Projection(schema, kept, use_cavro=False)


#: (kind, position as a fraction of the data, bytes): one edit of an encoded datum.
_edits = st.lists(
    st.tuples(
        st.sampled_from(["overwrite", "cut", "insert", "delete"]),
        st.floats(0, 1, exclude_max=True),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


def _edited(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, chunk in edits:
        at = int(where * len(out))
        if kind == "overwrite":
            out[at : at + len(chunk)] = chunk
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = chunk
        else:
            del out[at : at + len(chunk)]
    return bytes(out)


@needs_cavro
@settings(max_examples=300, deadline=None)
@given(
    record=_every,
    kept=st.sets(st.sampled_from(sorted(_all_field_names(EVERY_TYPE)))),
    edits=st.none() | _edits,
)
def test_cavro_and_fastavro_agree_on_every_type(
    record: dict[str, Any], kept: set[str], edits: list[tuple[str, float, bytes]] | None
) -> None:
    data = encode_schemaless(record, EVERY_TYPE)
    if edits is not None:
        data = _edited(data, edits)
    with_cavro, reference = _both(EVERY_TYPE, kept)

    assert _outcome(with_cavro, data) == _outcome(reference, data)


def _sample_datums(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """Writer schema and the bytes of each record of a container file."""
    data = path.read_bytes()
    header = read_container_header(data)
    schema = parse_schema_json(header.schema_json)
    locate = Projection(schema, (), use_cavro=False)
    datums = []
    for count, stream, _ in iter_container_blocks(data, header):
        block = stream.getvalue()
        for _ in range(count):
            start = stream.tell()
            locate.read(stream, len(block))
            datums.append(block[start : stream.tell()])
    return schema, datums


@needs_cavro
@pytest.mark.parametrize(("name", "path", "fields"), _real_samples(), ids=[s[0] for s in _real_samples()])
@settings(max_examples=40, deadline=None)
@given(edits=st.none() | _edits, pick=st.integers(0, 2**16))
def test_cavro_and_fastavro_agree_on_the_stream_samples(
    name: str, path: Path, fields: frozenset[str], edits: list[tuple[str, float, bytes]] | None, pick: int
) -> None:
    schema, datums = _sample_datums(path)
    data = datums[pick % len(datums)]
    if edits is not None:
        data = _edited(data, edits)
    with_cavro, reference = _both(schema, fields)

    assert _outcome(with_cavro, data) == _outcome(reference, data)


@needs_cavro
def test_an_int_written_past_32_bits_reads_as_fastavro_reads_it() -> None:
    # Invalid Avro met in corrupt data: cavro alone would keep the value's low 32 bits.
    schema = parse_record_schema(
        {"type": "record", "name": "test.wide", "fields": [{"name": "n", "type": "int"}]}
    )
    long_schema = parse_record_schema(
        {"type": "record", "name": "test.wide", "fields": [{"name": "n", "type": "long"}]}
    )
    data = encode_schemaless({"n": 2**40 + 5}, long_schema)
    with_cavro, reference = _both(schema, {"n"})

    assert with_cavro.read_whole(data) == reference.read_whole(data) == {"n": 2**40 + 5}


@needs_cavro
def test_a_container_block_is_read_by_cavro_up_to_its_end() -> None:
    curve = make_light_curve(20, seed=5)
    record = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=100)
    data = io.BytesIO()
    fastavro.writer(data, lsst_schema("7.4"), [record])
    header = read_container_header(data.getvalue())
    with_cavro, reference = _both(parse_schema_json(header.schema_json), DIA_FIELDS)
    ((_, stream, end),) = iter_container_blocks(data.getvalue(), header)
    start = stream.tell()

    assert _exact(with_cavro.read_to_end(stream, end)) == _exact(
        reference.read_whole(stream.getvalue()[start:end])
    )
    assert stream.tell() == end


_ONE_LONG = parse_record_schema(
    {"type": "record", "name": "test.one", "fields": [{"name": "n", "type": "long"}]}
)


def _zigzag(value: int) -> bytes:
    """An Avro long, written out here so that tests can build what writers rarely do."""
    return encode_schemaless({"n": value}, _ONE_LONG)


def _array_then_long(items: Any) -> dict[str, Any]:
    return parse_record_schema(
        {
            "type": "record",
            "name": "test.blocks",
            "fields": [
                {"name": "values", "type": {"type": "array", "items": items}},
                {"name": "after", "type": "long"},
            ],
        }
    )


@pytest.mark.parametrize("kept", [{"values", "after"}, {"after"}], ids=["read", "skipped"])
def test_negative_block_counts_are_read_like_any_other(kept: set[str]) -> None:
    # The specification lets a writer give a block's count negated, then its size in bytes.
    # cavro does not read that form; fastavro does, and is asked.
    items = _zigzag(7) + _zigzag(-9)
    data = _zigzag(-2) + _zigzag(len(items)) + items + _zigzag(0) + _zigzag(5)
    projection = Projection(_array_then_long("long"), kept)

    expected = {"values": [7, -9], "after": 5} if "values" in kept else {"after": 5}
    assert projection.read_whole(data) == expected


@pytest.mark.parametrize(
    "items",
    [
        "null",
        {"type": "fixed", "name": "test.empty", "size": 0},
        {"type": "record", "name": "test.r", "fields": []},
    ],
    ids=["null", "size-0 fixed", "record without fields"],
)
def test_an_array_of_items_that_take_no_bytes_is_an_unknown_schema(items: Any) -> None:
    # Its block count alone would stand for up to 2**63 items, read from no bytes at all.
    with pytest.raises(RejectedAlert) as caught:
        Projection(_array_then_long(items), {"after"})
    assert caught.value.reason == "unknown_schema"


@pytest.mark.parametrize(
    "items", ["float", "double", "boolean", {"type": "fixed", "name": "test.f", "size": 3}]
)
def test_a_skipped_array_of_fixed_width_items_with_a_corrupt_count_is_truncated(items: Any) -> None:
    # fastavro skips such items without checking that their bytes are there: skipped, a
    # count of 2**31 items ran past the message's end for minutes. The test runs in a
    # child process so that a regression fails it instead of holding the test run.
    code = (
        "import json, sys\n"
        "from streamer.alerts import RejectedAlert\n"
        "from streamer.alerts.projection import Projection\n"
        "from tests.alerts.test_projection import _array_then_long, _zigzag\n"
        f"items = json.loads({json.dumps(json.dumps(items))})\n"
        "data = _zigzag(2**31) + bytes(20)\n"
        "for use_cavro in (True, False):\n"
        "    try:\n"
        "        Projection(_array_then_long(items), {'after'}, use_cavro=use_cavro).read_whole(data)\n"
        "    except RejectedAlert as rejection:\n"
        "        print(rejection.reason)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["truncated", "truncated"]


@needs_cavro
def test_a_union_of_string_and_bytes_is_left_to_fastavro() -> None:
    # fastavro resolves a bytes branch to the reader union's string branch; cavro would
    # return bytes: so the schema is read by fastavro, as before.
    schema = parse_record_schema(
        {"type": "record", "name": "test.u", "fields": [{"name": "value", "type": ["string", "bytes"]}]}
    )
    data = encode_schemaless({"value": b"abc"}, schema)
    projection = Projection(schema, {"value"})

    assert not projection.uses_cavro
    assert projection.read_whole(data) == Projection(schema, {"value"}, use_cavro=False).read_whole(data)
