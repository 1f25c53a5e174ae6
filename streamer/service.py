"""``streamer run``: the long-running Kafka consumer.

One micro-batch at a time, with one clear lifecycle:

1. consume up to ``batch_max_messages`` messages (or until ``batch_max_wait_s``);
2. decode, merge into the history store (committed to disk), embed (:class:`Pipeline`);
3. produce the records (keyed by object id) and dead-letter the rejections;
4. exactly-once: send the consumed offsets in the same Kafka transaction and commit it;
   at-least-once: flush, then commit the offsets.

A crash at any point re-delivers the uncommitted batch. Re-processing it gives the same
records: merging alerts into the history is idempotent, and each record embeds the
object's light curve *as of its alert* (points observed and known at or before it), which
a second merge of the same alerts does not change. So under ``read_committed`` every input
alert yields exactly one record. A transaction never spans a ``consume`` call, so a
rebalance (which happens inside ``consume``) never finds one open.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streamer.alerts import AlertDecoder
from streamer.config import Config, masked
from streamer.embedder import LightCurveEmbedder, load_model
from streamer.history import HistoryStore, MemoryHistoryStore, SQLiteHistoryStore
from streamer.metrics import Health, ServiceMetrics, serve_http
from streamer.pipeline import Message, Pipeline
from streamer.sinks.kafka import KafkaRecordSink, RecordEncoder

log = logging.getLogger("streamer")

#: How often the idle loop checks that the broker answers (seconds).
BROKER_PROBE_INTERVAL_S = 5.0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("streamer")
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


class FatalKafkaError(RuntimeError):
    """An error the service cannot recover from (authentication, fencing, bad topic)."""


class Service:
    """The consumer loop. ``run()`` returns the exit status.

    Parameters
    ----------
    config : Config
    metrics : ServiceMetrics, optional
    """

    def __init__(self, config: Config, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.health = Health()
        self.stopping = False
        self._fatal: str | None = None
        self._delivery_error: Any = None
        self._last_probe = 0.0
        self._assigned: list[TopicPartition] = []
        self._done_partitions: set[tuple[str, int]] = set()
        self._exactly_once = config.delivery == "exactly-once"
        self.http: WSGIServer | None = None
        self.stats = {"messages": 0, "alerts": 0, "embeddings": 0, "rejected": 0, "batches": 0}

    # ------------------------------------------------------------- set-up
    def _kafka_common(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap_servers,
            "error_cb": self._on_kafka_error,
            **self.config.kafka,
        }

    def _on_kafka_error(self, err: KafkaError) -> None:
        code = err.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.broker_reachable = False
        if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or err.fatal():
            # librdkafka's message names the mechanism, never the password.
            self._fatal = f"Kafka: {err.str()}"
        log.warning("kafka: %s", err.str())

    def _build(self) -> tuple[Consumer, Producer, Pipeline, KafkaRecordSink, HistoryStore]:
        c = self.config
        model = load_model(
            c.model,
            model_file=c.model_file,
            output=c.model_output,
            reduction=[r.strip() for r in c.reduction.split(",")] if "," in c.reduction else c.reduction,
            reduction_kwargs={"rng": 0},
            batch_size=c.onnx_batch_size,
            cache_bytes=c.window_cache_bytes,
            use_fp16=c.use_fp16,
            ort_session_kwargs={"providers": c.onnx_providers} if c.onnx_providers else None,
        )
        name = c.model if c.model_file is None else f"{c.model}:{c.model_file.rsplit('/', 1)[-1]}"
        embedder = LightCurveEmbedder(model, name)
        self.metrics.model_info.labels(
            model=name, sha256=model.model_sha256 or "", output=model.output, reduction=embedder.reduction
        ).set(1)
        self.health.model_loaded = True
        history: HistoryStore = (
            SQLiteHistoryStore(c.history_path, max_points_per_object=c.max_points_per_object)
            if c.history_path
            else MemoryHistoryStore(max_points_per_object=c.max_points_per_object)
        )
        decoder = AlertDecoder(
            c.framing, schemaless_schema=c.schemaless_schema, registry_url=c.schema_registry_url
        )
        encoder = RecordEncoder(c.output_topic, c.schema_registry_url)
        consumer = Consumer(
            {
                **self._kafka_common(),
                "group.id": c.group_id,
                # Static membership: a restarted pod (same instance id) takes its
                # partitions back at once instead of waiting out the session timeout.
                "group.instance.id": c.instance_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": c.exit_when_caught_up or c.until_time_ms is not None,
            }
        )
        producer_conf = {**self._kafka_common(), "enable.idempotence": True, "linger.ms": 5}
        if self._exactly_once:
            producer_conf["transactional.id"] = c.transactional_id
        producer = Producer(producer_conf)
        sink = KafkaRecordSink(
            producer,
            c.output_topic,
            c.dead_letter_topic,
            encoder,
            self._on_delivery_error,
        )
        return consumer, producer, Pipeline(decoder, history, embedder), sink, history

    def _on_delivery_error(self, err: Any) -> None:
        self._delivery_error = err

    # ----------------------------------------------------------- rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        c = self.config
        if c.start_from == "beginning":
            for p in partitions:
                p.offset = OFFSET_BEGINNING
        elif c.start_from == "end":
            for p in partitions:
                p.offset = OFFSET_END
        elif c.start_from == "time":
            query = [TopicPartition(p.topic, p.partition, c.start_time_ms or 0) for p in partitions]
            partitions = consumer.offsets_for_times(query, timeout=10)
        consumer.assign(partitions)
        self._assigned = list(partitions)
        self.health.assigned = bool(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are committed before the next consume(), so nothing is in flight here.
        consumer.unassign()
        self._assigned = []
        self.health.assigned = False
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    # ---------------------------------------------------------------- loop
    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        log.info("stop requested: draining the current batch")
        self.stopping = True

    def run(self, install_signals: bool = True) -> int:
        """Serve until stopped (SIGTERM/SIGINT), caught up (if asked) or a fatal error."""
        c = self.config
        log.info("starting: %r", c)
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self.http = serve_http(self.metrics, self.health, c.metrics_port)
        consumer, producer, pipeline, sink, history = self._build()
        try:
            if self._exactly_once:
                producer.init_transactions(30)
            topics = (
                [f"^{c.input_pattern}" if not c.input_pattern.startswith("^") else c.input_pattern]
                if c.input_pattern
                else c.input_topics
            )
            consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            while not self.stopping:
                self.health.beat()
                if self._fatal:
                    raise FatalKafkaError(self._fatal)
                batch = self._consume(consumer)
                if batch:
                    try:
                        self._process(batch, consumer, producer, pipeline, sink, history)
                    except BaseException:
                        # Nothing of this batch becomes visible; a restart re-processes it
                        # and, merges being idempotent, produces the same records.
                        if self._exactly_once:
                            self._abort(producer)
                        raise
                    self.health.broker_reachable = True
                else:
                    self._probe_broker(consumer)
                    self._update_lag(consumer)
                    if self._caught_up():
                        log.info("caught up: exiting")
                        break
            return 0
        except (FatalKafkaError, KafkaException) as exc:
            log.error("fatal: %s", exc)
            print(f"streamer: fatal: {exc}", file=sys.stderr)
            return 1
        finally:
            self._shutdown(consumer, producer, history)

    def _consume(self, consumer: Consumer) -> list[Any]:
        c = self.config
        raw = consumer.consume(num_messages=c.batch_max_messages, timeout=c.batch_max_wait_s)
        batch = []
        for m in raw:
            err = m.error()
            if err is None:
                if c.until_time_ms is not None and m.timestamp()[1] > c.until_time_ms:
                    self._stop_partition(consumer, str(m.topic()), int(m.partition() or 0))
                    continue
                batch.append(m)
                self._done_partitions.discard((str(m.topic()), int(m.partition() or 0)))
            elif err.code() == KafkaError._PARTITION_EOF:
                self._done_partitions.add((str(m.topic()), int(m.partition() or 0)))
            elif err.fatal() or err.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                raise FatalKafkaError(f"Kafka: {err.str()}")
            else:
                log.warning("consume: %s", err.str())
        return batch

    def _stop_partition(self, consumer: Consumer, topic: str, partition: int) -> None:
        self._done_partitions.add((topic, partition))
        consumer.pause([TopicPartition(topic, partition)])

    def _caught_up(self) -> bool:
        c = self.config
        if not (c.exit_when_caught_up or c.until_time_ms is not None) or not self._assigned:
            return False
        return all((p.topic, p.partition) in self._done_partitions for p in self._assigned)

    def _process(
        self,
        batch: list[Any],
        consumer: Consumer,
        producer: Producer,
        pipeline: Pipeline,
        sink: KafkaRecordSink,
        history: HistoryStore,
    ) -> None:
        m = self.metrics
        by_source = {}
        messages = []
        for msg in batch:
            source = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            by_source[source] = msg
            messages.append(Message(msg.value() or b"", source))
            m.consumed.labels(topic=msg.topic()).inc()
        m.batch_messages.observe(len(batch))
        model = pipeline.embedder.model
        computed_before, runs_before = model.windows_computed, model.onnx_runs
        hits_before = model.cache.hits if model.cache else 0
        if self._exactly_once:
            producer.begin_transaction()
        self._delivery_error = None
        outcome = pipeline.process(messages)
        for stage in ("decode", "history", "embed"):
            m.stage_seconds.labels(stage=stage).observe(outcome.stage_seconds.get(stage, 0.0))
        t0 = time.perf_counter()
        rejections = []
        for r in outcome.rejections:
            msg = by_source[r.source.split("#", 1)[0]]
            if not r.data:
                r = type(r)(r.reason, r.detail, r.source, msg.value() or b"")
            rejections.append((r, msg))
            m.rejected.labels(reason=r.reason).inc()
        sink.write(outcome.records, rejections)
        t1 = time.perf_counter()
        offsets = self._next_offsets(batch)
        if self._exactly_once:
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        else:
            producer.flush(60)
            if self._delivery_error is not None:
                raise FatalKafkaError(f"Kafka: delivery failed: {self._delivery_error}")
            consumer.commit(offsets=offsets, asynchronous=False)
        t2 = time.perf_counter()
        m.stage_seconds.labels(stage="produce").observe(t1 - t0)
        m.stage_seconds.labels(stage="commit").observe(t2 - t1)
        for survey, count in outcome.decoded_by_survey.items():
            m.decoded.labels(survey=survey).inc(count)
        m.embeddings.inc(len(outcome.records))
        computed = model.windows_computed - computed_before
        m.windows.labels(source="computed").inc(computed)
        if model.cache:
            m.windows.labels(source="cache").inc(model.cache.hits - hits_before)
        runs = model.onnx_runs - runs_before
        if runs:
            m.onnx_batch.observe(computed / runs)
        m.history_objects.set(history.object_count())
        m.history_points.set(history.point_count())
        m.history_bytes.set(history.size_bytes())
        self._update_lag(consumer)
        s = self.stats
        s["messages"] += len(batch)
        s["alerts"] += outcome.alerts
        s["embeddings"] += len(outcome.records)
        s["rejected"] += len(outcome.rejections)
        s["batches"] += 1

    @staticmethod
    def _next_offsets(batch: list[Any]) -> list[TopicPartition]:
        last: dict[tuple[str, int], int] = {}
        for msg in batch:
            key = (msg.topic(), msg.partition())
            last[key] = max(last.get(key, -1), msg.offset())
        return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]

    @staticmethod
    def _abort(producer: Producer) -> None:
        try:
            producer.abort_transaction(30)
        except KafkaException as exc:
            log.warning("aborting the transaction: %s", exc)

    def _probe_broker(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._last_probe < BROKER_PROBE_INTERVAL_S and self.health.broker_reachable:
            return
        self._last_probe = now
        try:
            consumer.list_topics(timeout=2)
            self.health.broker_reachable = True
        except KafkaException:
            self.health.broker_reachable = False

    def _update_lag(self, consumer: Consumer) -> None:
        lags = []
        try:
            positions = consumer.position(self._assigned) if self._assigned else []
        except KafkaException:
            return
        for p in positions:
            try:
                _, high = consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                continue
            if high >= 0 and p.offset >= 0:
                lags.append((p.topic, p.partition, max(high - p.offset, 0)))
        self.metrics.set_lag(lags)

    def _shutdown(self, consumer: Consumer, producer: Producer, history: HistoryStore) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing consumer: %s", exc)
        producer.flush(10)
        history.close()
        if self.http is not None:
            self.http.shutdown()
        log.info(
            "stopped: %d messages, %d alerts, %d embeddings, %d rejected",
            self.stats["messages"],
            self.stats["alerts"],
            self.stats["embeddings"],
            self.stats["rejected"],
        )


def run_service(config: Config, on_ready: Callable[[Service], None] | None = None) -> int:
    """Configure logging and run a :class:`Service` until it stops; returns the exit status."""
    configure_logging(config)
    log.debug("kafka properties: %s", masked(config.kafka))
    service = Service(config)
    if on_ready is not None:
        on_ready(service)
    return service.run()
