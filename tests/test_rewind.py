"""After a commit cut by a broker outage: which offsets the loop seeks back to and commits
with its next transaction, and how long it waits to learn whether the cut commit went
through. Kafka clients are stood in for by recorders here; ``tests/test_outage.py`` runs the
same paths against a real broker."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamer.config import Config
from streamer.sinks.kafka import KafkaRecordSink
from streamer.sources import kafka as kafka_source
from streamer.sources.kafka import ConsumerLoop, Rewind, consume_again_from, covers


class _Loop(ConsumerLoop):
    def __init__(self, delivery: str = "exactly-once", **settings: str) -> None:
        env = {
            "STREAMER_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "STREAMER_INPUT_TOPICS": "in",
            "STREAMER_OUTPUT_TOPIC": "out",
            "STREAMER_DELIVERY": delivery,
            **settings,
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
    consumer = _Consumer([("in", 0), ("in", 1)], {("in", 0): 7, ("in", 1): 10})
    committed = loop._settled_committed(consumer, batch)
    assert committed == {("in", 0): 7, ("in", 1): 10}
    assert covers(committed, batch)
    assert not covers({("in", 0): 7, ("in", 1): 9}, batch)
    assert not covers({("in", 0): 7}, batch)


def test_after_a_failed_transaction_partitions_are_consumed_again_from_the_committed_offsets() -> None:
    """A transaction the broker confirmed can be lost (its markers never written): the
    group's committed offsets then lag the failed batch, and every partition is consumed
    again from the earlier of its first offset in the batch and its committed offset."""
    batch = [_Message("in", 0, 10), _Message("in", 0, 11), _Message("in", 1, 40)]
    committed = {("in", 0): 5, ("in", 1): 40, ("in", 2): 7, ("in", 3): -1001}
    assert _offsets(consume_again_from(batch, committed)) == {("in", 0): 5, ("in", 1): 40, ("in", 2): 7}
    assert _offsets(consume_again_from(batch, None)) == {("in", 0): 10, ("in", 1): 40}


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
    assert loop._settled_committed(consumer, [_Message("in", 0, 5)]) is None
    assert time.monotonic() - started < 5


def test_a_committed_offsets_error_that_is_no_outage_also_means_consuming_again() -> None:
    loop = _Loop()
    consumer = _Consumer([])
    consumer.error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    assert loop._settled_committed(consumer, [_Message("in", 0, 5)]) is None


class _Producer:
    """Records the offsets sent with each transaction, its commits and aborts; each commit
    raises the next error of ``failures`` (``None``: it succeeds). A produced message is
    delivered at once, at the next offset of its partition."""

    def __init__(self, *failures: KafkaError | None) -> None:
        self.sent: list[dict[tuple[str, int], int]] = []
        self.failures = list(failures)
        self.commits = 0
        self.aborts = 0
        self.ends: dict[tuple[str, int], int] = {}
        self.fenced: list[tuple[str, int]] = []

    def produce(self, *, topic: str, partition: int, on_delivery=None, **kwargs: object) -> None:
        offset = self.ends.get((topic, partition), 0)
        self.ends[(topic, partition)] = offset + 1
        if kwargs.get("key") == kafka_source.FENCE_KEY:
            self.fenced.append((topic, partition))
        if on_delivery is not None:
            on_delivery(None, _Message(topic, partition, offset))

    def flush(self, timeout: float) -> int:
        return 0

    def begin_transaction(self) -> None:
        self.begun = getattr(self, "begun", 0) + 1

    def poll(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: object, timeout: float
    ) -> None:
        self.sent.append(_offsets(offsets))

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        error = self.failures.pop(0) if self.failures else None
        if error is not None:
            raise KafkaException(error)

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "commit not confirmed in time", retriable=True)
ABORTABLE = KafkaError(KafkaError._TRANSPORT, "offsets not sent", txn_requires_abort=True)
FATAL = KafkaError(KafkaError._FENCED, "producer fenced", fatal=True)


def _transactional(producer: _Producer, monkeypatch, outage_s: str = "240") -> tuple[_Loop, _Consumer, list]:
    """A loop over ``producer``, with partitions 0 and 1; replacing the producer is recorded
    in the returned list (and puts a producer that commits at once in its place)."""
    loop = _Loop(STREAMER_BROKER_OUTAGE_S=outage_s)
    consumer = _Consumer([("in", 0), ("in", 1)])
    consumer.consumer_group_metadata = lambda: None  # type: ignore[attr-defined]
    sink = KafkaRecordSink(producer, "out", "dlq", None, loop._on_delivery_error)  # type: ignore[var-annotated]
    loop._kafka = (consumer, producer, sink)  # type: ignore[assignment]
    replaced: list[_Producer] = []

    def replace(self: _Loop) -> None:
        self._producer_cut = False
        replaced.append(_Producer())
        sink.producer = replaced[-1]
        self._kafka = (consumer, replaced[-1], sink)  # type: ignore[assignment]

    monkeypatch.setattr(_Loop, "_replace_producer", replace)
    return loop, consumer, replaced


def _failed_commits(loop: _Loop, outcome: str) -> float | None:
    return loop.metrics.registry.get_sample_value("streamer_failed_commits_total", {"outcome": outcome})


BATCH = [_Message("in", p, o) for p, o in ((0, 10), (0, 11), (0, 12), (1, 40), (1, 41))]
#: The group's committed offsets after BATCH's transaction: lagging it, or covering it.
LAGGING, COVERING = {("in", 0): 10, ("in", 1): 40}, {("in", 0): 13, ("in", 1): 42}


def _committed_after_all(loop: _Loop, consumer: _Consumer, stored: dict[tuple[str, int], int]) -> bool:
    """Commit BATCH with the group's committed offsets at ``stored``: whether it counts as
    committed (``False``: it is to be consumed again)."""
    consumer.stored = stored
    try:
        loop._commit_batch(BATCH, lambda: None)
    except Rewind:
        return False
    return True


def test_a_commit_that_times_out_is_committed_again_on_the_same_producer(monkeypatch) -> None:
    """librdkafka's protocol: a timed-out commit goes on in the background and is called
    again; the batch is committed once, neither aborted nor consumed again."""
    producer = _Producer(TIMED_OUT, TIMED_OUT)
    monkeypatch.setattr(kafka_source, "RETRY_PAUSE_S", 0.01)
    loop, _, replaced = _transactional(producer, monkeypatch)
    loop._commit_batch(BATCH, lambda: None)
    assert (producer.commits, producer.aborts, replaced) == (3, 0, [])
    assert producer.sent == [{("in", 0): 13, ("in", 1): 42}]
    assert _failed_commits(loop, "retried") == 1
    assert _failed_commits(loop, "rewound") is None


def test_an_abortable_commit_error_aborts_replaces_the_producer_and_consumes_the_batch_again(
    monkeypatch,
) -> None:
    """Aborted, the batch is known not committed, whatever the committed offsets say (that it
    is, here). The producer is replaced all the same (librdkafka can hang in the next
    transaction of one that aborted after an outage)."""
    producer = _Producer(ABORTABLE)
    loop, consumer, replaced = _transactional(producer, monkeypatch)
    consumer.stored = COVERING
    with pytest.raises(Rewind) as rewind:
        loop._commit_batch(BATCH, lambda: None)
    assert _offsets(rewind.value.offsets) == {("in", 0): 10, ("in", 1): 40}
    assert (producer.commits, producer.aborts, len(replaced)) == (1, 1, 1)
    assert _failed_commits(loop, "rewound") == 1


def test_an_aborted_batch_after_a_lost_transaction_is_consumed_again_from_the_committed_offsets(
    monkeypatch,
) -> None:
    """The transaction before the failed one was confirmed, then lost: partition 0's
    committed offset lags the failed batch (5, not 10). Its messages are consumed again
    from 5; a partition without a committed offset from the log's start."""
    loop, consumer, _ = _transactional(_Producer(ABORTABLE), monkeypatch)
    consumer.assigned.append(TopicPartition("in", 2))
    consumer.stored = {("in", 0): 5, ("in", 1): 40}
    consumer.get_watermark_offsets = lambda tp, timeout, cached: (3, 99)  # type: ignore[attr-defined]
    with pytest.raises(Rewind) as rewind:
        loop._commit_batch(BATCH, lambda: None)
    assert _offsets(rewind.value.offsets) == {("in", 0): 5, ("in", 1): 40, ("in", 2): 3}


