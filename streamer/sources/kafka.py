"""What ``streamer run`` and ``streamer repartition`` share as Kafka consumer-group members:
start positions on assignment, caught-up detection, broker probing and lag metrics."""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

if TYPE_CHECKING:
    from streamer.config import Config
    from streamer.metrics import Health, ServiceMetrics

log = logging.getLogger("streamer")

#: How often the idle loop checks that the broker answers (seconds).
BROKER_PROBE_INTERVAL_S = 5.0


def next_offsets(batch: list[Any]) -> list[TopicPartition]:
    """The offsets to commit after a batch of messages: one past each partition's last."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        key = (msg.topic(), msg.partition())
        last[key] = max(last.get(key, -1), msg.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


class ConsumerLoop:
    """Mixin of a consumer-group member; the class sets the attributes below."""

    config: Config
    health: Health
    metrics: ServiceMetrics
    _assigned: list[TopicPartition]
    _done_partitions: set[tuple[str, int]]
    _last_probe: float
    stopping: bool

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """SIGTERM/SIGINT handler: finish and commit the current batch, then stop."""
        log.info("stop requested: draining the current batch")
        self.stopping = True

    def _start_positions(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Assigned partitions with the configured start (``STREAMER_START_FROM``) applied."""
        c = self.config
        if c.start_from in ("beginning", "end"):
            for p in partitions:
                p.offset = OFFSET_BEGINNING if c.start_from == "beginning" else OFFSET_END
        elif c.start_from == "time":
            query = [TopicPartition(p.topic, p.partition, c.start_time_ms or 0) for p in partitions]
            partitions = consumer.offsets_for_times(query, timeout=10)
        return partitions

    def _caught_up(self) -> bool:
        """Every assigned partition is at its end (or past ``until``), when asked to stop there."""
        c = self.config
        if not (c.exit_when_caught_up or c.until_time_ms is not None) or not self._assigned:
            return False
        return all((p.topic, p.partition) in self._done_partitions for p in self._assigned)

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
