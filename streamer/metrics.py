"""Prometheus metrics and the HTTP endpoints ``/metrics``, ``/healthz`` and ``/readyz``.

The metric names are part of the interface (``deploy/grafana`` queries them): add, never
rename. Each :class:`ServiceMetrics` has its own registry, so tests and several services
in one process do not collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

STAGES = ("decode", "history", "embed", "produce", "commit")


class ServiceMetrics:
    """Every metric the service exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("streamer_alerts_consumed", "Messages consumed", ["topic"], registry=r)
        self.decoded = Counter("streamer_alerts_decoded", "Alerts decoded", ["survey"], registry=r)
        self.rejected = Counter(
            "streamer_alerts_rejected", "Alerts rejected (dead-lettered)", ["reason"], registry=r
        )
        self.embeddings = Counter("streamer_embeddings_produced", "Embedding records produced", registry=r)
        self.batch_messages = Histogram(
            "streamer_batch_messages",
            "Messages per micro-batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "streamer_stage_seconds",
            "Time per micro-batch stage",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.onnx_batch = Histogram(
            "streamer_onnx_batch_windows",
            "Windows per onnxruntime call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.windows = Counter("streamer_windows", "Model windows by source", ["source"], registry=r)
        self.curves = Counter(
            "streamer_curves", "Model inputs answered without the model, by source", ["source"], registry=r
        )
        self.coalesced = Counter(
            "streamer_alerts_coalesced", "Alerts whose record a newer alert of the batch replaced", registry=r
        )
        self.failed_commits = Counter(
            "streamer_failed_commits",
            "Batch commits cut by a broker outage, by how they ended: committed on a later try"
            " (retried), found committed after all (committed) or the batch consumed again (rewound)",
            ["outcome"],
            registry=r,
        )
        self.lag = Gauge(
            "streamer_consumer_lag", "Messages behind the partition end", ["topic", "partition"], registry=r
        )
        self.history_objects = Gauge("streamer_history_objects", "Objects in the history store", registry=r)
        self.history_points = Gauge("streamer_history_points", "Points in the history store", registry=r)
        self.history_bytes = Gauge("streamer_history_bytes", "Size of the history store", registry=r)
        self.history_restore_seconds = Histogram(
            "streamer_history_restore_seconds",
            "Time to restore the history of newly assigned partitions from the changelog",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.history_restored_records = Counter(
            "streamer_history_restored_records", "History changelog records read by restores", registry=r
        )
        self.model_info = Gauge(
            "streamer_model_info", "The model in use", ["model", "sha256", "output", "reduction"], registry=r
        )
        self.ready = Gauge("streamer_ready", "1 when /readyz answers 200", registry=r)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for source in ("computed", "cache"):
            self.windows.labels(source=source)

    def set_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        """Replace the lag gauges: ``(topic, partition, lag)`` for assigned partitions only."""
        self.lag.clear()
        for topic, partition, lag in lags:
            self.lag.labels(topic=topic, partition=str(partition)).set(lag)


class Health:
    """Liveness (the loop beats) and readiness (assigned, model loaded, broker reachable).

    A blocking Kafka call (a transaction commit) that has waited longer than
    ``stalled_after_s`` makes the service not ready (the broker is away) but not dead:
    librdkafka may block past its timeouts while a coordinator is down (librdkafka #5456).
    One that has waited longer than ``max_call_s`` makes it dead: librdkafka can also block
    for good (in ``send_offsets_to_transaction`` after an outage), and a restart resumes
    from the committed offsets. A history restore is timed the same way, from the last
    record it read (:meth:`progress`). Until the model is loaded the service is not alive
    either: start-up is the startup probe's to time.
    """

    def __init__(
        self,
        max_silence_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        stalled_after_s: float = 10.0,
        max_call_s: float = 300.0,
    ) -> None:
        self.max_silence_s = max_silence_s
        self.max_call_s = max_call_s
        self.stalled_after_s = stalled_after_s
        self.clock = clock
        self.last_beat = clock()
        self.model_loaded = False
        self.assigned = False
        self.broker_reachable = False
        self.kafka_call_since: float | None = None

    def beat(self) -> None:
        self.last_beat = self.clock()

    def model_ready(self) -> None:
        """The model is loaded: liveness is timed from now (a download can take minutes)."""
        self.model_loaded = True
        self.beat()

    def progress(self) -> None:
        """A long blocking call (a history restore) read on: it is timed from now."""
        if self.kafka_call_since is not None:
            self.kafka_call_since = self.clock()
        self.beat()

    @contextmanager
    def kafka_call(self) -> Iterator[None]:
        """Mark a blocking Kafka call; on success the broker is reachable."""
        self.kafka_call_since = self.clock()
        try:
            yield
            self.broker_reachable = True
        finally:
            self.kafka_call_since = None
            self.beat()

    def _stalled(self) -> float:
        since = self.kafka_call_since
        return 0.0 if since is None else self.clock() - since

    def alive(self) -> tuple[bool, str]:
        if not self.model_loaded:
            # Start-up is the startup probe's to time (deploy/ gives it 10 minutes): until
            # the model is loaded, liveness answers 503 so that probe keeps waiting.
            return False, "starting: model not loaded"
        blocked = self._stalled()
        if blocked > self.max_call_s:
            return False, f"a Kafka call has blocked for {blocked:.0f} s"
        silent = self.clock() - self.last_beat
        if silent > self.max_silence_s and self.kafka_call_since is None:
            return False, f"processing loop silent for {silent:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        missing = [
            name
            for name, ok in (
                ("model not loaded", self.model_loaded),
                ("no partition assigned", self.assigned),
                ("broker unreachable", self.broker_reachable),
                ("waiting for the broker", self._stalled() <= self.stalled_after_s),
            )
            if not ok
        ]
        return (not missing, "; ".join(missing) or "ok")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_http(metrics: ServiceMetrics, health: Health, port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Start ``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread; returns the server."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, why = health.alive() if path == "/healthz" else health.ready()
            if path == "/readyz":
                metrics.ready.set(1 if ok else 0)
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [why.encode() + b"\n"]
        return prometheus(environ, start_response)

    server = make_server(host, port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="streamer-http", daemon=True).start()
    return server