def test_an_offset_commit_of_a_lost_transaction_is_aborted_before_the_committed_offsets_decide(
    monkeypatch,
) -> None:
    """The transaction before the failed one was confirmed, then lost, and the failed one
    never reached the offsets partition: the lost one's offset commit stays pending, the
    committed offsets unstable, until a marker of this producer id ends it. The loop aborts
    a transaction that carries offsets on the new producer, then reads the committed offsets:
    partition 0 is consumed again from 5, not from the failed batch's 10 (which would lose
    5 to 9 once the next commit made the pending offsets committed)."""
    monkeypatch.setattr(kafka_source, "COMMITTED_CHECK_S", 0.3)
    monkeypatch.setattr(kafka_source, "KAFKA_CALL_S", 0.1)
    loop, consumer, replaced = _transactional(_Producer(ABORTABLE), monkeypatch)
    consumer.stored = {("in", 0): 5, ("in", 1): 40}
    stable = consumer.committed

    def committed(partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if not (replaced and replaced[-1].aborts):  # librdkafka waits out unstable offsets
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "unstable offsets"))
        return stable(partitions, timeout)

    consumer.committed = committed  # type: ignore[method-assign]
    with pytest.raises(Rewind) as rewind:
        loop._commit_batch(BATCH, lambda: None)
    assert _offsets(rewind.value.offsets) == {("in", 0): 5, ("in", 1): 40}
    (new,) = replaced
    assert (new.sent, new.commits, new.aborts) == ([{("in", 0): 10, ("in", 1): 40}], 0, 1)


