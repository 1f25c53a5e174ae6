"""Output encodings: what a consumer of the output topic or a file reads back."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import numpy as np
import pytest

from streamer.pipeline import Rejection
from streamer.records import EmbeddingRecord, record_schema
from streamer.sinks.kafka import KafkaRecordSink, RecordEncoder, decode_record_value
from tests.registry import FakeRegistry

RECORD = EmbeddingRecord(
    object_id="5000001",
    survey="lsst",
    alert_id=77,
    alert_time=60200.5,
    model="atcat",
    model_sha256="ab" * 32,
    output="last",
    reduction="non-overlapping-windows",
    bands=("ugrizy",),
    points_per_band={"g": 3, "r": 4},
    embedding=np.arange(384, dtype=np.float32).reshape(1, 1, 1, 384) / 7,
    produced_at_ms=1_795_000_000_000,
)


def _same(a: EmbeddingRecord, b: EmbeddingRecord) -> None:
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert (a.object_id, a.alert_id, a.bands, a.points_per_band, a.model_sha256) == (
        b.object_id,
        b.alert_id,
        b.bands,
        b.points_per_band,
        b.model_sha256,
    )


def test_single_object_encoding_round_trips_and_checks_the_schema() -> None:
    encoder = RecordEncoder("out")
    value = encoder.encode(RECORD)
    assert value[:2] == b"\xc3\x01"
    assert dict(encoder.headers)["content-type"].startswith(b"application/vnd.apache.avro+binary")
    _same(decode_record_value(value), RECORD)
    with pytest.raises(ValueError, match="fingerprint differs"):
        decode_record_value(value[:2] + b"\x00" * 8 + value[10:])
    with pytest.raises(ValueError, match="not an Avro single-object"):
        decode_record_value(b"\x00" + value[1:])


def test_with_a_registry_values_use_the_confluent_wire_format() -> None:
    with FakeRegistry(first_id=42) as registry:
        encoder = RecordEncoder("embeddings", registry.url)
    assert registry.registered[0]["path"].startswith("/subjects/embeddings-value/versions")
    assert json.loads(registry.registered[0]["schema"])["name"] == "EmbeddingRecord"
    value = encoder.encode(RECORD)
    assert value[:5] == b"\x00\x00\x00\x00\x2a"  # magic byte, schema id 42
    decoded = fastavro.schemaless_reader(io.BytesIO(value[5:]), record_schema(), None)
    _same(EmbeddingRecord.from_avro(decoded), RECORD)


class _RecordingProducer:
    """Keeps what is produced, like a broker's log, for inspection."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def produce(self, on_delivery: Any = None, **message: Any) -> None:
        self.produced.append(message)

    def poll(self, timeout: float) -> int:
        return 0


class _SourceMessage:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "alerts"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 41


@pytest.mark.parametrize(
    ("key", "size", "kept_key", "kept_value"),
    [
        (b"k" * 10, 400, 10, 400),  # fits: whole copy, no size header
        (b"k" * 10, 2000, 10, 490),  # value cut so key + value = 500
        (b"k" * 800, 2000, 500, 0),  # a huge key is cut too
    ],
)
def test_dead_letters_are_cut_to_fit_the_dead_letter_topic(
    key: bytes, size: int, kept_key: int, kept_value: int
) -> None:
    producer = _RecordingProducer()
    sink = KafkaRecordSink(
        producer, "out", "dlq", RecordEncoder("out"), on_delivery_error=print, dead_letter_max_bytes=500
    )
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sink.write([], [(Rejection("oversized", "too long", "alerts/0/41", data), _SourceMessage(key))])

    (letter,) = producer.produced
    headers = dict(letter["headers"])
    assert letter["topic"] == "dlq" and headers["streamer.reason"] == b"oversized"
    assert letter["key"] == key[:kept_key] and letter["value"] == data[:kept_value]
    if kept_value < size:
        assert headers["streamer.original.size"] == str(size).encode()
    else:
        assert "streamer.original.size" not in headers
