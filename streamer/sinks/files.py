"""File sinks: Parquet, Avro container, JSON lines (a file or stdout), and rejects."""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

import fastavro

from streamer.records import SCHEMA_PATH, EmbeddingRecord, record_schema

REJECT_SCHEMA_PATH = SCHEMA_PATH.with_name("reject.avsc")


class RecordSink(ABC):
    """Destination of embedding records; ``write`` takes one micro-batch."""

    @abstractmethod
    def write(self, records: Sequence[EmbeddingRecord]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AvroFileSink(RecordSink):
    """Avro object container file with the schema of ``schemas/embedding.avsc``."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "wb")
        self._writer = fastavro.write.Writer(self._file, record_schema(), codec="deflate")

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        for r in records:
            self._writer.write(r.to_avro())
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        self._file.close()


class ParquetFileSink(RecordSink):
    """Parquet file, one row group per written batch; columns as in the Avro schema."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.schema = pa.schema(
            [
                ("object_id", pa.string()),
                ("survey", pa.string()),
                ("alert_id", pa.int64()),
                ("alert_time", pa.float64()),
                ("model", pa.string()),
                ("model_sha256", pa.string()),
                ("output", pa.string()),
                ("reduction", pa.string()),
                ("bands", pa.list_(pa.string())),
                ("points_per_band", pa.map_(pa.string(), pa.int32())),
                ("shape", pa.list_(pa.int32())),
                ("embedding", pa.list_(pa.float32())),
                ("produced_at", pa.timestamp("ms", tz="UTC")),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        if not records:
            return
        rows = []
        for r in records:
            row = r.to_avro()
            row["points_per_band"] = list(row["points_per_band"].items())
            rows.append(row)
        self._writer.write_table(self._pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


class JsonLinesSink(RecordSink):
    """One JSON object per line, to a file or to standard output (``-``)."""

    def __init__(self, path: str | Path) -> None:
        self._own = str(path) != "-"
        self._file: IO[str] = open(path, "w") if self._own else sys.stdout

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        for r in records:
            self._file.write(json.dumps(r.to_json()) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._own:
            self._file.close()


def open_record_sink(path: str | Path, fmt: str | None = None) -> RecordSink:
    """Sink for ``path``, its format from ``fmt`` or the extension (.parquet, .avro, .jsonl).

    ``-`` writes JSON lines to standard output.
    """
    text = str(path)
    fmt = fmt or ("jsonl" if text == "-" else Path(text).suffix.lstrip(".").lower())
    if fmt in ("parquet", "pq"):
        return ParquetFileSink(path)
    if fmt == "avro":
        return AvroFileSink(path)
    if fmt in ("jsonl", "json", "ndjson"):
        return JsonLinesSink(path)
    raise ValueError(f"unknown output format {fmt!r} for {text!r}: use .parquet, .avro, .jsonl or '-'")


@cache
def reject_schema() -> dict[str, Any]:
    schema: dict[str, Any] = fastavro.parse_schema(json.loads(REJECT_SCHEMA_PATH.read_text()))  # type: ignore[assignment]
    return schema


class RejectsFile:
    """Avro container file of rejected messages with their original bytes and reason."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "wb")
        self._writer = fastavro.write.Writer(self._file, reject_schema(), codec="deflate")

    def write(self, reason: str, detail: str, source: str, data: bytes, rejected_at_ms: int) -> None:
        self._writer.write(
            {
                "reason": reason,
                "detail": detail,
                "source": source,
                "data": data,
                "rejected_at": rejected_at_ms,
            }
        )

    def close(self) -> None:
        self._writer.flush()
        self._file.close()