@pytest.mark.parametrize("visible", [True, False])
def test_an_offset_commit_a_confirmed_transaction_left_pending_is_committed_if_its_records_read_back(
    monkeypatch, visible: bool
) -> None:
    """The broker confirmed the transaction before the failed one, then lost its marker on
    the offsets partition (its records visible: committed) or every marker (its records
    aborted with the failed one's): its offset commit stays pending, the committed offsets
    unstable. The loop reads that transaction's records back, then ends the pending commit
    with a transaction carrying the failed batch's first offsets: committed if they all
    read back (the confirmed batch stays done, not written twice), aborted if not (the
    committed offsets go back to before it, and it is consumed again, after its records
    that may still be open are ended by an aborted fencing transaction). A second failure
    before any commit reads nothing back: which batch is done is not known then."""
    monkeypatch.setattr(kafka_source, "COMMITTED_CHECK_S", 0.3)
    monkeypatch.setattr(kafka_source, "KAFKA_CALL_S", 0.1)
    loop, consumer, replaced = _transactional(_Producer(None, ABORTABLE), monkeypatch)
    read_back: list[dict[tuple[str, int], list[int]]] = []
    unread = set() if visible else {("out", 1)}
    monkeypatch.setattr(_Loop, "_unread", lambda self, written: read_back.append(written) or unread)
    consumer.list_topics = lambda timeout: _Topics()  # type: ignore[attr-defined]
    sink = loop._kafka[2]
    confirmed = [_Message("in", 0, o) for o in range(5, 10)] + [_Message("in", 1, 39)]
    loop._commit_batch(confirmed, lambda: [sink.produce(topic="out", partition=p) for p in (0, 1, 1)])
    # Unstable until a transaction of the new producer ends the pending commit, then what it left.
    left = {("in", 0): 10, ("in", 1): 40} if visible else {("in", 0): 5, ("in", 1): 39}
    consumer.stored = left
    stable = consumer.committed

    def committed(partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if not (replaced[-1].commits or replaced[-1].aborts):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "unstable offsets"))
        return stable(partitions, timeout)

    consumer.committed = committed  # type: ignore[method-assign]
    with pytest.raises(Rewind) as rewind:
        loop._commit_batch(BATCH, lambda: None)
    assert read_back == [{("out", 0): [0], ("out", 1): [0, 1]}]
    (new,) = replaced
    assert new.sent == [{("in", 0): 10, ("in", 1): 40}]
    assert (new.commits, new.aborts) == ((1, 0) if visible else (0, 2))
    assert new.fenced == ([] if visible else [("out", 0), ("out", 1), ("out", 2)])
    assert _offsets(rewind.value.offsets) == left

    new.failures = [ABORTABLE]
    with pytest.raises(Rewind):
        loop._commit_batch(BATCH, lambda: None)
    assert len(read_back) == 1
    assert (replaced[-1].commits, replaced[-1].aborts) == (0, 1)


