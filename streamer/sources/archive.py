"""Archived alert streams on disk: directories, Avro files, ``.avro.gz``, ZTF ``.tar.gz``.

Each file (or tar member) becomes one :class:`~streamer.pipeline.Message` holding its
bytes exactly: an Avro container file (one ZTF alert, or an archive of many alerts), a
Confluent-framed Rubin message, or a schemaless ELAsTiCC message. The decoder detects
which.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamer.pipeline import Message

#: File name endings read as alert messages inside directories and tar archives.
ALERT_SUFFIXES = (".avro", ".avro.gz", ".bin", ".alert")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ArchiveError(ValueError):
    """A path that cannot be read as an alert archive (missing, unreadable, bad tar)."""


def _is(path: Path, suffixes: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(suffixes))


def iter_archive_messages(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Message]:
    """Messages of every alert file under ``paths``, in sorted order within directories.

    Raises
    ------
    ArchiveError
        If a path does not exist or a tar archive is unreadable.
    """
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ArchiveError(f"{path}: no such file or directory")
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is(child, ALERT_SUFFIXES + TAR_SUFFIXES):
                    yield from _file_messages(child)
        else:
            yield from _file_messages(path)


def _file_messages(path: Path) -> Iterator[Message]:
    if _is(path, TAR_SUFFIXES):
        yield from _tar_messages(path)
    elif path.name.lower().endswith(".gz"):
        yield Message(_gunzip(path.read_bytes(), str(path)), str(path))
    else:
        yield Message(path.read_bytes(), str(path))


def _tar_messages(path: Path) -> Iterator[Message]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not _is(Path(member.name), ALERT_SUFFIXES):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                data = f.read()
                if member.name.lower().endswith(".gz"):
                    data = _gunzip(data, f"{path}:{member.name}")
                yield Message(data, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path}: unreadable tar archive ({exc})") from exc


def _gunzip(data: bytes, where: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        # zlib.error (corrupt deflate data) is neither an OSError nor an EOFError.
        raise ArchiveError(f"{where}: not a readable gzip file ({exc})") from None
