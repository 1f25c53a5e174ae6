"""Decode only the Avro fields the pipeline needs, with Avro schema resolution.

The reader schema is the writer schema pruned to the wanted fields (:func:`reader_schema`),
so the codec skips every other field (the image cutouts among them) instead of building
Python objects for them. Both schemas are parsed once per writer schema, when a
:class:`Projection` is made.

Two codecs read the bytes. A datum that fills a message (every Rubin, ELAsTiCC and
photometry message, and a one-alert container block) is read first by cavro, which
compiles the resolved schemas once and decodes a 48 kB Rubin alert about ten times faster
than fastavro (``benchmarks/decode.py``). Anything cavro does not accept, a schema or the
bytes, is read by fastavro exactly as before: bad input is rejected with fastavro's
classification below, and a datum only fastavro accepts is still read. Tests
(``tests/alerts/test_projection.py``) check that both codecs give identical values and
identical rejections on valid, cut, mutated and random data.

What this module adds around :func:`fastavro.schemaless_reader` is the classification of
bad input. fastavro reads from a file object and, when it skips a value, does not check
that the bytes were all there; so each datum is read from a stream that holds at least
one byte of padding after the data. A read that ends, or fails, past the end of the data
ran off a message that was cut short (``truncated``); one that fails inside the data, or
stops short of its end where a single datum should fill it, met bytes that were not
written with the schema (``schema_mismatch``).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator
from typing import Any

import fastavro

from streamer.alerts.errors import RejectedAlert

try:
    import cavro
except ImportError:  # no wheel for this platform (pyproject.toml): fastavro reads everything
    cavro = None

#: Whether cavro is installed; without it every datum is read by fastavro.
HAVE_CAVRO = cavro is not None

_NAMED_TYPES = ("record", "error", "enum", "fixed")
#: Appended after data that is not already followed by other bytes: see the module notes.
PADDING = bytes(16)


def _type_nodes(schema: Any, named: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every type written out as a dict in a parsed schema, each named type once.

    With ``named`` (definitions by full name), name references are followed too: for a
    piece of a schema whose named types may be defined elsewhere in the whole.
    """
    seen: set[str] = set()

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, list):
            for branch in node:
                yield from walk(branch)
        elif isinstance(node, str):
            if named is not None and node in named and node not in seen:
                yield from walk(named[node])
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED_TYPES:
                if node["name"] in seen:
                    return
                seen.add(node["name"])
            yield node
            if kind in ("record", "error"):
                for field in node["fields"]:
                    yield from walk(field["type"])
            elif kind == "array":
                yield from walk(node["items"])
            elif kind == "map":
                yield from walk(node["values"])

    return walk(schema)


def named_types(schema: Any) -> dict[str, dict[str, Any]]:
    """Definitions of the named types (records, enums, fixed) in a parsed schema, by full name."""
    return {node["name"]: node for node in _type_nodes(schema) if node.get("type") in _NAMED_TYPES}


_FIXED_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _fixed_size(schema: Any, named: dict[str, Any], seen: frozenset[str] = frozenset()) -> int | None:
    """Bytes every value of ``schema`` takes when that is one number (no length, count or index)."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return _fixed_size(named[schema], named, seen | {schema})
        return _FIXED_SIZES.get(schema)
    if isinstance(schema, list):
        return None  # a union writes its branch index
    kind = schema["type"]
    if kind == "fixed":
        return int(schema["size"])
    if kind in ("record", "error"):
        inner = seen | {schema["name"]}
        sizes = [_fixed_size(field["type"], named, inner) for field in schema["fields"]]
        return None if None in sizes else sum(size for size in sizes if size is not None)
    if kind in ("array", "map", "enum") or not isinstance(kind, str):
        return None
    return _fixed_size(kind, named, seen)


def _arrays(schema: Any, named: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every array type in ``schema``, name references followed."""
    return (node for node in _type_nodes(schema, named) if node["type"] == "array")


def array_of_nothing(schema: Any) -> bool:
    """Whether ``schema`` has an array whose items take no bytes (null, size-0 fixed, ...).

    A few bytes of block count then stand for up to 2**63 items that both codecs would
    read (or skip) one by one: a message of a dozen bytes would hold the decoder for good.
    """
    named = named_types(schema)
    return any(_fixed_size(array["items"], named) == 0 for array in _arrays(schema, named))