class _Topics:
    """``list_topics``' answer: topics ``out`` (3 partitions) and ``dlq`` (2)."""

    def __init__(self) -> None:
        part = type("Topic", (), {})
        self.topics = {}
        for name, count in (("out", 3), ("dlq", 2)):
            self.topics[name] = part()
            self.topics[name].partitions = dict.fromkeys(range(count))


INVALID_TXN_STATE = KafkaError(KafkaError.INVALID_TXN_STATE, "failed to end transaction", fatal=True)


@pytest.mark.parametrize(
    ("unread", "done", "kept"),
    [
        (set(), True, set()),
        ({("out", 1)}, True, {("out", 1)}),
        ({("out", 1)}, False, set()),
    ],
)
def test_records_a_restarted_broker_left_open_are_aborted_before_the_batch_is_written_again(
    monkeypatch, unread: set, done: bool, kept: set
) -> None:
    """A restarted broker unaware of the failed transaction (its abort fails with
    INVALID_TXN_STATE, no marker is written) leaves its records open, and the next commit
    of the producer id would make them visible: the batch would be written twice. Before
    it is consumed again, the new producer aborts a transaction with one record on every
    partition of the topics the failed one wrote to, which ends them; but not on a
    partition where the last confirmed transaction's records do not read back while the
    committed offsets count it done (open there, the next commit must make them visible).
    After an abort that succeeds, only where the last confirmed transaction's records are
    not all read back and its batch is consumed again."""
    loop, consumer, replaced = _transactional(_Producer(None, ABORTABLE), monkeypatch)
    monkeypatch.setattr(_Loop, "_unread", lambda self, written: unread)
    consumer.list_topics = lambda timeout: _Topics()  # type: ignore[attr-defined]
    sink = loop._kafka[2]
    confirmed = [_Message("in", 0, 9)]
    loop._commit_batch(confirmed, lambda: [sink.produce(topic="out", partition=p) for p in (0, 1)])
    consumer.stored = {("in", 0): 10 if done else 9, ("in", 1): 40}

    def abort(timeout: float) -> None:
        raise KafkaException(INVALID_TXN_STATE)

    loop._kafka[1].abort_transaction = abort  # type: ignore[method-assign]
    failed_write = [("out", 2), ("dlq", 0)]
    with pytest.raises(Rewind):
        loop._commit_batch(BATCH, lambda: [sink.produce(topic=t, partition=p) for t, p in failed_write])
    (new,) = replaced
    everywhere = [("dlq", 0), ("dlq", 1), ("out", 0), ("out", 1), ("out", 2)]
    assert new.fenced == [tp for tp in everywhere if tp not in kept]
    assert (new.commits, new.aborts) == (0, 1)

    # The failed transaction aborted: only the last confirmed one's records can be open,
    # and are ended only if its batch is to be written again.
    loop, consumer, replaced = _transactional(_Producer(None, ABORTABLE), monkeypatch)
    consumer.list_topics = lambda timeout: _Topics()  # type: ignore[attr-defined]
    sink = loop._kafka[2]
    loop._commit_batch(confirmed, lambda: [sink.produce(topic="out", partition=p) for p in (0, 1)])
    consumer.stored = {("in", 0): 10 if done else 9, ("in", 1): 40}
    with pytest.raises(Rewind):
        loop._commit_batch(BATCH, lambda: [sink.produce(topic=t, partition=p) for t, p in failed_write])
    fenced = everywhere if unread and not done else []
    assert (replaced[0].fenced, replaced[0].aborts) == (fenced, 1 if fenced else 0)


