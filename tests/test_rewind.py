"""After a commit cut by a broker outage: which offsets the loop seeks back to and commits
with its next transaction, and how long it waits to learn whether the cut commit went
through. Kafka clients are stood in for by recorders here; ``tests/test_outage.py`` runs the
same paths against a real broker."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamer.config import Config
from streamer.sources import kafka as kafka_source
from streamer.sources.kafka import ConsumerLoop


class _Loop(ConsumerLoop):
    def __init__(self, delivery: str = "exactly-once") -> None:
        env = {
            "STREAMER_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "STREAMER_INPUT_TOPICS": "in",
            "STREAMER_OUTPUT_TOPIC": "out",
            "STREAMER_DELIVERY": delivery,
        }
        self._init_loop(Config.load(env), None)


class _Consumer:
    """Records seeks; ``committed`` answers from ``stored`` or raises ``error``."""

    def __init__(self, assigned: list[tuple[str, int]], stored: dict[tuple[str, int], int] | None = None):
        self.assigned = [TopicPartition(t, p) for t, p in assigned]
        self.stored = stored or {}
        self.error: KafkaError | None = None
        self.seeks: list[tuple[str, int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.error is not None:
            raise KafkaException(self.error)
        return [
            TopicPartition(p.topic, p.partition, self.stored.get((p.topic, p.partition), -1001))
            for p in partitions
        ]


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._at = (topic, partition, offset)

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]


def _offsets(tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): tp.offset for tp in tps}


def test_the_commit_after_a_rewind_also_commits_the_rewound_partitions_the_batch_lacks() -> None:
    """Partitions 0 and 1 are sought back to 10 and 40; the next batch holds only partition
    0 (moved to 25): its commit carries 0 at 25 and 1 at 40, and the commit after it only
    its own batch's offsets. A partition no longer assigned is never committed."""
    loop = _Loop()
    consumer = _Consumer([("in", 0), ("in", 1)])
    loop._rewind(
        consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40), TopicPartition("in", 2, 7)]
    )
    assert consumer.seeks == [("in", 0, 10), ("in", 1, 40)]
    first = loop._with_rewound(consumer, [TopicPartition("in", 0, 25)])
    assert _offsets(first) == {("in", 0): 25, ("in", 1): 40}

    loop._rewound = {}  # as _commit_batch does once that transaction is committed
    assert _offsets(loop._with_rewound(consumer, [TopicPartition("in", 0, 30)])) == {("in", 0): 30}


def test_a_second_rewind_before_any_commit_keeps_the_lowest_position_and_revoking_forgets() -> None:
    loop = _Loop()
    consumer = _Consumer([("in", 0), ("in", 1)])
    loop._rewind(consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40)])
    loop._rewind(consumer, [TopicPartition("in", 0, 12)])
    assert _offsets(loop._with_rewound(consumer, [])) == {("in", 0): 10, ("in", 1): 40}
    loop._forget_rewound([TopicPartition("in", 1)])
    assert _offsets(loop._with_rewound(consumer, [])) == {("in", 0): 10}


def test_at_least_once_commits_only_the_batch_after_a_rewind() -> None:
    loop = _Loop("at-least-once")
    consumer = _Consumer([("in", 0), ("in", 1)])
    loop._rewind(consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40)])
    assert consumer.seeks == [("in", 0, 10), ("in", 1, 40)]
    assert _offsets(loop._with_rewound(consumer, [TopicPartition("in", 0, 25)])) == {("in", 0): 25}


def test_a_cut_commit_counts_as_done_only_when_the_committed_offsets_cover_its_batch() -> None:
    loop = _Loop()
    batch = [_Message("in", 0, 5), _Message("in", 0, 6), _Message("in", 1, 9)]
    assert loop._committed_through(_Consumer([], {("in", 0): 7, ("in", 1): 10}), batch)
    assert not loop._committed_through(_Consumer([], {("in", 0): 7, ("in", 1): 9}), batch)
    assert not loop._committed_through(_Consumer([], {("in", 0): 7}), batch)


def test_committed_offsets_that_stay_unknown_mean_consuming_again_after_a_bounded_wait(monkeypatch) -> None:
    """Offsets that stay unstable (or a coordinator that does not answer) do not hold the
    loop for ``broker_outage_s``: after ``COMMITTED_CHECK_S`` the batch is consumed again."""
    monkeypatch.setattr(kafka_source, "COMMITTED_CHECK_S", 0.5)
    monkeypatch.setattr(kafka_source, "KAFKA_CALL_S", 0.1)
    loop = _Loop()
    assert loop.config.broker_outage_s > 60
    consumer = _Consumer([], {("in", 0): 7})
    consumer.error = KafkaError(KafkaError._TIMED_OUT, "unstable offsets")
    started = time.monotonic()
    assert not loop._committed_through(consumer, [_Message("in", 0, 5)])
    assert time.monotonic() - started < 5