def _skipped_unchecked(schema: Any, named: dict[str, Any]) -> bool:
    """Whether fastavro, skipping a value of ``schema``, could run on past the data's end.

    fastavro skips booleans, floats, doubles and fixed without checking that their bytes
    are there: an array of such items with a corrupt block count would be skipped, past
    the end of the message, for up to 2**63 items. Read instead, they fail at the end.
    """
    return any(_fixed_size(array["items"], named) is not None for array in _arrays(schema, named))


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
        Names of the fields to keep, at any depth: a field is kept when its name is listed
        and its enclosing record is kept. A field holding an array of booleans, floats,
        doubles or fixed (or records of those) is kept too, listed or not: fastavro would
        skip it without bounds checks (see ``_skipped_unchecked``).

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
            # A field fastavro could not skip safely is read (and left unused) instead.
            kept = [
                {**field, "type": prune(field["type"])}
                for field in schema["fields"]
                if field["name"] in wanted or _skipped_unchecked(field["type"], definitions)
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


def negative_length(exc: BaseException) -> bool:
    """Whether fastavro failed on a string or bytes value with a negative length prefix.

    fastavro hands such a length to ``read()``, which then reads to the end of the stream
    and fails there: by position alone that looks like a message cut short.
    """
    return isinstance(exc, EOFError) and str(exc).startswith("Expected -")


#: cavro's reading options: records as dicts and logical types left raw, as fastavro
#: returns them to this module (decoders reject read fields with logical types). Defaults
#: are never read (the writer schema has every field), and ZTF's schemas give nullable
#: fields ``null`` defaults the specification would only allow for a first ``null``
#: branch: fastavro accepts those, and so does cavro with these options.
_CAVRO_OPTIONS = (
    cavro.DEFAULT_OPTIONS.replace(
        record_decodes_to_dict=True,
        logical_types=(),
        allow_union_default_any_member=True,
        allow_invalid_default_values=True,
    )
    if HAVE_CAVRO
    else None
)


#: What :meth:`_CavroReader.read` returns for bytes left to fastavro.
_UNREAD = object()


class _CavroReader:
    """cavro's compiled reading of one writer schema into a pruned reader schema."""

    __slots__ = ("_one_byte", "_schema")

    def __init__(self, writer_schema: dict[str, Any], pruned: dict[str, Any]) -> None:
        writer = cavro.Schema(_ints_as_longs(_strip_parse_hints(writer_schema)), options=_CAVRO_OPTIONS)
        reader = cavro.Schema(_ints_as_longs(_strip_parse_hints(pruned)), options=_CAVRO_OPTIONS)
        self._schema = reader.reader_for_writer(writer)
        # Reads one byte: succeeds only where a datum left bytes unread.
        self._one_byte = cavro.Schema({"type": "fixed", "name": "streamer.one_byte", "size": 1})

    def read(self, data: bytes | memoryview) -> Any:
        """The datum that fills ``data`` exactly, or :data:`_UNREAD` when cavro cannot say."""
        buffer = cavro.MemoryReader(data)
        try:
            value = self._schema.binary_read(buffer)
        except Exception:
            return _UNREAD
        try:
            self._one_byte.binary_read(buffer)
        except EOFError:
            return value
        return _UNREAD


def _ints_as_longs(schema: Any) -> Any:
    """``schema`` with every ``int`` declared ``long``: both are the same zig-zag varint.

    cavro keeps the low 32 bits of an ``int`` written with more (invalid Avro, met in
    corrupt data) where fastavro returns the whole value; read as ``long``, both agree.
    """
    if schema == "int":
        return "long"
    if isinstance(schema, list):
        return [_ints_as_longs(branch) for branch in schema]
    if isinstance(schema, dict):
        if schema.get("type") == "int" and "logicalType" not in schema:
            return {**schema, "type": "long"}
        return {
            key: _ints_as_longs(value) if key in ("type", "items", "values", "fields") else value
            for key, value in schema.items()
        }
    return schema


#: Deepest schema handed to cavro: its compiled readers recurse in C, unchecked.
MAX_CAVRO_DEPTH = 64


def _kind(branch: Any) -> Any:
    return branch["type"] if isinstance(branch, dict) else branch


def _cavro_can_read(schema: Any) -> bool:
    """Whether ``schema`` is not recursive, nor nested past :data:`MAX_CAVRO_DEPTH`, nor
    has a union of both ``string`` and ``bytes``.

    cavro 1.0 crashes the process (a segmentation fault, not an exception) resolving a
    recursive writer schema against a different reader schema, so those never reach it.
    A value of a union's ``bytes`` branch is returned by cavro as bytes and by fastavro as
    the reader union's first branch it can be promoted to, ``string``: such schemas are
    left to fastavro, so that every schema reads as it did.
    """
    defining: list[str] = []

    def fits(node: Any, depth: int) -> bool:
        if depth > MAX_CAVRO_DEPTH:
            return False
        if isinstance(node, str):
            return node not in defining
        if isinstance(node, list):
            if {"string", "bytes"} <= {_kind(branch) for branch in node}:
                return False
            return all(fits(branch, depth + 1) for branch in node)
        kind = node["type"]
        if kind in ("record", "error"):
            defining.append(node["name"])
            ok = all(fits(field["type"], depth + 1) for field in node["fields"])
            defining.pop()
            return ok
        if kind == "array":
            return fits(node["items"], depth + 1)
        if kind == "map":
            return fits(node["values"], depth + 1)
        return isinstance(kind, str) and (kind not in defining)

    return fits(schema, 0)


def _cavro_reader(writer_schema: dict[str, Any], pruned: dict[str, Any]) -> _CavroReader | None:
    if not HAVE_CAVRO or not _cavro_can_read(writer_schema):
        return None
    try:
        return _CavroReader(writer_schema, pruned)
    except Exception:
        # cavro checks names and unions more strictly than fastavro: such schemas are read
        # by fastavro alone.
        return None


class Projection:
    """Reads the wanted fields of Avro data written with one writer schema.

    Parameters
    ----------
    writer_schema : dict
        The schema the bytes were written with, as returned by :func:`fastavro.parse_schema`.
    fields : Collection[str]
        Names of the fields to read, at any depth (see :func:`reader_schema`).
    use_cavro : bool
        Read whole datums with cavro first (default); ``False`` reads with fastavro only,
        the reference the tests compare cavro with.

    Attributes
    ----------
    writer_schema, reader_schema : dict
        The parsed schemas handed to :func:`fastavro.schemaless_reader`.
    """

    __slots__ = ("_cavro", "reader_schema", "writer_schema")

    def __init__(
        self, writer_schema: dict[str, Any], fields: Collection[str], use_cavro: bool = True
    ) -> None:
        if array_of_nothing(writer_schema):
            raise RejectedAlert(
                "unknown_schema",
                "the writer schema has an array of items that take no bytes (null, a size-0 "
                "fixed, records of such): a block count alone could keep the decoder reading",
            )
        self.writer_schema = writer_schema
        self.reader_schema = reader_schema(writer_schema, fields)
        self._cavro = _cavro_reader(writer_schema, self.reader_schema) if use_cavro else None

    @property
    def uses_cavro(self) -> bool:
        """Whether whole datums are read by cavro (False: its schema was left to fastavro)."""
        return self._cavro is not None

    def read(self, stream: io.BytesIO, end: int) -> Any:
        """Decode one datum at the position of ``stream``, which must not read past ``end``.

        ``stream`` holds the data up to offset ``end`` followed by at least one more byte
        (:data:`PADDING`, or a container block's sync marker).

        Raises
        ------
        RejectedAlert
            ``truncated`` when the datum runs past ``end``, ``schema_mismatch`` when the
            bytes cannot have been written with the writer schema.
        """
        try:
            value = fastavro.schemaless_reader(stream, self.writer_schema, self.reader_schema)
        except Exception as exc:
            # fastavro reports corrupt input with assorted types (EOFError, StopIteration,
            # IndexError, ValueError, UnicodeDecodeError, SchemaResolutionError, ...): where
            # the read stopped, not the type, tells a cut message from wrong bytes.
            if stream.tell() > end and not negative_length(exc):
                raise RejectedAlert("truncated", f"data of {end} bytes ends inside a datum") from None
            raise RejectedAlert("schema_mismatch", f"fastavro: {type(exc).__name__}: {exc}") from None
        if stream.tell() > end:
            raise RejectedAlert("truncated", f"data of {end} bytes ends inside a datum")
        return value

    def read_to_end(self, stream: io.BytesIO, end: int) -> Any:
        """:meth:`read` one datum that must fill ``stream`` up to ``end`` exactly."""
        if self._cavro is not None:
            start = stream.tell()
            value = self._cavro.read(stream.getbuffer()[start:end].tobytes())
            if value is not _UNREAD:
                stream.seek(end)
                return value
        return self._read_to_end_with_fastavro(stream, end)

    def read_whole(self, buf: bytes, pos: int = 0) -> Any:
        """Decode the one datum that fills ``buf`` from ``pos`` to its end."""
        if self._cavro is not None:
            value = self._cavro.read(memoryview(buf)[pos:])
            if value is not _UNREAD:
                return value
        stream = io.BytesIO(buf + PADDING)
        stream.seek(pos)
        return self._read_to_end_with_fastavro(stream, len(buf))

    def _read_to_end_with_fastavro(self, stream: io.BytesIO, end: int) -> Any:
        value = self.read(stream, end)
        if stream.tell() != end:
            raise RejectedAlert("schema_mismatch", f"{end - stream.tell()} bytes left after the datum")
        return value
