"""What ``streamer run`` and ``streamer repartition`` share as Kafka consumer-group members
that write what they consume: start positions on assignment, consuming a micro-batch,
writing its output and committing its offsets (one transaction, or flush then commit),
riding out broker outages, caught-up detection, broker probing and lag metrics.

A batch whose commit fails because the broker is away is never half-visible. Exactly-once,
librdkafka's transaction protocol is followed: a commit that times out is made again until
the broker confirms it; a transaction that fails otherwise is aborted and the producer
replaced by a new one with the same transactional id (see :meth:`ConsumerLoop._recover`).
If the abort fails too, or the commit stays unconfirmed for :data:`SAME_PRODUCER_S`, the
new producer's ``init_transactions`` completes the transaction one way or the other, and
the group's committed offsets, part of the transaction, tell whether the batch went through.
At-least-once, flush and commit are retried. A
batch not committed is consumed again from its first offsets (:class:`Rewind`; ``streamer
run`` also the batch it consumed since, see :func:`earliest`; exactly-once, every partition
also from the group's committed offset where that is earlier, see
:func:`consume_again_from`) once the broker is back, for
up to ``STREAMER_BROKER_OUTAGE_S``; then the process exits 1 and a restart resumes from the
committed offsets.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple

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
from streamer.decode_pool import DecodePool
from streamer.metrics import Health, ServiceMetrics, serve_http
from streamer.pipeline import Message

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from streamer.config import Config
    from streamer.sinks.kafka import KafkaRecordSink

log = logging.getLogger("streamer")

#: How often the idle loop checks that the broker answers (seconds).
BROKER_PROBE_INTERVAL_S = 5.0
#: Timeout of one blocking Kafka call (seconds). A commit, abort or flush that times out is
#: made again; a ``send_offsets_to_transaction`` that does aborts the transaction (without
#: a timeout, librdkafka 2.16 can block in it for minutes after a broker outage).
KAFKA_CALL_S = 5.0
#: How long, after a commit cut by an outage, to wait for the batch's committed offsets to
#: tell whether it went through (seconds); beyond, it is consumed again.
COMMITTED_CHECK_S = 15.0
#: How long to read back the records of the last transaction confirmed committed, after a
#: failed transaction (seconds); beyond, those not read count as not visible.
VISIBLE_CHECK_S = 15.0
#: Key and headers of the records of a fencing transaction (see
#: :meth:`ConsumerLoop._fence`), which is always aborted.
FENCE_KEY = b"streamer.fence"
FENCE_HEADERS: list[tuple[str, str | bytes | None]] = [("streamer.fence", b"aborted")]
#: A Kafka call blocked for ``broker_outage_s`` and this long fails ``/healthz`` (seconds).
BLOCKED_CALL_MARGIN_S = 60.0
#: How long a failed transaction's commit or abort is tried again on the same producer
#: before the producer is replaced (seconds): after an outage, librdkafka 2.16 can lose the
#: transaction coordinator for good.
SAME_PRODUCER_S = 30.0
#: How long a ``send_offsets_to_transaction`` still blocked past its own timeout is waited
#: for once the broker answers again, before its producer is given up (seconds): librdkafka
#: 2.16 can block in it for good, whatever the timeout, in a producer whose connections a
#: restarting broker closed just after a commit (librdkafka logs that at level info only, so
#: the producer was not replaced first). While the broker is away, the call is waited for:
#: it goes on once the broker is back, and giving its transaction up meanwhile can leave its
#: records open on a partition the restarted broker no longer counts in it.
STUCK_CALL_S = 10.0
#: How long a replaced producer is given to close (seconds).
CLOSE_S = 10.0
#: Pause before a failed Kafka call is made again (seconds).
RETRY_PAUSE_S = 0.5
#: How many times a partition that resumes past where it was sought back to is sought again.
REWIND_CHECKS = 3

#: Errors of a broker that is away or moving, after which a batch is consumed again.
_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
    }
)


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, if any."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def transient(err: KafkaError) -> bool:
    """A broker outage rather than a bad message or configuration (those end the process)."""
    if err.fatal():
        return False
    return err.retriable() or err.txn_requires_abort() or err.code() in _TRANSIENT_CODES


class Rewind(Exception):
    """A batch could not be committed (broker away): consume again from these offsets."""

    def __init__(self, offsets: list[TopicPartition]) -> None:
        super().__init__(offsets)
        self.offsets = offsets


class _Resume(NamedTuple):
    """Where a partition sought back after a failed commit must resume."""

    #: The offset it was sought back to.
    sought: int
    #: The later offset it last resumed at instead (-1: none yet).
    later: int = -1
    #: The seeks made again because of that.
    seeks: int = 0


class _Unsettled(KafkaException):
    """A call still failing with a retriable error after :data:`SAME_PRODUCER_S` (a commit:
    it may yet go through, so it is not aborted), or one blocked past its timeout; a new
    producer settles the transaction, see :meth:`ConsumerLoop._recover`."""


class FatalKafkaError(RuntimeError):
    """An error the process cannot recover from (authentication, fencing, bad topic)."""


def next_offsets(batch: list[Any]) -> list[TopicPartition]:
    """The offsets to commit after a batch of messages: one past each partition's last."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        key = (msg.topic(), msg.partition())
        last[key] = max(last.get(key, -1), msg.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def positions(offsets: list[TopicPartition]) -> str:
    """``topic[partition]@offset, ...``, for logs."""
    return ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in offsets)


