"""Decode only the Avro fields the pipeline needs, with fastavro schema resolution.

fastavro does all the decoding. The reader schema handed to it is the writer schema
pruned to the wanted fields (:func:`reader_schema`), so fastavro skips every other field
(the image cutouts among them) instead of building Python objects for them. Both schemas
are parsed once per writer schema, when a :class:`Projection` is made.

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
from collections.abc import Collection
from typing import Any

import fastavro

from streamer.alerts.errors import RejectedAlert

_NAMED_TYPES = ("record", "error", "enum", "fixed")
#: Appended after data that is not already followed by other bytes: see the module notes.
PADDING = bytes(16)


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
        and its enclosing record is kept.

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


def negative_length(exc: BaseException) -> bool:
    """Whether fastavro failed on a string or bytes value with a negative length prefix.

    fastavro hands such a length to ``read()``, which then reads to the end of the stream
    and fails there: by position alone that looks like a message cut short.
    """
    return isinstance(exc, EOFError) and str(exc).startswith("Expected -")


class Projection:
    """Reads the wanted fields of Avro data written with one writer schema, with fastavro.

    Parameters
    ----------
    writer_schema : dict
        The schema the bytes were written with, as returned by :func:`fastavro.parse_schema`.
    fields : Collection[str]
        Names of the fields to read, at any depth (see :func:`reader_schema`).

    Attributes
    ----------
    writer_schema, reader_schema : dict
        The parsed schemas handed to :func:`fastavro.schemaless_reader`.
    """

    __slots__ = ("reader_schema", "writer_schema")

    def __init__(self, writer_schema: dict[str, Any], fields: Collection[str]) -> None:
        self.writer_schema = writer_schema
        self.reader_schema = reader_schema(writer_schema, fields)

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
        value = self.read(stream, end)
        if stream.tell() != end:
            raise RejectedAlert("schema_mismatch", f"{end - stream.tell()} bytes left after the datum")
        return value

    def read_whole(self, buf: bytes, pos: int = 0) -> Any:
        """Decode the one datum that fills ``buf`` from ``pos`` to its end."""
        stream = io.BytesIO(buf + PADDING)
        stream.seek(pos)
        return self.read_to_end(stream, len(buf))