def test_a_commit_still_unconfirmed_after_a_while_is_settled_by_a_new_producer(monkeypatch) -> None:
    """It may yet go through: it is not aborted. The producer is replaced (librdkafka can
    lose the coordinator for good after an outage); the new one's init_transactions
    completes the commit or aborts it, and the committed offsets tell which."""
    monkeypatch.setattr(kafka_source, "SAME_PRODUCER_S", 0.2)
    monkeypatch.setattr(kafka_source, "RETRY_PAUSE_S", 0.01)
    for stored in (LAGGING, COVERING):
        committed = stored is COVERING
        producer = _Producer(*[TIMED_OUT] * 1000)
        loop, consumer, replaced = _transactional(producer, monkeypatch)
        assert _committed_after_all(loop, consumer, stored) == committed
        assert producer.commits > 1
        assert (producer.aborts, len(replaced)) == (0, 1)
        assert _failed_commits(loop, "committed" if committed else "rewound") == 1


def test_an_abort_that_does_not_complete_is_left_to_a_new_producer(monkeypatch) -> None:
    monkeypatch.setattr(kafka_source, "SAME_PRODUCER_S", 0.2)
    monkeypatch.setattr(kafka_source, "RETRY_PAUSE_S", 0.01)
    producer = _Producer(ABORTABLE)

    def abort(timeout: float) -> None:
        producer.aborts += 1
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator not found", retriable=True))

    producer.abort_transaction = abort  # type: ignore[method-assign]
    loop, consumer, replaced = _transactional(producer, monkeypatch)
    assert not _committed_after_all(loop, consumer, LAGGING)
    assert producer.aborts > 1
    assert len(replaced) == 1
    assert _failed_commits(loop, "rewound") == 1


def test_a_fatal_commit_error_replaces_the_producer_and_the_committed_offsets_decide(monkeypatch) -> None:
    """Not committed (the offsets of one partition lag): consumed again. Committed (the
    fenced producer's commit went through): done, counted as such."""
    loop, consumer, replaced = _transactional(_Producer(FATAL), monkeypatch)
    assert not _committed_after_all(loop, consumer, {("in", 0): 10, ("in", 1): 42})
    assert len(replaced) == 1
    assert _failed_commits(loop, "rewound") == 1

    loop, consumer, replaced = _transactional(_Producer(FATAL), monkeypatch)
    assert _committed_after_all(loop, consumer, COVERING)
    assert len(replaced) == 1
    assert _failed_commits(loop, "committed") == 1
    assert _failed_commits(loop, "rewound") is None


def test_an_abort_that_fails_for_good_leaves_it_to_the_committed_offsets(monkeypatch) -> None:
    """librdkafka ends the abort of a transaction whose partitions the broker never learnt
    of with a fatal error; the new producer settles the transaction, the offsets tell."""
    for stored in (LAGGING, COVERING):
        committed = stored is COVERING
        producer = _Producer(ABORTABLE)

        def abort(timeout: float) -> None:
            raise KafkaException(
                KafkaError(KafkaError.INVALID_TXN_STATE, "failed to end transaction", fatal=True)
            )

        producer.abort_transaction = abort  # type: ignore[method-assign]
        loop, consumer, replaced = _transactional(producer, monkeypatch)
        assert _committed_after_all(loop, consumer, stored) == committed
        assert len(replaced) == 1
        assert _failed_commits(loop, "committed" if committed else "rewound") == 1


def test_a_producer_that_lost_its_connections_is_replaced_before_its_next_transaction(monkeypatch) -> None:
    """librdkafka 2.16 can block for good in the first send_offsets_to_transaction of a
    producer that lived through a broker outage. The consumer's connection errors, or the
    producer's other errors, change nothing."""
    producer = _Producer()
    loop, _, replaced = _transactional(producer, monkeypatch)
    loop._on_kafka_error(KafkaError(KafkaError._TRANSPORT, "connection refused"))
    loop._on_kafka_error(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), transactional=True)
    loop._commit_batch(BATCH, lambda: None)
    assert (producer.commits, replaced) == (1, [])

    loop._on_kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), transactional=True)
    loop._commit_batch(BATCH, lambda: None)
    assert producer.commits == 1
    assert [(p.begun, p.commits) for p in replaced] == [(1, 1)]
    loop._commit_batch(BATCH, lambda: None)
    assert len(replaced) == 1


