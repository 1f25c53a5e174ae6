"""A local HTTP server answering like a Confluent schema registry, for decoder and sink tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class FakeRegistry:
    """``GET /schemas/ids/<id>`` from :attr:`schemas`; ``POST /subjects/<s>/versions``
    registers a schema under the next id from ``first_id`` and keeps the request in
    :attr:`registered`. Use as a context manager; :attr:`url` is its address."""

    def __init__(self, first_id: int = 1) -> None:
        self.schemas: dict[int, str] = {}
        self.requests: list[int] = []
        self.registered: list[dict[str, Any]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                schema_id = int(self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1])
                registry.requests.append(schema_id)
                if schema_id in registry.schemas:
                    self._answer(200, {"schema": registry.schemas[schema_id]})
                else:
                    self._answer(404, {"error_code": 40403, "message": "Schema not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                registry.registered.append({"path": self.path, **body})
                schema_id = max(registry.schemas, default=first_id - 1) + 1
                registry.schemas[schema_id] = body["schema"]
                self._answer(200, {"id": schema_id})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