def source_of(msg: Any) -> str:
    """Where a consumed message came from: ``topic/partition/offset``."""
    return f"{msg.topic()}/{msg.partition()}/{msg.offset()}"


def as_messages(batch: list[Any]) -> list[Message]:
    """Consumed Kafka messages as the pipeline's input."""
    return [Message(msg.value() or b"", source_of(msg)) for msg in batch]


def dead_letters(rejections: list[Any], batch: list[Any]) -> list[tuple[Any, Any]]:
    """Pair each rejection with its consumed message; a rejection without data (one alert
    of a many-alert container file) dead-letters the whole message's bytes."""
    by_source = {source_of(msg): msg for msg in batch}
    out = []
    for r in rejections:
        msg = by_source[r.source.split("#", 1)[0]]
        out.append((r if r.data else type(r)(r.reason, r.detail, r.source, msg.value() or b""), msg))
    return out


def first_offsets(batch: list[Any]) -> list[TopicPartition]:
    """Each partition's first offset in a batch of messages (where to consume it again)."""
    first: dict[tuple[str, int], int] = {}
    for msg in batch:
        key = (msg.topic(), msg.partition())
        first[key] = min(first.get(key, msg.offset()), msg.offset())
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]


def earliest(*offsets: list[TopicPartition]) -> list[TopicPartition]:
    """Each partition's lowest offset over several lists of positions."""
    low: dict[tuple[str, int], int] = {}
    for tp in (tp for group in offsets for tp in group):
        key = (tp.topic, tp.partition)
        low[key] = min(low.get(key, tp.offset), tp.offset)
    return [TopicPartition(t, p, o) for (t, p), o in low.items()]


def covers(committed: dict[tuple[str, int], int], batch: list[Any]) -> bool:
    """Whether the group's ``committed`` offsets cover every message of ``batch``."""
    return all(committed.get((tp.topic, tp.partition), -1) >= tp.offset for tp in next_offsets(batch))


def consume_again_from(
    batch: list[Any], committed: dict[tuple[str, int], int] | None
) -> list[TopicPartition]:
    """Where to consume again after a failed transaction: each partition of ``batch`` from
    its first offset, and every partition from the group's ``committed`` offset where that
    is earlier (or the batch lacks it).

    A transaction the broker confirmed can still be lost: a single broker stopped just as it
    confirmed a commit came back without the transaction's markers, and the next abort of
    the same producer id then aborted its records; its offsets, in the same transaction,
    were not committed either. The committed offsets, read once the new producer has settled
    the failed transaction, are where the group's output really ends.
    """
    behind = [TopicPartition(t, p, o) for (t, p), o in (committed or {}).items() if o >= 0]
    return earliest(first_offsets(batch), behind)


def records_unread(
    reader: Consumer, written: dict[tuple[str, int], list[int]], timeout_s: float
) -> set[tuple[str, int]]:
    """The partitions of ``written`` (record offsets by topic and partition) whose records
    do not all read back with ``reader``, a ``read_committed`` consumer with
    ``enable.partition.eof``, within ``timeout_s``: one passed over (aborted: a later
    record, or the partition's end, comes first), or not reached by then (the partition
    ends before it: in a transaction still open; its end is read again meanwhile, as it can
    lag just after a broker restart)."""
    left = {key: sorted(set(offsets), reverse=True) for key, offsets in written.items() if offsets}
    reader.assign([TopicPartition(t, p, offsets[-1]) for (t, p), offsets in left.items()])
    passed: set[tuple[str, int]] = set()
    ended: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        msg: Any = reader.poll(0.5)
        key = (msg.topic(), msg.partition()) if msg is not None else None
        if key not in left:
            continue
        err, offset, wanted = msg.error(), msg.offset(), left[key]
        eof = err is not None and err.code() == KafkaError._PARTITION_EOF
        if eof and offset <= wanted[-1]:
            ended[key] = offset
        elif err is not None and not eof:  # the broker not back yet: tried until the timeout
            log.info("reading back the last committed records: %s", err.str())
        elif offset > wanted[-1]:
            log.info("%s[%d]: record %d passed over (aborted)", *key, wanted[-1])
            passed.add(key)
            del left[key]
        elif offset == wanted[-1]:
            wanted.pop()
            if not wanted:
                del left[key]
    for (topic, partition), wanted in left.items():
        end = ended.get((topic, partition))
        log.info(
            "%s[%d]: record %d not read back in %.0f s%s",
            topic,
            partition,
            wanted[-1],
            timeout_s,
            f" (the partition ends at {end})" if end is not None else "",
        )
    return passed | set(left)


def _names(partitions: set[tuple[str, int]]) -> str:
    """``topic[partition], ...``, for logs."""
    return ", ".join(f"{t}[{p}]" for t, p in sorted(partitions))


class _Confirmed(NamedTuple):
    """The last transaction confirmed committed (see :meth:`ConsumerLoop._recover`)."""

    #: The offsets it committed.
    offsets: dict[tuple[str, int], int]
    #: Where its records landed: offsets by output topic and partition.
    written: dict[tuple[str, int], list[int]]

    def done(self, committed: dict[tuple[str, int], int]) -> bool:
        """Whether the group's ``committed`` offsets count it done."""
        return all(committed.get(key, -1) >= offset for key, offset in self.offsets.items())


