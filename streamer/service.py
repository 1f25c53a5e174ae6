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

With a history changelog topic (``STREAMER_HISTORY_CHANGELOG_TOPIC``), each input partition
has its own history store (:class:`~streamer.history.PartitionedHistory`): a batch is
merged per partition, the whole stored history of every object it touched goes to the
changelog partition of the same number in the batch's transaction, and a newly assigned
partition's store is restored from the changelog in the assignment callback, before any
of its messages is processed. So replicas in one group give the records of one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from streamer.config import Config, ConfigError, masked
from streamer.embedder import LightCurveEmbedder, load_model
from streamer.history import (
    ChangelogError,
    HistoryStore,
    MemoryHistoryStore,
    PartitionedHistory,
    SQLiteHistoryStore,
)
from streamer.history import changelog as history_changelog
from streamer.history.changelog import HistoryUpdate
from streamer.metrics import ServiceMetrics
from streamer.pipeline import BatchOutcome, Message, Pipeline, PreparedBatch, combine_prepared
from streamer.sinks.kafka import KafkaRecordSink, RecordEncoder
from streamer.sources.kafka import (
    ConsumerLoop,
    FatalKafkaError,
    Rewind,
    as_messages,
    dead_letters,
    earliest,
    first_offsets,
)

log = logging.getLogger("streamer")

#: How long a restore waits for a changelog partition to reach the committed input offset
#: (the markers of a transaction committed by the partition's previous owner can trail
#: its offsets) before it goes on with a warning (seconds).
CHANGELOG_SETTLE_S = 10.0


def onnx_session_kwargs(config: Config) -> dict[str, Any] | None:
    """``InferenceSession`` arguments: the configured execution providers and intra-op threads.

    onnxruntime starts one intra-op thread per physical core of the *node*, which in a
    Kubernetes pod ignores the CPU limit; ``onnx_threads`` sets the count (deploy/ sets it
    to the pod's limit). Its threads keep spinning between operators (the default):
    turning that off gave no steady gain in ``benchmarks/e2e.py`` on either sized model.
    """
    kwargs: dict[str, Any] = {}
    if config.onnx_providers:
        kwargs["providers"] = config.onnx_providers
    if config.onnx_threads is not None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = config.onnx_threads
        kwargs["sess_options"] = options
    return kwargs or None


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


@dataclass
class _InFlight:
    """A consumed batch whose records are being computed (or are ready), not yet committed."""

    batch: list[Any]
    outcome: Future[BatchOutcome]
    pipeline: Pipeline
    #: What the batch writes to the history changelog, per input partition.
    history_updates: list[HistoryUpdate] = field(default_factory=list)


