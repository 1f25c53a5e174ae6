"""Read only the Avro fields the pipeline needs, skipping the rest at C speed.

A plain Avro decode builds a Python object for every field; even fastavro's schema
resolution (a reader schema without the unwanted fields) still walks every skipped field
through Python-level dispatch. For a Rubin alert most of the time then goes into the
~100-140 fields of each of hundreds of history rows that the pipeline never looks at.

The Avro encoding of fixed-size, varint and small-union fields is a regular language, so
each run of such fields compiles into one regular expression that :mod:`re` walks in C;
capture groups mark the few wanted fields, decoded afterwards from their offsets.
Strings, bytes, arrays and maps break the runs and are handled in Python; bytes fields
(image cutouts, most of an alert) are skipped by their length prefix without a copy.

Schemas the compiler does not handle (recursive named types) fall back to fastavro with
a pruned reader schema (:func:`reader_schema`), which yields the same values, slower.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import fastavro

from streamer.alerts.errors import RejectedAlert

#: ``(buffer, offset) -> (value, next offset)``; skipping readers return ``None`` values.
Reader = Callable[[bytes, int], tuple[Any, int]]
#: ``(buffer, offset) -> value`` for a regular type whose extent a regex already checked.
SpanDecoder = Callable[[bytes, int], Any]

# Zigzag varints: continuation bytes have the high bit set; possessive quantifiers keep a
# failing match from backtracking into them. Union branches start with distinct index
# bytes, so at most one can match and a failing match backtracks in linear time.
_LONG_PATTERN = rb"[\x80-\xff]{0,9}+[\x00-\x7f]"
_INT_PATTERN = rb"[\x80-\xff]{0,4}+[\x00-\x7f]"
#: Below this many branches a union index is one byte (index i is written as 2i).
_MAX_REGULAR_UNION = 64
#: Items allowed in one array block when an item may encode to zero bytes (DoS guard).
_MAX_EMPTY_ITEMS = 1_000_000
_NAMED_TYPES = ("record", "error", "enum", "fixed")

_unpack_float = struct.Struct("<f").unpack_from
_unpack_double = struct.Struct("<d").unpack_from


class _Unsupported(Exception):
    """A schema construct the compiler leaves to fastavro."""


class _Node(NamedTuple):
    """One compiled Avro type.

    ``pattern`` is a regex fragment without capturing groups that matches exactly the
    type's encoding when that encoding is regular, else ``None``; ``decode`` turns a
    matched regular encoding into its value. ``min_size``/``max_size`` bound the encoded
    size (``max_size`` only for regular types).
    """

    pattern: bytes | None
    read: Reader
    decode: SpanDecoder | None
    min_size: int
    max_size: int


def _mismatch(detail: str) -> RejectedAlert:
    return RejectedAlert("schema_mismatch", detail)


def _varint_at(buf: bytes, pos: int) -> int:
    """Zigzag varint starting at ``pos`` whose extent a regex has already checked."""
    byte = buf[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1)
    acc = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = buf[pos]
        acc |= (byte & 0x7F) << shift
        if byte < 0x80:
            if acc >> 64:
                # A 10-byte varint can carry 70 bits; an Avro long has 64.
                raise _mismatch(f"varint at offset {pos} overflows a long")
            return (acc >> 1) ^ -(acc & 1)
        shift += 7


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Avro ``long`` (zigzag varint) at ``pos`` and the offset after it.

    Raises IndexError when ``buf`` ends inside the varint; :meth:`AvroProjection.read`
    turns that into a ``truncated`` rejection.
    """
    byte = buf[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    acc = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = buf[pos]
        acc |= (byte & 0x7F) << shift
        if byte < 0x80:
            if acc >> 64:
                raise _mismatch(f"varint at offset {pos} overflows a long")
            return (acc >> 1) ^ -(acc & 1), pos + 1
        shift += 7
        if shift > 63:
            raise _mismatch(f"varint longer than 10 bytes at offset {pos}")


def read_sized(buf: bytes, pos: int) -> tuple[int, int]:
    """Start and end offsets of the string/bytes value whose length prefix is at ``pos``."""
    size = buf[pos]
    if size < 0x80:
        # Short values (the common case) have a one-byte prefix: skip the varint loop.
        if size & 1:
            raise _mismatch(f"negative length at offset {pos}")
        start = pos + 1
        size >>= 1
    else:
        size, start = read_long(buf, pos)
        if size < 0:
            raise _mismatch(f"negative length {size} at offset {pos}")
    end = start + size
    if end > len(buf):
        raise RejectedAlert("truncated", f"a {size}-byte value at offset {start} runs past the end")
    return start, end


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    start, end = read_sized(buf, pos)
    return buf[start:end].decode(), end


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    start, end = read_sized(buf, pos)
    return buf[start:end], end


def _skip_sized(buf: bytes, pos: int) -> tuple[None, int]:
    # The cutouts: one varint read and an offset bump, whatever their size.
    return None, read_sized(buf, pos)[1]


def _segment_error(pattern: re.Pattern[bytes], max_size: int, buf: bytes, pos: int) -> RejectedAlert:
    """Tell a message cut short from bytes that break the schema, for a failed regex run.

    A match never extends past ``max_size`` bytes, so if padding the available bytes with
    zeros (a valid encoding of every regular type) makes the run match, the bytes present
    were a valid prefix and the message simply ends too early.
    """
    available = buf[pos : pos + max_size]
    if len(available) < max_size and pattern.match(available + bytes(max_size - len(available))):
        return RejectedAlert("truncated", f"payload ends at byte {len(buf)} inside a record")
    return _mismatch(f"bytes at offset {pos} do not match the schema")


def _regular(pattern: bytes, decode: SpanDecoder, min_size: int, max_size: int) -> _Node:
    """Node for a regular type; its standalone reader (array items, union branches) uses the regex."""
    compiled = re.compile(pattern, re.DOTALL)

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        match = compiled.match(buf, pos)
        if match is None:
            raise _segment_error(compiled, max_size, buf, pos)
        return decode(buf, pos), match.end()

    return _Node(pattern, read, decode, min_size, max_size)


def _check_count(count: int, min_size: int, remaining: int) -> None:
    """Refuse block counts the remaining bytes cannot hold, before looping over them."""
    if min_size > 0:
        if count * min_size > remaining:
            raise RejectedAlert("truncated", f"{count} items cannot fit in {remaining} bytes")
    elif count > _MAX_EMPTY_ITEMS:
        raise _mismatch(f"array block of {count} items")


def _fixed_pattern(size: int) -> bytes:
    # re matches a run of "." faster than the counted repeat ".{n}" for small n.
    return b"." * size if size <= 16 else b".{%d}" % size


def _primitive(name: str) -> _Node:
    if name == "null":
        return _regular(b"", lambda buf, start: None, 0, 0)
    if name == "boolean":
        return _regular(rb"[\x00\x01]", lambda buf, start: buf[start] == 1, 1, 1)
    if name == "int":
        return _regular(_INT_PATTERN, _varint_at, 1, 5)
    if name == "long":
        return _regular(_LONG_PATTERN, _varint_at, 1, 10)
    if name == "float":
        return _regular(_fixed_pattern(4), lambda buf, start: _unpack_float(buf, start)[0], 4, 4)
    if name == "double":
        return _regular(_fixed_pattern(8), lambda buf, start: _unpack_double(buf, start)[0], 8, 8)
    raise _Unsupported(f"primitive {name!r}")


class _RecordStep(NamedTuple):
    """A regex run (with the wanted fields it captures) or one irregular field."""

    pattern: re.Pattern[bytes] | None
    max_size: int
    captures: tuple[tuple[str, int, SpanDecoder], ...]
    reader: Reader | None
    name: str | None


def _record_reader(steps: tuple[_RecordStep, ...], keep: bool) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        record: dict[str, Any] = {}
        for pattern, max_size, captures, reader, name in steps:
            if pattern is not None:
                match = pattern.match(buf, pos)
                if match is None:
                    raise _segment_error(pattern, max_size, buf, pos)
                for field, group, decode in captures:
                    record[field] = decode(buf, match.start(group))
                pos = match.end()
            else:
                value, pos = reader(buf, pos)  # type: ignore[misc]
                if name is not None:
                    record[name] = value
        return (record if keep else None), pos

    return read


def named_types(schema: Any) -> dict[str, dict[str, Any]]:
    """Definitions of the named types (records, enums, fixed) in a parsed schema, by full name."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED_TYPES:
                if node["name"] in found:
                    return
                found[node["name"]] = node
            if kind in ("record", "error"):
                for field in node["fields"]:
                    walk(field["type"])
            elif kind == "array":
                walk(node["items"])
            elif kind == "map":
                walk(node["values"])

    walk(schema)
    return found


class _Compiler:
    """Turns a parsed writer schema into readers that keep only ``wanted`` fields."""

    def __init__(self, schema: Any, wanted: frozenset[str]) -> None:
        self.wanted = wanted
        self.named = named_types(schema)
        self.cache: dict[tuple[str, bool], _Node] = {}
        self.in_progress: set[tuple[str, bool]] = set()

    def compile(self, schema: Any, keep: bool) -> _Node:
        """Compile ``schema``; ``keep`` says whether its value is read or only skipped."""
        if isinstance(schema, list):
            return self._union(schema, keep)
        if isinstance(schema, str):
            if schema in ("string", "bytes"):
                if not keep:
                    return _Node(None, _skip_sized, None, 1, 0)
                return _Node(None, _read_string if schema == "string" else _read_bytes, None, 1, 0)
            if schema in self.named:
                return self._named(schema, keep)
            return _primitive(schema)
        kind = schema["type"]
        if kind in _NAMED_TYPES:
            return self._named(schema["name"], keep)
        if kind == "array":
            return self._array(schema["items"], keep)
        if kind == "map":
            return self._map(schema["values"], keep)
        # A primitive with attributes, e.g. a logicalType: read as its underlying type.
        return self.compile(kind, keep)

    def _named(self, name: str, keep: bool) -> _Node:
        key = (name, keep)
        if key in self.cache:
            return self.cache[key]
        if key in self.in_progress:
            raise _Unsupported(f"recursive type {name}")
        self.in_progress.add(key)
        schema = self.named[name]
        kind = schema["type"]
        if kind == "enum":
            node = self._enum(schema["symbols"])
        elif kind == "fixed":
            size = schema["size"]
            node = _regular(_fixed_pattern(size), lambda buf, start: buf[start : start + size], size, size)
        else:
            node = self._record(schema, keep)
        self.in_progress.discard(key)
        self.cache[key] = node
        return node

    @staticmethod
    def _enum(symbols: list[str]) -> _Node:
        def decode(buf: bytes, start: int) -> str:
            index = _varint_at(buf, start)
            if not 0 <= index < len(symbols):
                raise _mismatch(f"enum index {index} out of range")
            return symbols[index]

        return _regular(_INT_PATTERN, decode, 1, 5)

    def _union(self, branches: list[Any], keep: bool) -> _Node:
        nodes = [self.compile(branch, keep) for branch in branches]
        if len(nodes) < _MAX_REGULAR_UNION and all(node.pattern is not None for node in nodes):
            alternatives = b"|".join(
                b"\\x%02x" % (2 * index) + node.pattern  # type: ignore[operator]
                for index, node in enumerate(nodes)
            )
            decoders = [node.decode for node in nodes]
            if len(nodes) == 2 and "null" in branches:
                # The optional-value shape of nearly every alert field: one test, one call.
                null_tag = 2 * branches.index("null")
                value_decode = decoders[1 - branches.index("null")]

                def decode(buf: bytes, start: int) -> Any:
                    return None if buf[start] == null_tag else value_decode(buf, start + 1)  # type: ignore[misc]

            else:

                def decode(buf: bytes, start: int) -> Any:
                    return decoders[buf[start] >> 1](buf, start + 1)  # type: ignore[misc]

            return _regular(
                b"(?:" + alternatives + b")",
                decode,
                1 + min(node.min_size for node in nodes),
                1 + max(node.max_size for node in nodes),
            )
        readers = [node.read for node in nodes]
        if len(readers) < _MAX_REGULAR_UNION:
            tags = 2 * len(readers)

            def read(buf: bytes, pos: int) -> tuple[Any, int]:
                # One-byte index, as for regular unions: no varint loop per value.
                tag = buf[pos]
                if tag & 1 or tag >= tags:
                    raise _mismatch(f"union index byte {tag:#04x} out of range at offset {pos}")
                return readers[tag >> 1](buf, pos + 1)

        else:

            def read(buf: bytes, pos: int) -> tuple[Any, int]:
                index, pos = read_long(buf, pos)
                if not 0 <= index < len(readers):
                    raise _mismatch(f"union index {index} out of range at offset {pos}")
                return readers[index](buf, pos)

        return _Node(None, read, None, 1 + min(node.min_size for node in nodes), 0)

    def _array(self, items: Any, keep: bool) -> _Node:
        item = self.compile(items, keep)
        read_item, min_size = item.read, item.min_size

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            values: list[Any] = []
            while True:
                count, pos = read_long(buf, pos)
                if count == 0:
                    return (values if keep else None), pos
                if count < 0:
                    # A negative count is followed by the block's byte size: skip it whole.
                    count = -count
                    size, pos = read_long(buf, pos)
                    if not keep:
                        if size < 0 or pos + size > len(buf):
                            raise RejectedAlert("truncated", f"array block of {size} bytes runs past the end")
                        pos += size
                        continue
                _check_count(count, min_size, len(buf) - pos)
                for _ in range(count):
                    value, pos = read_item(buf, pos)
                    if keep:
                        values.append(value)

        return _Node(None, read, None, 1, 0)

    def _map(self, values_schema: Any, keep: bool) -> _Node:
        value_node = self.compile(values_schema, keep)
        read_value, min_size = value_node.read, 1 + value_node.min_size

        def read(buf: bytes, pos: int) -> tuple[Any, int]:
            entries: dict[str, Any] = {}
            while True:
                count, pos = read_long(buf, pos)
                if count == 0:
                    return (entries if keep else None), pos
                if count < 0:
                    count = -count
                    _, pos = read_long(buf, pos)
                _check_count(count, min_size, len(buf) - pos)
                for _ in range(count):
                    key, pos = _read_string(buf, pos)
                    value, pos = read_value(buf, pos)
                    if keep:
                        entries[key] = value

        return _Node(None, read, None, 1, 0)

    def _record(self, schema: dict[str, Any], keep: bool) -> _Node:
        fields = []
        for field in schema["fields"]:
            wanted = keep and field["name"] in self.wanted
            fields.append((field["name"], wanted, self.compile(field["type"], wanted)))
        min_size = sum(node.min_size for _, _, node in fields)
        if not keep and all(node.pattern is not None for _, _, node in fields):
            # A skipped record of regular fields is itself regular: it joins the parent's run.
            pattern = b"".join(node.pattern for _, _, node in fields)  # type: ignore[misc]
            max_size = sum(node.max_size for _, _, node in fields)
            return _regular(pattern, lambda buf, start: None, min_size, max_size)

        steps: list[_RecordStep] = []
        run: list[bytes] = []
        captures: list[tuple[str, int, SpanDecoder]] = []
        run_max = 0

        def close_run() -> None:
            nonlocal run_max
            if run or captures:
                pattern = re.compile(b"".join(run), re.DOTALL)
                steps.append(_RecordStep(pattern, run_max, tuple(captures), None, None))
            run.clear()
            captures.clear()
            run_max = 0

        for name, wanted, node in fields:
            if node.pattern is None:
                close_run()
                steps.append(_RecordStep(None, 0, (), node.read, name if wanted else None))
            elif wanted:
                run.append(b"(" + node.pattern + b")")
                captures.append((name, len(captures) + 1, node.decode))  # type: ignore[arg-type]
                run_max += node.max_size
            else:
                run.append(node.pattern)
                run_max += node.max_size
        close_run()
        return _Node(None, _record_reader(tuple(steps), keep), None, min_size, 0)


def _strip_parse_hints(schema: Any) -> Any:
    """A parsed schema without fastavro's bookkeeping keys, safe to parse again."""
    if isinstance(schema, dict):
        return {key: _strip_parse_hints(value) for key, value in schema.items() if not key.startswith("__")}
    if isinstance(schema, list):
        return [_strip_parse_hints(value) for value in schema]
    return schema


def reader_schema(writer_schema: Any, fields: Collection[str]) -> dict[str, Any]:
    """A reader schema keeping only ``fields`` of ``writer_schema``, for fastavro resolution.

    Parameters
    ----------
    writer_schema : dict
        Writer schema as returned by :func:`fastavro.parse_schema`.
    fields : Collection[str]
        Field names to keep, at any depth, as in :class:`AvroProjection`.

    Returns
    -------
    dict
        A parsed schema with the same record names, so fastavro matches it to the writer
        and skips every dropped field (the cutouts among them) while decoding.
    """
    wanted = frozenset(fields)
    definitions = {name: _strip_parse_hints(schema) for name, schema in named_types(writer_schema).items()}
    emitted: set[str] = set()

    def prune(schema: Any) -> Any:
        if isinstance(schema, list):
            return [prune(branch) for branch in schema]
        if isinstance(schema, str):
            if schema not in definitions or schema in emitted:
                return schema
            # First use in the pruned schema: its definition may have sat in a dropped field.
            return prune(definitions[schema])
        kind = schema["type"]
        if kind in _NAMED_TYPES:
            if schema["name"] in emitted:
                return schema["name"]
            emitted.add(schema["name"])
        if kind in ("record", "error"):
            kept = [
                {**field, "type": prune(field["type"])}
                for field in schema["fields"]
                if field["name"] in wanted
            ]
            return {**schema, "fields": kept}
        if kind == "array":
            return {**schema, "items": prune(schema["items"])}
        if kind == "map":
            return {**schema, "values": prune(schema["values"])}
        return schema

    pruned = fastavro.parse_schema(prune(_strip_parse_hints(writer_schema)))
    assert isinstance(pruned, dict), "a record schema stays a record"
    return pruned


class AvroProjection:
    """Reads the wanted fields of Avro data written with one writer schema.

    Parameters
    ----------
    writer_schema : dict
        The schema the bytes were written with, as returned by :func:`fastavro.parse_schema`.
    fields : Collection[str]
        Names of the fields to read, at any depth: a field is read when its name is listed
        and its enclosing record is read. Everything else is skipped without being built.

    Notes
    -----
    Values are what fastavro would return for the kept fields, except that logical types
    come back as their underlying Avro values. Union branch indices must be written in
    canonical (shortest) form, as every Avro encoder does.
    """

    def __init__(self, writer_schema: Any, fields: Collection[str]) -> None:
        self.writer_schema = writer_schema
        self.fields = frozenset(fields)
        try:
            self._read = _Compiler(writer_schema, self.fields).compile(writer_schema, keep=True).read
            #: Whether the regex compiler handles this schema (else fastavro does the work).
            self.compiled = True
        except _Unsupported:
            self._reader_schema = reader_schema(writer_schema, self.fields)
            self._read = self._read_with_fastavro
            self.compiled = False

    def read(self, buf: bytes, pos: int = 0) -> tuple[Any, int]:
        """Decode one datum starting at ``pos``.

        Returns
        -------
        value : Any
            For a record schema, a dict of the wanted fields in writer order.
        end : int
            Offset just after the datum.

        Raises
        ------
        RejectedAlert
            ``truncated`` when the bytes end inside the datum, ``schema_mismatch`` when
            they cannot have been written with the schema.
        """
        try:
            return self._read(buf, pos)
        except (IndexError, struct.error):
            raise RejectedAlert("truncated", f"payload of {len(buf)} bytes ends inside a datum") from None
        except UnicodeDecodeError as exc:
            raise _mismatch(f"string is not UTF-8: {exc.reason}") from None

    def read_whole(self, buf: bytes, pos: int = 0) -> Any:
        """Decode the one datum that fills ``buf`` from ``pos`` to its end."""
        value, end = self.read(buf, pos)
        if end != len(buf):
            raise _mismatch(f"{len(buf) - end} bytes left after the datum")
        return value

    def _read_with_fastavro(self, buf: bytes, pos: int) -> tuple[Any, int]:
        stream = io.BytesIO(buf)
        stream.seek(pos)
        try:
            value = fastavro.schemaless_reader(stream, self.writer_schema, self._reader_schema)
        except EOFError:
            raise RejectedAlert("truncated", f"payload of {len(buf)} bytes ends inside a datum") from None
        except Exception as exc:
            # fastavro reports corrupt input with assorted exception types; all mean the same here.
            raise _mismatch(f"fastavro: {type(exc).__name__}: {exc}") from None
        return value, stream.tell()
