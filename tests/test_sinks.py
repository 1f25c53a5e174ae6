"""Output encodings: what a consumer of the output topic or a file reads back."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import fastavro
import numpy as np
import pytest

from streamer.records import EmbeddingRecord, record_schema
from streamer.sinks.kafka import RecordEncoder, decode_record_value

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


class _Registry(BaseHTTPRequestHandler):
    registered: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).registered.append({"path": self.path, **body})
        payload = json.dumps({"id": 42}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_with_a_registry_values_use_the_confluent_wire_format() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        encoder = RecordEncoder("embeddings", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert _Registry.registered[0]["path"].startswith("/subjects/embeddings-value/versions")
    assert json.loads(_Registry.registered[0]["schema"])["name"] == "EmbeddingRecord"
    value = encoder.encode(RECORD)
    assert value[:5] == b"\x00\x00\x00\x00\x2a"  # magic byte, schema id 42
    decoded = fastavro.schemaless_reader(io.BytesIO(value[5:]), record_schema(), None)
    _same(EmbeddingRecord.from_avro(decoded), RECORD)
