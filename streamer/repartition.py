"""``streamer repartition``: re-key an alert topic by object id into a photometry topic.

Rubin's and ZTF's alert topics are not keyed by object: one object's alerts are spread
over every partition, so each replica of ``streamer run`` in a consumer group would see
only some of them. The repartitioner decodes every alert once and publishes its compact
photometry record (``schemas/photometry.avsc``, :mod:`streamer.alerts.photometry_codec`)
keyed by object id; the producer's partitioner then puts all of an object's alerts in
one partition of the output topic, and replicas of ``streamer run`` with
``STREAMER_FRAMING=photometry`` split the objects between them.

The lifecycle is the service's, without model or history: consume a micro-batch,
decode it, produce the records and dead letters (the service's
:class:`~streamer.sinks.kafka.KafkaRecordSink`), then commit: exactly-once, the offsets
in the same transaction; at-least-once, flush and then commit. A broker outage is ridden
out as the service does (:class:`~streamer.sources.kafka.ConsumerLoop`): the batch is
consumed again once the broker is back. A re-delivered batch is re-published under
at-least-once, which ``streamer run`` absorbs: re-merging an alert is a no-op and its
record comes out the same.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from streamer.config import Config, ConfigError
from streamer.metrics import ServiceMetrics
from streamer.photometry import DecodedAlert
from streamer.pipeline import DecodeMessages, decode_messages
from streamer.service import configure_logging
from streamer.sinks.kafka import KafkaRecordSink, PhotometryEncoder
from streamer.sources.kafka import ConsumerLoop, FatalKafkaError, Rewind, as_messages, dead_letters

log = logging.getLogger("streamer.repartition")


def check_config(config: Config) -> None:
    """Refuse settings whose defaults belong to ``streamer run``.

    Raises
    ------
    ConfigError
        When the output topic is the embedding topic's default name or one of the input
        topics, or when the consumer group is ``streamer run``'s default.
    """
    defaults = Config.__dataclass_fields__
    if config.output_topic == defaults["output_topic"].default:
        raise ConfigError(
            f"STREAMER_OUTPUT_TOPIC: name the photometry topic to write ({config.output_topic!r}, "
            "the default, is streamer run's embedding topic)"
        )
    if config.output_topic in config.input_topics:
        raise ConfigError(f"STREAMER_OUTPUT_TOPIC: {config.output_topic!r} is also an input topic")
    if config.group_id == defaults["group_id"].default:
        raise ConfigError(
            f"STREAMER_GROUP_ID: give streamer repartition its own consumer group "
            f"({config.group_id!r}, the default, is streamer run's)"
        )


class Repartitioner(ConsumerLoop):
    """The repartitioning consumer loop. ``run()`` returns the exit status.

    Parameters
    ----------
    config : Config
        ``output_topic`` is the photometry topic; see :func:`check_config`.
    metrics : ServiceMetrics, optional
        The service's metrics, of which the consumed, decoded, rejected, batch, stage
        (decode, produce, commit) and lag series apply.
    """

    def __init__(self, config: Config, metrics: ServiceMetrics | None = None) -> None:
        check_config(config)
        self._init_loop(config, metrics)
        self.health.model_ready()  # there is none: ready once assigned and connected
        self.stats = dict.fromkeys(("messages", "alerts", "rejected", "batches"), 0)
        self._kafka: tuple[Consumer, Producer, KafkaRecordSink[DecodedAlert]]

    # ------------------------------------------------------------- set-up
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        partitions = self._start_positions(consumer, partitions)
        consumer.assign(partitions)
        self._assigned = list(partitions)
        self.health.assigned = bool(partitions)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Each batch is committed before the next consume(): nothing is in flight here.
        consumer.unassign()
        self._forget_rewound(partitions)
        self._assigned = []
        self.health.assigned = False

    # ---------------------------------------------------------------- loop
    def run(self, install_signals: bool = True) -> int:
        """Serve until stopped (SIGTERM/SIGINT), caught up (if asked) or a fatal error."""
        c = self.config
        self._begin(install_signals)
        pool = self._start_decode_pool()
        decode = pool.decode if pool is not None else functools.partial(decode_messages, self._decoder())
        consumer, producer = Consumer(self._consumer_config()), self._new_producer()
        sink = KafkaRecordSink[DecodedAlert](
            producer,
            c.output_topic,
            c.dead_letter_topic,
            PhotometryEncoder(),
            self._on_delivery_error,
            dead_letter_max_bytes=c.dead_letter_max_bytes,
        )
        self._kafka = (consumer, producer, sink)
        try:
            if self._exactly_once:
                self._init_transactions(producer)
            self._subscribe(consumer)
            while not self.stopping:
                batch = self._consume(consumer)
                if batch:
                    try:
                        self._process(batch, decode)
                    except Rewind as rewind:
                        self._rewind(consumer, rewind.offsets)
                        continue
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
            self._shutdown(consumer, self._kafka[1])

    def _process(self, batch: list[Any], decode: DecodeMessages) -> None:
        m = self.metrics
        for msg in batch:
            m.consumed.labels(topic=msg.topic()).inc()
        m.batch_messages.observe(len(batch))
        self._mark_batch()
        t0 = time.perf_counter()
        alerts, _, rejections = decode(as_messages(batch))
        t1 = time.perf_counter()
        sink = self._kafka[2]
        t2 = self._commit_batch(batch, lambda: sink.write(alerts, dead_letters(rejections, batch)))
        t3 = time.perf_counter()
        self._mark_commit()
        for stage, seconds in (("decode", t1 - t0), ("produce", t2 - t1), ("commit", t3 - t2)):
            m.stage_seconds.labels(stage=stage).observe(seconds)
        for alert in alerts:
            m.decoded.labels(survey=alert.survey).inc()
        for r in rejections:
            m.rejected.labels(reason=r.reason).inc()
        self._update_lag(consumer=self._kafka[0])
        s = self.stats
        s["messages"] += len(batch)
        s["alerts"] += len(alerts)
        s["rejected"] += len(rejections)
        s["batches"] += 1

    def _shutdown(self, consumer: Consumer, producer: Producer) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing consumer: %s", exc)
        producer.flush(10)
        self._close_decode_pool()
        if self.http is not None:
            self.http.shutdown()
        s = self.stats
        log.info(
            "stopped: %d messages, %d alerts repartitioned, %d rejected",
            s["messages"],
            s["alerts"],
            s["rejected"],
            extra={"fields": {**s, **self._busy_seconds()}},
        )


def run_repartition(config: Config) -> int:
    """Configure logging and run a :class:`Repartitioner` until it stops; returns the exit status."""
    configure_logging(config)
    return Repartitioner(config).run()