def test_a_cut_commit_found_committed_also_ends_the_rewind(monkeypatch) -> None:
    """After a rewind (partitions 0 and 1 sought back to 10 and 40), the next batch moves
    both and its commit fails for good after the broker applied it: the batch counts as
    done, and the transaction after it, holding partition 0 only, does not commit
    partition 1 back to 40."""
    producer = _Producer(FATAL)
    loop, consumer, replaced = _transactional(producer, monkeypatch)
    loop._rewind(consumer, [TopicPartition("in", 0, 10), TopicPartition("in", 1, 40)])

    consumer.stored = {("in", 0): 13, ("in", 1): 42}  # what the applied transaction committed
    loop._commit_batch(BATCH, lambda: None)
    assert producer.sent == [{("in", 0): 13, ("in", 1): 42}]
    assert _failed_commits(loop, "committed") == 1

    loop._commit_batch([_Message("in", 0, 13)], lambda: None)
    assert replaced[0].sent == [{("in", 0): 14}]


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


def test_a_fatal_error_ends_the_process_unless_the_transactional_producer_reports_it() -> None:
    """The transactional producer's calls raise its fatal errors, and the producer is
    replaced (an abort can fail fatally after an outage, librdkafka#4849); the consumer's,
    or an authentication failure of any client, end the process."""
    fenced = KafkaError(KafkaError.INVALID_TXN_STATE, "failed to end transaction", fatal=True)
    loop = _Loop()
    loop._on_kafka_error(fenced, transactional=True)
    assert loop._fatal is None
    loop._on_kafka_error(KafkaError(KafkaError._AUTHENTICATION, "SASL failed"), transactional=True)
    assert loop._fatal == "Kafka: SASL failed"
    loop = _Loop()
    loop._on_kafka_error(fenced)
    assert loop._fatal == "Kafka: failed to end transaction"


class _Sink:
    producer: object = None


def _replacing(old: object, monkeypatch, events: list[str]) -> _Loop:
    """A loop whose producer is ``old``; a replacement is "new producer", and its creation
    and ``init_transactions`` are recorded in ``events``."""
    loop = _Loop()
    loop._kafka = (None, old, _Sink())  # type: ignore[assignment]
    monkeypatch.setattr(_Loop, "_new_producer", lambda self: events.append("new") or "new producer")
    monkeypatch.setattr(_Loop, "_init_transactions", lambda self, producer: events.append("init"))
    return loop


def test_a_replaced_producer_is_closed_before_the_new_one_starts_even_in_a_fatal_state(monkeypatch) -> None:
    """Two producers of one transactional id must not act at once; a producer in a fatal
    state refuses calls, and is dropped all the same."""
    events: list[str] = []

    class _Fatal:
        def __getattr__(self, name: str):
            def call(*args: object) -> None:
                events.append(name)
                raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "fatal state", fatal=True))

            return call

    loop = _replacing(_Fatal(), monkeypatch, events)
    loop._producer_cut = True
    loop._replace_producer()
    assert events == ["purge", "flush", "close", "new", "init"]
    assert not loop._producer_cut
    assert loop._kafka[1] == loop._kafka[2].producer == "new producer"


def test_a_replaced_producer_whose_close_blocks_is_left_behind_after_a_bounded_wait(monkeypatch) -> None:
    """close() aborts an open transaction, and blocks for good in a producer that lost its
    transaction coordinator: the new producer starts all the same."""
    monkeypatch.setattr(kafka_source, "CLOSE_S", 0.2)
    released = threading.Event()

    class _Stuck:
        def purge(self) -> None:
            pass

        def flush(self, timeout: float) -> int:
            return 0

        def close(self) -> None:
            released.wait(30)

    loop = _replacing(_Stuck(), monkeypatch, [])
    started = time.monotonic()
    try:
        loop._replace_producer()
    finally:
        released.set()
    assert time.monotonic() - started < 5
    assert loop._kafka[1] == "new producer"
