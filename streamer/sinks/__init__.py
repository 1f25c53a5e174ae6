"""Sinks: where embedding records (and rejected messages) go.

A file sink and the Kafka sink are interchangeable ends of the same pipeline; the file
sinks here serve ``streamer replay``.
"""

from streamer.sinks.files import (
    AvroFileSink,
    JsonLinesSink,
    ParquetFileSink,
    RecordSink,
    RejectsFile,
    open_record_sink,
)

__all__ = [
    "AvroFileSink",
    "JsonLinesSink",
    "ParquetFileSink",
    "RecordSink",
    "RejectsFile",
    "open_record_sink",
]
