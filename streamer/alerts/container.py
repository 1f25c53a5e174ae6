"""Avro object container files, read with fastavro piece by piece.

``fastavro.reader`` parses the embedded schema of every file it opens, which dominates
the cost of one-alert ZTF messages. So the pieces are read separately, each by fastavro:
the header with the Avro specification's header schema (which leaves the embedded schema
as raw JSON bytes, for a decoder to look its parsed form up by fingerprint), then each
block's record count and byte size as Avro longs. Records are left to the caller, which
decodes them with its cached schemas (:class:`~streamer.alerts.projection.Projection`).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import fastavro
from fastavro.read import HEADER_SCHEMA

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.projection import PADDING, negative_length

#: First bytes of every Avro object container file.
CONTAINER_MAGIC = b"Obj\x01"
SYNC_SIZE = 16
#: Largest decompressed block accepted: a compressed block may not expand without bound.
MAX_BLOCK_BYTES = 256 * 1024 * 1024
#: The specification's ``org.apache.avro.file.Header``: magic, metadata map, sync marker.
_HEADER_SCHEMA: Any = fastavro.parse_schema(HEADER_SCHEMA)
_LONG: Any = fastavro.parse_schema("long")


@dataclass(frozen=True, slots=True)
class ContainerHeader:
    """What precedes the data blocks of a container file.

    Attributes
    ----------
    schema_json : bytes
        The writer schema exactly as embedded (``avro.schema``).
    codec : str
        Block compression (``avro.codec``, ``"null"`` when absent).
    sync : bytes
        The 16-byte marker that ends every block.
    data_offset : int
        Offset of the first block.
    """

    schema_json: bytes
    codec: str
    sync: bytes
    data_offset: int

    @property
    def fingerprint(self) -> bytes:
        """Digest of the raw schema JSON: files written with one schema share it."""
        return hashlib.blake2b(self.schema_json, digest_size=16).digest()


class ContainerBlock(NamedTuple):
    """One data block, ready for its records to be decoded.

    Attributes
    ----------
    n_records : int
        Records in the block.
    records : io.BytesIO
        The block's (decompressed) bytes from offset 0 to ``end``, then padding.
    end : int
        Where the block's records must end in ``records``.
    """

    n_records: int
    records: io.BytesIO
    end: int


def _bad(detail: str) -> RejectedAlert:
    return RejectedAlert("bad_container", detail)


def read_container_header(data: bytes) -> ContainerHeader:
    """Read the header of the container file ``data`` with fastavro.

    Raises
    ------
    RejectedAlert
        ``bad_magic`` without the ``Obj\\x01`` magic, ``truncated`` when the header is
        cut short, ``bad_container`` for a malformed metadata map or no schema.
    """
    if not data.startswith(CONTAINER_MAGIC):
        if CONTAINER_MAGIC.startswith(data[:4]):
            raise RejectedAlert("truncated", f"{len(data)} bytes cannot hold a container header")
        raise RejectedAlert("bad_magic", f"container files start with {CONTAINER_MAGIC!r}, got {data[:4]!r}")
    stream = io.BytesIO(data)
    try:
        header = cast(dict[str, Any], fastavro.schemaless_reader(stream, _HEADER_SCHEMA))
    except Exception as exc:
        # As for records (see streamer.alerts.projection): a read that stopped at the end
        # of the data ran out of it; one that failed before met a malformed metadata map.
        if stream.tell() >= len(data) and not negative_length(exc):
            raise RejectedAlert("truncated", "data ends inside the container header") from None
        if isinstance(exc, UnicodeDecodeError):
            raise _bad("a metadata key is not UTF-8") from None
        raise _bad(f"malformed metadata map: {type(exc).__name__}: {exc}") from None
    metadata: dict[str, bytes] = header["meta"]
    if "avro.schema" not in metadata:
        raise _bad("no avro.schema in the container metadata")
    try:
        codec = metadata.get("avro.codec", b"null").decode()
    except UnicodeDecodeError:
        raise _bad("avro.codec is not UTF-8") from None
    return ContainerHeader(metadata["avro.schema"], codec, header["sync"], stream.tell())


def _decompress(codec: str, payload: bytes) -> bytes:
    try:
        if codec == "deflate":
            # Raw deflate, as the specification says; bounded against decompression bombs.
            inflater = zlib.decompressobj(-15)
            block = inflater.decompress(payload, MAX_BLOCK_BYTES)
            if inflater.unconsumed_tail:
                raise _bad(f"deflate block expands past {MAX_BLOCK_BYTES} bytes")
            return block
        if codec == "bzip2":
            block = bz2.BZ2Decompressor().decompress(payload, MAX_BLOCK_BYTES)
        elif codec == "xz":
            block = lzma.LZMADecompressor().decompress(payload, MAX_BLOCK_BYTES)
        else:
            raise _bad(f"unsupported codec {codec!r}")
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
        raise _bad(f"{codec} block does not decompress: {exc}") from None
    if len(block) >= MAX_BLOCK_BYTES:
        raise _bad(f"{codec} block expands past {MAX_BLOCK_BYTES} bytes")
    return block


def iter_container_blocks(data: bytes, header: ContainerHeader) -> Iterator[ContainerBlock]:
    """Yield each data block of ``data``, its sync marker checked, its records undecoded.

    Raises
    ------
    RejectedAlert
        ``truncated`` when a block is cut short, ``bad_container`` for a wrong sync marker,
        a negative count or size, an unsupported codec or a block that does not decompress.
    """
    if header.codec not in ("null", "deflate", "bzip2", "xz"):
        raise _bad(f"unsupported codec {header.codec!r}")
    stream = io.BytesIO(data)
    stream.seek(header.data_offset)
    while stream.tell() < len(data):
        try:
            count = cast(int, fastavro.schemaless_reader(stream, _LONG))
            size = cast(int, fastavro.schemaless_reader(stream, _LONG))
        except Exception:
            # Reading a long fails only where the data ends inside it.
            raise RejectedAlert("truncated", "data ends inside a block header") from None
        if count < 0 or size < 0:
            raise _bad(f"negative record count {count} or size {size} in a block header")
        start = stream.tell()
        end = start + size
        if end + SYNC_SIZE > len(data):
            raise RejectedAlert("truncated", f"a {size}-byte block at offset {start} runs past the end")
        if data[end : end + SYNC_SIZE] != header.sync:
            raise _bad(f"sync marker mismatch after the block at offset {start}")
        stream.seek(end + SYNC_SIZE)
        if header.codec == "null":
            # The block's own sync marker is the padding after its records.
            yield ContainerBlock(count, io.BytesIO(data[start : end + SYNC_SIZE]), size)
        else:
            block = _decompress(header.codec, data[start:end])
            yield ContainerBlock(count, io.BytesIO(block + PADDING), len(block))