def test_a_committed_offsets_error_that_is_no_outage_also_means_consuming_again() -> None:
    loop = _Loop()
    consumer = _Consumer([])
    consumer.error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    assert not loop._committed_through(consumer, [_Message("in", 0, 5)])


class _Producer:
    """Records the offsets sent with each transaction; its first commit is cut after the
    broker applied it (the reply lost)."""

    def __init__(self) -> None:
        self.sent: list[dict[tuple[str, int], int]] = []
        self.cut = False

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: object, timeout: float
    ) -> None:
        self.sent.append(_offsets(offsets))

    def commit_transaction(self, timeout: float) -> None:
        if not self.cut:
            self.cut = True
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "reply lost", retriable=True))


def test_a_cut_commit_found_committed_also_ends_the_rewind(monkeypatch) -> None:
    """After a rewind (partitions 0 and 1 sought back to 10 and 40), the next batch moves
    both and its commit is cut but applied: the batch counts as done, and the transaction
    after it, holding partition 0 only, does not commit partition 1 back to 40."""
    loop = _Loop()
    consumer = _Consumer([("in", 0), ("in", 1)])
    consumer.consumer_group_metadata = lambda: None  # type: ignore[attr-defined]
    producer = _Producer()
    loop._kafka = (consumer, producer, None)  # type: ignore[assignment]
    monkeypatch.setattr(_Loop, "_replace_producer", lambda self: None)
    loop._rewind(consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40)])

    consumer.stored = {("in", 0): 13, ("in", 1): 42}  # what the applied transaction committed
    batch = [_Message("in", p, o) for p, o in ((0, 10), (0, 11), (0, 12), (1, 40), (1, 41))]
    loop._commit_batch(batch, lambda: None)
    assert producer.sent == [{("in", 0): 13, ("in", 1): 42}]
    assert (
        loop.metrics.registry.get_sample_value("streamer_failed_commits_total", {"outcome": "committed"}) == 1
    )

    loop._commit_batch([_Message("in", 0, 13)], lambda: None)
    assert producer.sent[-1] == {("in", 0): 14}


class _Consumed(_Message):
    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


def _consumer_returning(*batches: list[tuple[int, int]]) -> _Consumer:
    """A consumer whose ``consume`` returns these ``(partition, offset)`` batches in turn."""
    consumer = _Consumer([("in", 0), ("in", 1)])
    queue = [[_Consumed("in", p, o) for p, o in batch] for batch in batches]
    consumer.consume = lambda num_messages, timeout: queue.pop(0)  # type: ignore[attr-defined]
    return consumer


def _consumed(batch: list) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in batch]


def test_a_partition_that_resumes_past_where_it_was_sought_back_to_is_sought_again() -> None:
    """Sought back to 10, partition 0 comes back at 30 (the consumer went on from its old
    position): its messages are left out and it is sought to 10 again; the next batch
    starts at 10 and is taken whole. Partition 1 resumed right and is kept throughout."""
    loop = _Loop()
    consumer = _consumer_returning([(0, 30), (0, 31), (1, 40)], [(0, 10), (0, 11), (1, 41)], [(0, 12)])
    loop._rewind(consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40)])
    assert _consumed(loop._consume(consumer)) == [(1, 40)]
    assert consumer.seeks[-1] == ("in", 0, 10)
    assert _consumed(loop._consume(consumer)) == [(0, 10), (0, 11), (1, 41)]
    assert _consumed(loop._consume(consumer)) == [(0, 12)]
    assert len(consumer.seeks) == 3


def test_a_real_gap_after_the_sought_offset_is_accepted_after_one_more_seek() -> None:
    """Offsets 10-11 hold transaction markers: partition 0 resumes at 12 twice, and the
    second time its messages are processed."""
    loop = _Loop("at-least-once")
    consumer = _consumer_returning([(0, 12), (0, 13)], [(0, 12), (0, 13)])
    loop._rewind(consumer, [TopicPartition("in", 0, 10)])
    assert _consumed(loop._consume(consumer)) == []
    assert _consumed(loop._consume(consumer)) == [(0, 12), (0, 13)]
    assert consumer.seeks == [("in", 0, 10), ("in", 0, 10)]


def test_a_revoked_partition_is_not_checked_after_a_rewind() -> None:
    loop = _Loop()
    consumer = _consumer_returning([(0, 30)])
    loop._rewind(consumer, [TopicPartition("in", 0, 10)])
    loop._forget_rewound([TopicPartition("in", 0)])
    assert _consumed(loop._consume(consumer)) == [(0, 30)]