class Service(ConsumerLoop):
    """The consumer loop. ``run()`` returns the exit status.

    Parameters
    ----------
    config : Config
    metrics : ServiceMetrics, optional
    """

    def __init__(self, config: Config, metrics: ServiceMetrics | None = None) -> None:
        self._init_loop(config, metrics)
        counted = ("messages", "alerts", "embeddings", "rejected", "coalesced", "batches")
        self.stats = dict.fromkeys(counted, 0)
        #: Seconds spent per stage over the run (decode, history, embed in the worker,
        #: produce, commit, and ``wait``: the main thread waiting for the model).
        self.stage_totals: dict[str, float] = {}
        self._in_flight: _InFlight | None = None
        self._kafka: tuple[Consumer, Producer, KafkaRecordSink]
        self._model_counts = (0, 0, 0, 0)
        #: One history store per assigned partition (with a changelog topic), else None.
        self._partitioned: PartitionedHistory | None = None
        # The model runs here, overlapping the main thread's Kafka I/O, decoding and
        # history merges (onnxruntime releases the GIL while it computes).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="embed") if config.pipeline else None

    # ------------------------------------------------------------- set-up
    def _build(
        self,
    ) -> tuple[Consumer, Producer, Pipeline, KafkaRecordSink, HistoryStore | PartitionedHistory]:
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
            ort_session_kwargs=onnx_session_kwargs(c),
        )
        name = c.model if c.model_file is None else f"{c.model}:{c.model_file.rsplit('/', 1)[-1]}"
        embedder = LightCurveEmbedder(model, name, memo_bytes=c.curve_memo_bytes)
        self.metrics.model_info.labels(
            model=name, sha256=model.model_sha256 or "", output=model.output, reduction=embedder.reduction
        ).set(1)
        self.health.model_ready()
        history: HistoryStore | PartitionedHistory
        if c.history_changelog_topic:
            history = self._partitioned = PartitionedHistory(
                c.input_topics[0],
                c.history_changelog_topic,
                c.history_path,
                max_points_per_object=c.max_points_per_object,
            )
        elif c.history_path:
            history = SQLiteHistoryStore(c.history_path, max_points_per_object=c.max_points_per_object)
        else:
            history = MemoryHistoryStore(max_points_per_object=c.max_points_per_object)
        decoder = self._decoder()
        encoder = RecordEncoder(c.output_topic, c.schema_registry_url)
        consumer = Consumer(self._consumer_config())
        producer = self._new_producer()
        sink = KafkaRecordSink(
            producer,
            c.output_topic,
            c.dead_letter_topic,
            encoder,
            self._on_delivery_error,
            dead_letter_max_bytes=c.dead_letter_max_bytes,
        )
        store = history if isinstance(history, HistoryStore) else None
        pool = self._start_decode_pool()
        pipeline = Pipeline(decoder, store, embedder, coalesce=c.coalesce, decode_pool=pool)
        return consumer, producer, pipeline, sink, history

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        partitions = self._start_positions(consumer, partitions)
        consumer.assign(partitions)
        if self._partitioned is not None and partitions:
            # Before any message of these partitions is processed: the callback runs
            # inside consume(), which returns their messages only after it.
            self._restore_history(consumer, partitions)
        self._assigned = list(partitions)
        self.health.assigned = bool(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _restore_history(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Bring the stores of newly assigned partitions up to date from the changelog."""
        assert self._partitioned is not None
        c = self.config
        committed = {p: o for (_, p), o in self._committed_offsets(consumer, partitions).items()}
        reader = self._reader("history-restore", **{"auto.offset.reset": "earliest"})
        try:
            # Timed as a blocking Kafka call from its last record read, not as a silent loop.
            with self.health.kafka_call():
                stats = self._partitioned.assign(
                    [p.partition for p in partitions],
                    reader,
                    committed,
                    timeout_s=c.broker_outage_s,
                    settle_s=CHANGELOG_SETTLE_S,
                    on_progress=self.health.progress,
                )
        except ChangelogError as exc:
            raise FatalKafkaError(f"history changelog: {exc}") from exc
        finally:
            reader.close()
        for s in stats.values():
            self.metrics.history_restored_records.inc(s.records)
            log.info(
                "restored the history of %s[%d]: %d changelog records, %d objects, %.2f s",
                c.input_topics[0],
                s.partition,
                s.records,
                s.objects,
                s.seconds,
            )
        if stats:
            self.metrics.history_restore_seconds.observe(max(s.seconds for s in stats.values()))

    def _owned_partitions(self) -> set[int] | None:
        return set(self._partitioned.partitions) if self._partitioned is not None else None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open during consume(); the batch whose model run is in
        # flight is written and committed before its partitions go.
        self._finish_quietly()
        consumer.unassign()
        self._forget_rewound(partitions)
        if self._partitioned is not None:
            self._partitioned.revoke(p.partition for p in partitions)
        self._assigned = []
        self.health.assigned = False
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost partitions may already belong to another member: never commit for them.
        self._drop_in_flight()
        self._on_revoke(consumer, partitions)

    # ---------------------------------------------------------------- loop
    def run(self, install_signals: bool = True) -> int:
        """Serve until stopped (SIGTERM/SIGINT), caught up (if asked) or a fatal error."""
        self._begin(install_signals)
        consumer, producer, pipeline, sink, history = self._build()
        try:
            if self._exactly_once:
                self._init_transactions(producer)
            if self._partitioned is not None:
                self._check_changelog_topic(consumer)
            self._kafka = (consumer, producer, sink)
            self._subscribe(consumer)
            while not self.stopping:
                batch = self._consume(consumer)
                started = self._start(batch, pipeline) if batch else None
                # The previous batch's model run overlapped this batch's consume,
                # decode and history merge; write and commit it now, while the model
                # works on this one.
                try:
                    self._finish_in_flight()
                except Rewind as rewind:
                    # A broker outage: the failed batch and the one consumed since are
                    # both consumed again once the broker is back, each partition from
                    # the first offset either batch holds of it (they can hold different
                    # partitions).
                    self._in_flight = started
                    self._drop_in_flight()
                    self._rewind(consumer, earliest(rewind.offsets, first_offsets(batch)))
                    continue
                self._in_flight = started
                if started is None:
                    self._probe_broker(consumer)
                    self._update_lag(consumer)
                    if self._caught_up():
                        log.info("caught up: exiting")
                        break
            self._finish_quietly()
            return 0
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            print(f"streamer: configuration error: {exc}", file=sys.stderr)
            return 2
        except (FatalKafkaError, KafkaException) as exc:
            log.error("fatal: %s", exc)
            print(f"streamer: fatal: {exc}", file=sys.stderr)
            return 1
        finally:
            self._drop_in_flight()
            self._shutdown(consumer, self._kafka[1] if hasattr(self, "_kafka") else producer, history)

    def _start(self, batch: list[Any], pipeline: Pipeline) -> _InFlight:
        """Decode and merge a batch here, and hand its model run to the worker thread."""
        m = self.metrics
        messages = as_messages(batch)
        for msg in batch:
            m.consumed.labels(topic=msg.topic()).inc()
        m.batch_messages.observe(len(batch))
        self._mark_batch()
        updates: list[HistoryUpdate] = []
        if self._partitioned is None:
            prepared = pipeline.prepare(messages)
        else:
            prepared, updates = self._prepare_by_partition(pipeline, batch, messages)
        if self._worker is None:
            outcome: Future[BatchOutcome] = Future()
            outcome.set_result(pipeline.embed(prepared))
        else:
            outcome = self._worker.submit(pipeline.embed, prepared)
        return _InFlight(batch, outcome, pipeline, updates)

    def _prepare_by_partition(
        self, pipeline: Pipeline, batch: list[Any], messages: list[Message]
    ) -> tuple[PreparedBatch, list[HistoryUpdate]]:
        """:meth:`Pipeline.prepare` per input partition, each with its partition's store, and
        the changelog records of each: the stored rows of every object its alerts touched."""
        assert self._partitioned is not None
        groups: dict[int, list[Message]] = {}
        ends: dict[int, int] = {}
        for msg, message in zip(batch, messages, strict=True):
            p = int(msg.partition())
            groups.setdefault(p, []).append(message)
            ends[p] = max(ends.get(p, 0), int(msg.offset()) + 1)
        parts, updates = [], []
        for p, group in groups.items():
            store = self._partitioned.store(p)
            part = pipeline.prepare(group, history=store)
            t0 = time.perf_counter()
            rows = store.export_objects(a.object_id for a in part.alerts)
            curves = [(oid, history_changelog.encode_curve(oid, points)) for oid, points in rows.items()]
            part.outcome.stage_seconds["changelog"] = time.perf_counter() - t0
            parts.append(part)
            updates.append(HistoryUpdate(p, curves, ends[p]))
        return combine_prepared(parts), updates

    def _finish_in_flight(self) -> None:
        """Write the in-flight batch's records and commit its offsets (one transaction)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        sink = self._kafka[2]
        t_wait = time.perf_counter()
        outcome = flight.outcome.result()  # no transaction is open yet
        t0 = time.perf_counter()

        def write() -> None:
            sink.write(outcome.records, dead_letters(outcome.rejections, flight.batch))
            self._write_changelog(sink, flight.history_updates)

        # A failed commit leaves nothing of this batch visible; it is consumed again
        # (merges are idempotent, so it produces the same records).
        t1 = self._commit_batch(flight.batch, write)
        t2 = time.perf_counter()
        self._changelog_committed(flight.history_updates)
        self._mark_commit()
        seconds = dict(outcome.stage_seconds, wait=t0 - t_wait, produce=t1 - t0, commit=t2 - t1)
        self._account(flight, outcome, seconds)

    def _write_changelog(self, sink: KafkaRecordSink, updates: list[HistoryUpdate]) -> None:
        """Queue a batch's history changelog records (in its transaction, if exactly-once)."""
        topic = self.config.history_changelog_topic
        curve_headers = [("content-type", history_changelog.CONTENT_TYPE.encode())]
        position_headers = [("content-type", history_changelog.POSITION_CONTENT_TYPE.encode())]
        for update in updates:
            to = {"topic": topic, "partition": update.partition}
            for object_id, value in update.curves:
                sink.produce(**to, key=object_id.encode(), value=value, headers=curve_headers)
            position = history_changelog.encode_position(
                self.config.input_topics[0], update.partition, update.next_offset
            )
            sink.produce(**to, key=history_changelog.POSITION_KEY, value=position, headers=position_headers)

    def _changelog_committed(self, updates: list[HistoryUpdate]) -> None:
        """After a commit: the stores reflect their changelog up to what this batch wrote."""
        if self._partitioned is None or not updates:
            return
        # Every delivery report is served by now: at-least-once flushed the producer, and
        # exactly-once polled it after the commit (see ConsumerLoop._commit_batch).
        delivered = self._kafka[2].last_delivered(self._partitioned.changelog_topic)
        for update in updates:
            last = delivered.get(update.partition)
            after = None if last is None else last + 1
            self._partitioned.committed(update.partition, after, update.next_offset)

    def _finish_quietly(self) -> None:
        """Finish the in-flight batch when no more follow (stop, revoke); if Kafka is away,
        leave it uncommitted: whoever consumes the partitions next processes it again."""
        try:
            self._finish_in_flight()
        except Rewind:
            log.warning("the last batch stays uncommitted; it will be consumed again")

    def _drop_in_flight(self) -> None:
        """Forget the in-flight batch (not committed: it is re-delivered)."""
        flight, self._in_flight = self._in_flight, None
        if flight is not None:
            try:
                flight.outcome.result()
            except BaseException as exc:  # the batch is dropped either way
                log.warning("dropping the uncommitted batch: %s", exc)

    def _account(self, flight: _InFlight, outcome: BatchOutcome, seconds: dict[str, float]) -> None:
        m = self.metrics
        for stage, value in seconds.items():
            if stage != "wait":
                m.stage_seconds.labels(stage=stage).observe(value)
            self.stage_totals[stage] = self.stage_totals.get(stage, 0.0) + value
        for r in outcome.rejections:
            m.rejected.labels(reason=r.reason).inc()
        for survey, count in outcome.decoded_by_survey.items():
            m.decoded.labels(survey=survey).inc(count)
        m.embeddings.inc(len(outcome.records))
        m.coalesced.inc(outcome.coalesced)
        embedder = flight.pipeline.embedder
        model = embedder.model
        computed, runs = model.windows_computed, model.onnx_runs
        hits = model.cache.hits if model.cache else 0
        last = self._model_counts
        m.windows.labels(source="computed").inc(computed - last[0])
        m.windows.labels(source="cache").inc(hits - last[2])
        m.curves.labels(source="memo").inc(embedder.memo.hits - last[3])
        if runs > last[1]:
            m.onnx_batch.observe((computed - last[0]) / (runs - last[1]))
        self._model_counts = (computed, runs, hits, embedder.memo.hits)
        history = self._partitioned or flight.pipeline.history
        assert history is not None
        m.history_objects.set(history.object_count())
        m.history_points.set(history.point_count())
        m.history_bytes.set(history.size_bytes())
        self._update_lag(self._kafka[0])
        s = self.stats
        s["messages"] += len(flight.batch)
        s["alerts"] += outcome.alerts
        s["embeddings"] += len(outcome.records)
        s["rejected"] += len(outcome.rejections)
        s["coalesced"] += outcome.coalesced
        s["batches"] += 1

    def _check_changelog_topic(self, consumer: Consumer) -> None:
        """The changelog topic exists with as many partitions as the input topic (else
        :class:`ConfigError`); warn when it is not compacted."""
        c = self.config
        source, target = c.input_topics[0], str(c.history_changelog_topic)
        counts = {}
        for topic in (source, target):
            found = consumer.list_topics(topic=topic, timeout=30).topics.get(topic)
            if found is not None and found.error is None:
                counts[topic] = len(found.partitions)
        setting = "STREAMER_HISTORY_CHANGELOG_TOPIC"
        if target not in counts:
            want = f"{counts[source]} partitions" if source in counts else "as many partitions as the input"
            raise ConfigError(
                f"{setting}: topic {target!r} does not exist; create it with cleanup.policy=compact "
                f"and {want} (those of {source!r})"
            )
        if source in counts and counts[source] != counts[target]:
            raise ConfigError(
                f"{setting}: {target!r} has {counts[target]} partitions but the input topic {source!r} "
                f"has {counts[source]}; they must be equal (input partition i's history is changelog "
                "partition i)"
            )
        try:
            from confluent_kafka.admin import AdminClient, ConfigResource

            admin = AdminClient({k: v for k, v in self._kafka_common().items() if k != "error_cb"})
            resource = ConfigResource(ConfigResource.Type.TOPIC, target)
            entries = admin.describe_configs([resource])[resource].result(10)
            policy = entries["cleanup.policy"].value if "cleanup.policy" in entries else ""
        except Exception as exc:  # a check only: without DescribeConfigs rights, go on
            log.debug("cannot read the configuration of %s: %s", target, exc)
            return
        if "compact" not in policy:
            log.warning(
                "%s: %r has cleanup.policy=%s; use compact, or old histories are deleted with "
                "their segments and cannot be restored",
                setting,
                target,
                policy,
            )

    def _shutdown(
        self, consumer: Consumer, producer: Producer, history: HistoryStore | PartitionedHistory
    ) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing consumer: %s", exc)
        producer.flush(10)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._close_decode_pool()
        history.close()
        if self.http is not None:
            self.http.shutdown()
        log.info(
            "stopped: %d messages, %d alerts, %d embeddings, %d rejected",
            self.stats["messages"],
            self.stats["alerts"],
            self.stats["embeddings"],
            self.stats["rejected"],
            extra={
                "fields": {
                    **self.stats,
                    **self._busy_seconds(),
                    "stage_seconds": {k: round(v, 3) for k, v in self.stage_totals.items()},
                }
            },
        )


def run_service(config: Config, on_ready: Callable[[Service], None] | None = None) -> int:
    """Configure logging and run a :class:`Service` until it stops; returns the exit status."""
    configure_logging(config)
    log.debug("kafka properties: %s", masked(config.kafka))
    service = Service(config)
    if on_ready is not None:
        on_ready(service)
    return service.run()
