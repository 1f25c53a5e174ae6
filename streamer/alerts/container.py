"""Avro object container files: the header read by hand, blocks handed out raw.

``fastavro.reader`` parses the embedded schema of every file it opens, which dominates
the cost of one-alert ZTF messages. Reading the header ourselves exposes the schema as
raw JSON bytes, so a decoder can look its parsed form up by fingerprint instead.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.projection import read_long, read_sized

#: First bytes of every Avro object container file.
CONTAINER_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16
#: Largest decompressed block accepted: a compressed block may not expand without bound.
MAX_BLOCK_BYTES = 256 * 1024 * 1024


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


def _bad(detail: str) -> RejectedAlert:
    return RejectedAlert("bad_container", detail)


def read_container_header(data: bytes) -> ContainerHeader:
    """Parse the header of the container file ``data``.

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
    metadata: dict[str, bytes] = {}
    pos = len(CONTAINER_MAGIC)
    try:
        while True:
            count, pos = read_long(data, pos)
            if count == 0:
                break
            if count < 0:
                # A negative count is followed by the block's byte size, not needed here.
                count = -count
                _, pos = read_long(data, pos)
            for _ in range(count):
                start, pos = read_sized(data, pos)
                key = data[start:pos].decode()
                start, pos = read_sized(data, pos)
                metadata[key] = data[start:pos]
    except IndexError:
        raise RejectedAlert("truncated", "data ends inside the container metadata") from None
    except UnicodeDecodeError:
        raise _bad("a metadata key is not UTF-8") from None
    except RejectedAlert as exc:
        if exc.reason == "truncated":
            raise
        raise _bad(f"malformed metadata map: {exc.detail}") from None
    sync = data[pos : pos + _SYNC_SIZE]
    if len(sync) < _SYNC_SIZE:
        raise RejectedAlert("truncated", "data ends inside the container sync marker")
    if "avro.schema" not in metadata:
        raise _bad("no avro.schema in the container metadata")
    try:
        codec = metadata.get("avro.codec", b"null").decode()
    except UnicodeDecodeError:
        raise _bad("avro.codec is not UTF-8") from None
    return ContainerHeader(metadata["avro.schema"], codec, sync, pos + _SYNC_SIZE)


def _decompress(codec: str, payload: bytes) -> bytes:
    if codec == "null":
        return payload
    try:
        if codec == "deflate":
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


def iter_container_blocks(data: bytes, header: ContainerHeader) -> Iterator[tuple[int, bytes]]:
    """Yield ``(record count, decompressed block bytes)`` for each data block of ``data``.

    Raises
    ------
    RejectedAlert
        ``truncated`` when a block is cut short, ``bad_container`` for a wrong sync marker,
        a negative count or a block that does not decompress.
    """
    pos = header.data_offset
    while pos < len(data):
        try:
            count, pos = read_long(data, pos)
            size, pos = read_long(data, pos)
        except IndexError:
            raise RejectedAlert("truncated", "data ends inside a block header") from None
        if count < 0 or size < 0:
            raise _bad(f"negative record count {count} or size {size} in a block header")
        end = pos + size
        if end + _SYNC_SIZE > len(data):
            raise RejectedAlert("truncated", f"a {size}-byte block at offset {pos} runs past the end")
        if data[end : end + _SYNC_SIZE] != header.sync:
            raise _bad(f"sync marker mismatch after the block at offset {pos}")
        yield count, _decompress(header.codec, data[pos:end])
        pos = end + _SYNC_SIZE