class ConsumerLoop:
    """Mixin of a consumer-group member that writes what it consumes.

    The class calls :meth:`_init_loop` first, and sets ``_kafka`` once its clients exist.
    """

    _kafka: tuple[Consumer, Producer, KafkaRecordSink[Any]]

    def _init_loop(self, config: Config, metrics: ServiceMetrics | None) -> None:
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.health = Health(max_call_s=config.broker_outage_s + BLOCKED_CALL_MARGIN_S)
        self.stopping = False
        self.http: WSGIServer | None = None
        self._exactly_once = config.delivery == "exactly-once"
        self._fatal: str | None = None
        self._delivery_error: Any = None
        self._assigned: list[TopicPartition] = []
        self._done_partitions: set[tuple[str, int]] = set()
        self._last_probe = 0.0
        #: (wall, CPU) clocks at the first consumed batch and at the last commit.
        self._busy_from: tuple[float, float] | None = None
        self._busy_to: tuple[float, float] | None = None
        self._decode_pool: DecodePool | None = None
        #: Exactly-once, after a rewind: the positions sought back to, committed again with
        #: the next transaction (see :meth:`_rewind`).
        self._rewound: dict[tuple[str, int], int] = {}
        #: The transactional producer lost its connections since it started: it is replaced
        #: before its next transaction (see :meth:`_commit_transaction`).
        self._producer_cut = False
        #: Exactly-once: the last transaction confirmed committed (``None``: not known, or
        #: a failed transaction since), see :meth:`_recover`.
        self._confirmed: _Confirmed | None = None
        #: After a rewind, per partition until its first message (see :meth:`_check_rewound`).
        self._resume_at: dict[tuple[str, int], _Resume] = {}

    def _begin(self, install_signals: bool) -> None:
        """Log the configuration, take SIGTERM/SIGINT (and SIGUSR1: print every thread's
        stack to stderr, for a process that looks stuck), serve ``/metrics`` and the probes."""
        log.info("starting: %r", self.config)
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.http = serve_http(self.metrics, self.health, self.config.metrics_port)

    def _decoder_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {
            "framing": c.framing,
            "schemaless_schema": c.schemaless_schema,
            "registry_url": c.schema_registry_url,
            "max_message_bytes": c.max_message_bytes,
        }

    def _decoder(self) -> AlertDecoder:
        return AlertDecoder(**self._decoder_kwargs())

    def _start_decode_pool(self) -> DecodePool | None:
        """The decoding worker processes (``decode_processes``), or ``None`` for none."""
        n = self.config.decode_processes
        self._decode_pool = DecodePool(n, self._decoder_kwargs()) if n else None
        return self._decode_pool

    def _close_decode_pool(self) -> None:
        if self._decode_pool is not None:
            self._decode_pool.close()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """SIGTERM/SIGINT handler: finish and commit the current batch, then stop."""
        log.info("stop requested: draining the current batch")
        self.stopping = True

    # ------------------------------------------------------------- clients
    def _kafka_common(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap_servers,
            "error_cb": self._on_kafka_error,
            **self.config.kafka,
        }

    def _consumer_config(self) -> dict[str, Any]:
        c = self.config
        return {
            # Longer than a broker restart: a session that outlives an outage keeps its
            # partitions (and, with static membership, avoids being fenced on rejoin).
            "session.timeout.ms": 120_000,
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

    def _reader(self, purpose: str, **settings: Any) -> Consumer:
        """A consumer that reads assigned partitions' committed records to their end (a
        partition-EOF event each), as group ``<group_id>-<purpose>``, never joined and
        nothing committed; ``settings`` add to or override its configuration."""
        return Consumer(
            {
                **self._kafka_common(),
                "group.id": f"{self.config.group_id}-{purpose}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                # A bulk read: fetches that find nothing should answer at once.
                "fetch.wait.max.ms": 10,
                **settings,
            }
        )

    def _new_producer(self) -> Producer:
        conf = {**self._kafka_common(), "enable.idempotence": True, "linger.ms": 5}
        if self._exactly_once:
            conf["transactional.id"] = self.config.transactional_id
            conf["error_cb"] = functools.partial(self._on_kafka_error, transactional=True)
        return Producer(conf)

    def _subscribe(self, consumer: Consumer) -> None:
        c = self.config
        pattern = c.input_pattern
        topics = [pattern if pattern.startswith("^") else f"^{pattern}"] if pattern else c.input_topics
        consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    def _on_kafka_error(self, err: KafkaError, transactional: bool = False) -> None:
        """``error_cb`` of every client: notes an outage, and an error that ends the process
        (authentication, or a fatal one; a transactional producer's fatal errors are raised
        by its calls instead, and the producer replaced, see :meth:`_recover`)."""
        code = err.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.broker_reachable = False
            self._producer_cut |= transactional
        ends = code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)
        if ends or (err.fatal() and not transactional):
            # librdkafka's message names the mechanism, never the password.
            self._fatal = f"Kafka: {err.str()}"
        log.warning("kafka: %s", err.str())

    def _on_delivery_error(self, err: Any) -> None:
        self._delivery_error = err

    def _init_transactions(self, producer: Producer, timeout: float = 30.0) -> None:
        """``init_transactions`` in one-second steps (a timed-out call resumes), so that an
        authentication failure reported meanwhile ends the start-up at once, named, instead
        of a timeout after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                producer.init_transactions(1.0)
                return
            except KafkaException as exc:
                producer.poll(0)  # serves error_cb, which records an authentication failure
                if self._fatal:
                    raise FatalKafkaError(self._fatal) from None
                if not exc.args[0].retriable() or time.monotonic() > deadline:
                    raise

    def _replace_producer(self) -> None:
        """After a failed transaction: a new transactional producer with the same id. Its
        ``init_transactions`` fences the old one and completes a transaction it left open."""
        self._producer_cut = False
        consumer, old, sink = self._kafka
        self._close_producer(old)
        producer = self._new_producer()
        self._kafka = (consumer, producer, sink)
        sink.producer = producer
        deadline = time.monotonic() + self.config.broker_outage_s
        while True:
            try:
                with self.health.kafka_call():
                    self._init_transactions(producer)
                return
            except KafkaException:
                if self._fatal or self.stopping or time.monotonic() > deadline:
                    raise
                self.health.broker_reachable = False
                log.warning("waiting for the broker to start a new transactional producer")

    def _close_producer(self, old: Producer) -> None:
        """Close a producer being replaced, before the new one starts: two producers of one
        transactional id at once could interleave their requests to the coordinator. A
        producer in a fatal state refuses some of these calls; ``close()`` (which aborts an
        open transaction) blocks for good in one that lost its coordinator, so it is given
        :data:`CLOSE_S` in a thread of its own, then left behind."""
        for call in (old.purge, functools.partial(old.flush, 0)):
            try:
                call()
            except KafkaException as exc:
                log.info("closing the old producer: %s", exc)

        def close() -> None:
            try:
                with warnings.catch_warnings(record=True) as said:  # close() warns of a failed abort
                    old.close()
                for warning in said:
                    log.info("closing the old producer: %s", warning.message)
            except KafkaException as exc:
                log.info("closing the old producer: %s", exc)

        closing = threading.Thread(target=close, name="close-producer", daemon=True)
        closing.start()
        with self.health.kafka_call():
            closing.join(CLOSE_S)
        if closing.is_alive():
            log.warning("the old producer did not close within %.0f s: left behind", CLOSE_S)

    # ------------------------------------------------------------- consume
    def _owned_partitions(self) -> set[int] | None:
        """Partitions whose messages may be processed (``None``: any consumed one)."""
        return None

    def _consume(self, consumer: Consumer) -> list[Any]:
        """Up to ``batch_max_messages`` messages; notes partitions at their end (or past
        ``until``), raises :class:`FatalKafkaError` on an authorisation error or one that
        a Kafka client reported meanwhile (authentication)."""
        self.health.beat()
        if self._fatal:
            raise FatalKafkaError(self._fatal)
        c = self.config
        raw = consumer.consume(num_messages=c.batch_max_messages, timeout=c.batch_max_wait_s)
        batch = []
        owned = self._owned_partitions()
        for m in raw:
            err, where = m.error(), (str(m.topic()), int(m.partition() or 0))
            if err is None and owned is not None and where[1] not in owned:
                # Not ours (any more): its state is elsewhere, and so is its commit.
                log.warning("skipping a message of unassigned %s[%s]", *where)
            elif err is None:
                if c.until_time_ms is not None and m.timestamp()[1] > c.until_time_ms:
                    self._done_partitions.add(where)
                    consumer.pause([TopicPartition(*where)])
                    continue
                batch.append(m)
                self._done_partitions.discard(where)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._done_partitions.add(where)
            elif err.fatal() or err.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                raise FatalKafkaError(f"Kafka: {err.str()}")
            else:
                log.warning("consume: %s", err.str())
        return self._check_rewound(consumer, batch) if self._resume_at else batch

    def _check_rewound(self, consumer: Consumer, batch: list[Any]) -> list[Any]:
        """After a rewind: the first message of each sought-back partition must be the one
        sought. One that comes later means the consumer resumed further on (a seek lost to
        the client's own position reset after a broker restart): its messages are left out
        of the batch and the partition is sought back again. A partition that comes back
        with the same later offset has a real gap there (transaction markers, compaction)."""
        first: dict[tuple[str, int], int] = {}
        for m in batch:
            first.setdefault((m.topic(), m.partition()), m.offset())
        skipped = set()
        for key, offset in first.items():
            check = self._resume_at.pop(key, None)
            if check is None:
                continue
            if offset <= check.sought or offset == check.later:  # where it should be, or a real gap
                log.info("%s[%d] resumed at offset %d (sought back to %d)", *key, offset, check.sought)
                continue
            if check.seeks >= REWIND_CHECKS:
                log.error(
                    "%s[%d] keeps resuming past offset %d: going on from %d", *key, check.sought, offset
                )
                continue
            log.warning(
                "%s[%d] resumed at offset %d, not %d where it was sought back to: seeking again",
                *key,
                offset,
                check.sought,
            )
            self._retrying(functools.partial(consumer.seek, TopicPartition(*key, check.sought)))
            self._resume_at[key] = _Resume(check.sought, offset, check.seeks + 1)
            skipped.add(key)
        return [m for m in batch if (m.topic(), m.partition()) not in skipped] if skipped else batch

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

    # -------------------------------------------------------------- commit
    def _commit_batch(self, batch: list[Any], write: Callable[[], None]) -> float:
        """``write`` a batch's output, then commit the batch's offsets with it.

        Exactly-once: ``write`` runs inside a transaction that also carries the offsets.
        At-least-once: the producer is flushed, then the offsets are committed. Returns
        the ``perf_counter`` time at which ``write`` returned.

        Raises
        ------
        Rewind
            The broker is away: nothing of the batch became visible (exactly-once) or its
            offsets are not committed; consume it again from the offsets given.
        FatalKafkaError
            A record the broker refuses for good (too large, not authorised).
        KafkaException
            Any other Kafka error (the transaction is aborted), or a broker still away
            after ``broker_outage_s``.
        """
        if self._exactly_once:
            return self._commit_transaction(batch, write)
        consumer, producer, sink = self._kafka
        try:
            self._delivery_error = None
            sink.begin()
            write()
            written = time.perf_counter()
            offsets = next_offsets(batch)
            self._retrying(lambda: self._flush(producer))
            self._retrying(lambda: consumer.commit(offsets=offsets, asynchronous=False))
            return written
        except KafkaException as exc:
            err = kafka_error(exc)
            failed, self._delivery_error = self._delivery_error, None
            if isinstance(failed, KafkaError) and not transient(failed):
                raise FatalKafkaError(f"Kafka: delivery failed: {failed.str()}") from exc
            if err is None or not transient(err) or self._fatal or self.stopping:
                raise
            self.metrics.failed_commits.labels(outcome="rewound").inc()
            log.warning("batch not committed (%s): consuming it again", err.str())
            raise Rewind(first_offsets(batch)) from exc

    def _commit_transaction(self, batch: list[Any], write: Callable[[], None]) -> float:
        """The exactly-once :meth:`_commit_batch`, following librdkafka's transaction
        protocol: a commit that fails with a retriable error (a timeout: it goes on in the
        background) is called again on the same producer until it is confirmed; a
        transaction that fails otherwise is aborted (see :meth:`_recover`).

        A producer that lost its connections since it started (a broker outage, even between
        transactions) is replaced first: librdkafka 2.16 can block for good, past its
        timeout, in the first ``send_offsets_to_transaction`` of such a producer (it waits
        on the group coordinator after the reconnection); a new producer does not.
        """
        self._kafka[1].poll(0)  # serves error_cb: a connection lost since the last call
        if self._producer_cut:
            log.warning("replacing the transactional producer: it lost its connections (broker outage)")
            self._retrying(self._replace_producer)
        consumer, producer, sink = self._kafka
        written = 0.0
        try:
            producer.begin_transaction()
            self._delivery_error = None
            sink.begin()
            write()
            written = time.perf_counter()
            offsets = self._with_rewound(consumer, next_offsets(batch))
            with self.health.kafka_call():
                self._send_offsets(producer, offsets, consumer.consumer_group_metadata())
            retried = self._commit_retrying(producer)
        except _Unsettled as exc:
            self._recover(producer, batch, exc, abortable=False)
            return written or time.perf_counter()
        except KafkaException as exc:
            self._recover(producer, batch, exc)  # returns only if the batch is committed
            return written or time.perf_counter()
        except BaseException:
            self._aborted(producer, self._retrying)
            raise
        producer.poll(0)  # delivery reports still queued
        records = sink.written()
        done = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self._confirmed = None if records is None else _Confirmed(done, records)
        if retried:
            self.metrics.failed_commits.labels(outcome="retried").inc()
        if self._rewound:
            log.info("committed after the rewind: %s", positions(offsets))
        self._rewound = {}
        return written

    def _send_offsets(self, producer: Producer, offsets: list[TopicPartition], group: Any) -> None:
        """``send_offsets_to_transaction``, in a thread of its own. Past its timeout it is
        waited for while the broker is away, and for :data:`STUCK_CALL_S` once the broker
        answers (the consumer's metadata requests), ``broker_outage_s`` at most in all;
        beyond, :class:`_Unsettled`: the transaction is left to a new producer (see
        :meth:`_recover`), the blocked call behind with the old one."""
        consumer = self._kafka[0]
        started = time.monotonic()
        answered_since: float | None = None
        done = threading.Event()
        failed: list[BaseException] = []

        def send() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, group, KAFKA_CALL_S)
            except BaseException as exc:  # handed to the loop's thread
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, name="send-offsets", daemon=True).start()
        while not done.wait(1.0):
            now = time.monotonic()
            if now - started < KAFKA_CALL_S:
                continue
            try:
                consumer.list_topics(timeout=2)
                answered_since = answered_since or now
            except KafkaException:
                answered_since = None
            stuck = answered_since is not None and now - answered_since >= STUCK_CALL_S
            if stuck or now - started > self.config.broker_outage_s:
                raise _Unsettled(
                    KafkaError(
                        KafkaError._TIMED_OUT,
                        f"send_offsets_to_transaction blocked past its {KAFKA_CALL_S:.0f} s timeout"
                        + (f", {STUCK_CALL_S:.0f} s after the broker answered again" if stuck else ""),
                        retriable=True,
                    )
                )
        if failed:
            raise failed[0]

    def _commit_retrying(self, producer: Producer) -> bool:
        """``commit_transaction`` on the same producer (:meth:`_on_same_producer`); whether it
        had to be made again."""
        return self._on_same_producer(
            lambda: producer.commit_transaction(KAFKA_CALL_S),
            "commit not confirmed yet (%s): committing again",
        )

    def _on_same_producer(self, call: Callable[[], None], waiting: str | None = None) -> bool:
        """``call``, made again every :data:`RETRY_PAUSE_S` while it fails with a retriable
        error (not one that asks for an abort), logging ``waiting`` (``%s``: the error), for
        up to :data:`SAME_PRODUCER_S`; whether it had to be. Beyond, :class:`_Unsettled`."""
        deadline = time.monotonic() + SAME_PRODUCER_S
        retried = False
        while True:
            try:
                with self.health.kafka_call():
                    call()
                return retried
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or not err.retriable() or err.fatal() or err.txn_requires_abort():
                    raise
                if self._fatal or time.monotonic() > deadline:
                    raise _Unsettled(*exc.args) from exc
                retried = True
                self.health.broker_reachable = False
                if waiting:
                    log.warning(waiting, err.str())
                time.sleep(RETRY_PAUSE_S)  # a call that fails at once must not spin

    def _recover(
        self, producer: Producer, batch: list[Any], exc: KafkaException, abortable: bool = True
    ) -> None:
        """After a transaction failed: return if its batch is committed after all, else
        raise :class:`Rewind` (consume it again) or the error.

        A transient error aborts the transaction; then the producer is replaced all the
        same, the old one closed first (see :meth:`_commit_transaction`: librdkafka can
        block for good in the next transaction of a producer that lived through an outage).
        A fatal error, an abort that fails or does not complete within
        :data:`SAME_PRODUCER_S` (librdkafka ends the abort of a transaction whose partitions
        the broker never learnt of with a fatal ``INVALID_TXN_STATE``, and can lose the
        coordinator for good), or a commit that is not ``abortable`` (still unconfirmed),
        leaves the transaction to the new producer's ``init_transactions``, which fences the
        old one and completes it one way or the other; the group's committed offsets,
        committed with it, then tell which.

        A single broker stopped just as it confirmed a commit, or during a transaction, can
        come back without the transaction's markers on some partitions, or with its
        transaction coordinator unaware of a transaction in progress: the records of the
        last confirmed transaction and of the failed one can then stay open, and the
        offsets committed with either pending. Where the last confirmed transaction's
        records went is read back first (:func:`records_unread`); that decides how a
        pending offset commit is ended (:meth:`_pending_offsets_settled`) and where a
        batch consumed again has open records of its own ended first (:meth:`_fence`).
        """
        consumer, _, sink = self._kafka
        err = kafka_error(exc)
        reason = err.str() if err is not None else str(exc)
        failed, self._delivery_error = self._delivery_error, None
        confirmed, self._confirmed = self._confirmed, None
        if abortable:
            if isinstance(failed, KafkaError) and not transient(failed):
                # Consuming the batch again would fail the same way, for ever.
                self._aborted(producer, self._retrying)
                raise FatalKafkaError(f"Kafka: delivery failed: {failed.str()}") from exc
            if err is None or self._fatal or self.stopping or not (err.fatal() or transient(err)):
                self._aborted(producer, self._retrying)
                raise exc
        aborted = abortable and err is not None and not err.fatal() and self._aborted(producer)
        log.warning("replacing the transactional producer (%s)", reason)
        self._replace_producer()
        self._delivery_error = None  # the old producer's purged messages
        unread = None if confirmed is None else self._unread(confirmed.written)
        committed = self._settled_committed(consumer, batch)
        if committed is None:
            committed = self._pending_offsets_settled(consumer, batch, unread)
        if not aborted and committed is not None and covers(committed, batch):
            log.warning("batch committed after all (%s): not consuming it again", reason)
            self.metrics.failed_commits.labels(outcome="committed").inc()
            self._rewound = {}  # committed with it
            return
        if confirmed is not None and unread is not None:
            # Where the last confirmed transaction may have records still open while the
            # offsets count it done, the next commit must make them visible: not fenced.
            done = committed is None or confirmed.done(committed)
            kept = unread if done else set()
            if not aborted or unread - kept:  # else nothing of this producer id is open
                self._fence(sink.topics() | {t for t, _ in confirmed.written}, kept)
        self.metrics.failed_commits.labels(outcome="rewound").inc()
        log.warning("batch not committed (%s): consuming it again", reason)
        if committed is not None:
            committed = self._or_start_offsets(consumer, committed)
        raise Rewind(consume_again_from(batch, committed)) from exc

    def _aborted(
        self, producer: Producer, retrying: Callable[[Callable[[], None]], object] | None = None
    ) -> bool:
        """Abort the open transaction, the call made again while it fails with a retriable
        error by ``retrying`` (by default :meth:`_on_same_producer`, up to
        :data:`SAME_PRODUCER_S`; :meth:`_retrying` waits out a broker outage); whether it
        was aborted."""
        try:
            (retrying or self._on_same_producer)(lambda: producer.abort_transaction(KAFKA_CALL_S))
            return True
        except KafkaException as exc:
            log.warning("aborting the transaction: %s", exc)
            return False

    def _settled_committed(self, consumer: Consumer, batch: list[Any]) -> dict[tuple[str, int], int] | None:
        """The group's committed offsets of the assigned partitions and of ``batch``'s, after
        a failed transaction (see :func:`covers`, :func:`consume_again_from`).

        ``None`` when they stay unstable for :data:`COMMITTED_CHECK_S`: a pending offset
        commit of this producer id holds them (see :meth:`_pending_offsets_settled`, which
        ends it and reads them again; if that fails too, the batch is consumed again from
        its first offsets).
        """
        wanted = {(tp.topic, tp.partition) for tp in [*consumer.assignment(), *next_offsets(batch)]}
        try:
            return self._committed_offsets(
                consumer, [TopicPartition(t, p) for t, p in sorted(wanted)], wait_s=COMMITTED_CHECK_S
            )
        except KafkaException as exc:
            log.warning("committed offsets unknown (%s)", exc)
            return None

    def _pending_offsets_settled(
        self, consumer: Consumer, batch: list[Any], unread: set[tuple[str, int]] | None
    ) -> dict[tuple[str, int], int] | None:
        """The committed offsets (:meth:`_settled_committed`), after ending an offset commit
        of this producer id that no marker closed, which holds them unstable.

        After the new producer settled the failed transaction, such a pending offset commit
        is that of the last transaction the broker confirmed, whose markers it then lost
        (seen with a single broker stopped just as it confirmed a commit), or one of the
        failed transaction (late, see :meth:`_rewind`, or of a transaction the restarted
        broker forgot). The broker lost either every marker of the confirmed transaction
        (the new producer's abort then aborted its records with the failed one's) or only
        the one on the offsets partition (its records are visible). A transaction that
        carries the failed batch's first offsets ends the pending commit: committed if
        every record of the last confirmed transaction read back (``unread`` empty: its
        offsets become committed, the failed batch's are the first offsets), aborted
        otherwise (the committed offsets go back to before it, and it is consumed again:
        were some of its records visible after all, they are written twice, never lost).
        ``None`` if that fails (the producer is then replaced before its next transaction)
        or the offsets stay unknown.
        """
        producer = self._kafka[1]
        commit = unread == set()
        log.warning(
            "committed offsets unknown: ending a pending offset commit no marker closed with %s",
            "a commit (the last confirmed transaction's records all read back)"
            if commit
            else f"an abort (records of the last confirmed transaction not read back: {_names(unread)})"
            if unread is not None
            else "an abort (no transaction confirmed since the last failed one)",
        )
        try:
            producer.begin_transaction()
            with self.health.kafka_call():
                self._send_offsets(producer, first_offsets(batch), consumer.consumer_group_metadata())
            if commit:
                self._commit_retrying(producer)
        except KafkaException as exc:
            log.warning("ending the pending offset commit: %s", exc)
            self._producer_cut = True
            return None
        if not commit and not self._aborted(producer):
            self._producer_cut = True
            return None
        return self._settled_committed(consumer, batch)

    def _unread(self, written: dict[tuple[str, int], list[int]]) -> set[tuple[str, int]]:
        """The partitions where records at ``written`` do not all read back committed (see
        :func:`records_unread`), within :data:`VISIBLE_CHECK_S`."""
        reader = self._reader("check", **{"auto.offset.reset": "error"})
        try:
            with self.health.kafka_call():
                return records_unread(reader, written, VISIBLE_CHECK_S)
        finally:
            reader.close()

    def _fence(self, topics: set[str], kept: set[tuple[str, int]]) -> None:
        """Abort a transaction that writes one record to every partition of ``topics`` (those
        the failed and the last confirmed transactions wrote to) but ``kept``, before the
        batch is consumed again.

        A restarted broker can come back with its transaction coordinator unaware of the
        transaction in progress (the old producer's abort then fails with
        ``INVALID_TXN_STATE``, and the new producer's ``init_transactions`` writes no
        marker), or without the markers of the last confirmed transaction on some
        partitions, where the abort of the failed one did not reach either: their records
        stay open, and the next commit of this producer id on their partition would make
        them visible, though their batches are written again: twice. The ABORT markers of
        this transaction, one per partition, end them there. ``kept``: partitions where
        records of the last confirmed transaction may still be open while the committed
        offsets count it done, which the next commit must make visible.
        """
        consumer, producer, _ = self._kafka
        try:
            with self.health.kafka_call():
                metadata = consumer.list_topics(timeout=KAFKA_CALL_S)
            partitions = [
                (topic, partition)
                for topic in sorted(topics)
                if topic in metadata.topics
                for partition in sorted(metadata.topics[topic].partitions)
                if (topic, partition) not in kept
            ]
            if not partitions:
                return
            producer.begin_transaction()
            for topic, partition in partitions:
                producer.produce(
                    topic=topic, partition=partition, key=FENCE_KEY, value=b"", headers=FENCE_HEADERS
                )
            with self.health.kafka_call():
                left = producer.flush(KAFKA_CALL_S)
        except KafkaException as exc:
            log.warning("ending records the failed or last confirmed transaction left open: %s", exc)
            self._producer_cut = True
            return
        if not self._aborted(producer):
            self._producer_cut = True
            return
        log.warning(
            "aborted a transaction over %d partitions (%d written) to end records the failed or "
            "the last confirmed transaction may have left open%s",
            len(partitions),
            len(partitions) - left,
            f"; not over {_names(kept)}, where the last committed one's may be open" if kept else "",
        )

    def _or_start_offsets(
        self, consumer: Consumer, committed: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        """``committed``, each partition without a committed offset at the one the group
        started it from: the log's start offset, with ``STREAMER_START_FROM`` committed or
        beginning (with end or time such a partition is left out)."""
        if self.config.start_from not in ("committed", "beginning"):
            return committed
        found = dict(committed)
        for (topic, partition), offset in committed.items():
            if offset < 0:
                try:
                    low, _ = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=KAFKA_CALL_S, cached=False
                    )
                except KafkaException as exc:
                    log.warning("start offset of %s[%d] unknown (%s)", topic, partition, exc)
                    continue
                found[(topic, partition)] = low
        return found

    def _committed_offsets(
        self, consumer: Consumer, partitions: list[TopicPartition], wait_s: float | None = None
    ) -> dict[tuple[str, int], int]:
        """The group's committed offsets (negative: none), once stable: while a transaction
        that carries offsets of these partitions is open (a replica killed mid-batch), the
        broker withholds them until it is committed or aborted. Waits out a broker outage
        and unstable offsets for up to ``wait_s`` (default ``broker_outage_s``)."""
        query = [TopicPartition(p.topic, p.partition) for p in partitions]
        deadline = time.monotonic() + (self.config.broker_outage_s if wait_s is None else wait_s)
        while True:
            try:
                found = consumer.committed(query, timeout=KAFKA_CALL_S)
                return {(tp.topic, tp.partition): tp.offset for tp in found}
            except KafkaException as exc:
                err = kafka_error(exc)
                waiting = err is not None and (err.code() == KafkaError._TIMED_OUT or transient(err))
                if not waiting or self._fatal or time.monotonic() > deadline:
                    raise
                self.health.beat()
                log.info("waiting for stable committed offsets (an open transaction)")

    def _retrying(self, call: Callable[[], object]) -> None:
        """Call; while it fails with a retriable Kafka error (the broker is away), call again.

        Keeps ``/healthz`` alive and ``/readyz`` not ready meanwhile; gives up after
        ``broker_outage_s`` (the error then goes up: the batch is consumed again).
        """
        deadline = time.monotonic() + self.config.broker_outage_s
        while True:
            try:
                with self.health.kafka_call():
                    call()
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or not err.retriable() or err.fatal() or time.monotonic() > deadline:
                    raise
                if self._fatal or self.stopping:
                    raise
                self.health.broker_reachable = False
                self.health.beat()
                log.warning("retrying: %s", err.str())
                time.sleep(1.0)

    def _flush(self, producer: Producer) -> None:
        left = producer.flush(KAFKA_CALL_S)
        if self._delivery_error is not None:
            err, self._delivery_error = self._delivery_error, None
            raise KafkaException(
                err if isinstance(err, KafkaError) else KafkaError(KafkaError._FAIL, str(err))
            )
        if left:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"{left} messages not yet delivered", retriable=True)
            )

    def _rewind(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Seek the assigned partitions among ``offsets`` back, to consume them again.

        Exactly-once, the positions are also committed with the next transaction, each
        partition's unless that transaction's batch moves it further. An offset commit
        that the fenced producer sent before the outage can reach the broker after its
        transaction was aborted; it then stays pending, and the next commit of this
        transactional id (the same producer id) would make it the group's committed offset
        with its own, though its records were aborted: the alerts of a partition that the
        next batch does not hold would be skipped. Committing every rewound position in
        that transaction overwrites such an offset with the true one.
        """
        assigned = {(p.topic, p.partition) for p in consumer.assignment()}
        sought = [tp for tp in offsets if (tp.topic, tp.partition) in assigned]
        log.warning("consuming again from %s", positions(sought))
        for tp in sought:
            key = (tp.topic, tp.partition)
            self._retrying(functools.partial(consumer.seek, tp))
            self._resume_at[key] = _Resume(tp.offset)
            if self._exactly_once:
                self._rewound[key] = min(self._rewound.get(key, tp.offset), tp.offset)

    def _forget_rewound(self, partitions: list[TopicPartition]) -> None:
        """Revoked partitions: their positions are no longer this member's to commit."""
        for tp in partitions:
            self._rewound.pop((tp.topic, tp.partition), None)
            self._resume_at.pop((tp.topic, tp.partition), None)

    def _with_rewound(self, consumer: Consumer, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """A batch's offsets to commit, and the positions of the last rewind (see
        :meth:`_rewind`) of the still assigned partitions the batch does not hold."""
        if not self._rewound:
            return offsets
        assigned = {(p.topic, p.partition) for p in consumer.assignment()}
        moved = {(tp.topic, tp.partition) for tp in offsets}
        return offsets + [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self._rewound.items()
            if (topic, partition) in assigned and (topic, partition) not in moved
        ]

    # ------------------------------------------------------------- summary
    def _mark_batch(self) -> None:
        """Note the clocks at the first consumed batch (later calls change nothing)."""
        if self._busy_from is None:
            self._busy_from = (time.perf_counter(), self._cpu_clock())

    def _mark_commit(self) -> None:
        """Note the clocks after a commit."""
        self._busy_to = (time.perf_counter(), self._cpu_clock())

    def _cpu_clock(self) -> float:
        """CPU seconds of this process's threads and of its decoding workers."""
        pool = self._decode_pool
        return time.process_time() + (pool.worker_cpu_seconds if pool is not None else 0.0)

    def _busy_seconds(self) -> dict[str, float]:
        """Wall and CPU seconds (all threads, decoding workers too) from the first consumed
        batch to the last commit, and the decoding workers' share of that CPU time."""
        pool = self._decode_pool
        workers = {"decode_worker_cpu_seconds": round(pool.worker_cpu_seconds if pool else 0.0, 3)}
        if self._busy_from is None or self._busy_to is None:
            return {"busy_seconds": 0.0, "cpu_seconds": 0.0, **workers}
        (w0, c0), (w1, c1) = self._busy_from, self._busy_to
        return {"busy_seconds": round(w1 - w0, 3), "cpu_seconds": round(c1 - c0, 3), **workers}

    # ---------------------------------------------------------------- idle
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
