"""The history changelog: each object's stored light curve on a compacted Kafka topic.

With ``STREAMER_HISTORY_CHANGELOG_TOPIC`` set, ``streamer run`` keeps one history store per
input partition (:class:`~streamer.history.partitioned.PartitionedHistory`). For every
micro-batch, in the batch's Kafka transaction, it writes to the changelog partition of the
same number:

* for each object the batch's alerts touched, the object's whole stored light curve
  (``schemas/history.avsc``, every row with its ``known_at``, upper limits included),
  keyed by object id; touched, not only changed, so that a batch processed again after
  an aborted transaction writes its objects again even though its merge changes nothing;
* one *position* record, key :data:`POSITION_KEY`: the input offset the partition's history
  reflects after the batch (the offset committed in the same transaction).

Compaction keeps the latest record of each key, so reading a partition from its start
rebuilds the history of its objects; a store remembers how far it has applied the
changelog (a checkpoint), so restoring it again reads only what came after. The position
record lets a restore check that it saw every committed batch: a transaction whose offsets
are committed has its changelog records committed too, though their markers may become
visible a moment later.

Values use Avro single-object encoding (``0xC3 0x01``, the schema's CRC-64-AVRO
fingerprint, Avro binary written by fastavro), as the photometry records do.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.photometry_codec import (
    HEADER_SIZE,
    points_from_columns,
    points_to_columns,
    single_object_header,
)
from streamer.alerts.schemas import load_schema_file
from streamer.history.store import HistoryStore

log = logging.getLogger("streamer.history")

#: The published schema of changelog values, in the repository's top-level ``schemas/``.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "history.avsc"
#: Kafka ``content-type`` header of light-curve values.
CONTENT_TYPE = "application/vnd.apache.avro+binary; schema=org.streamer.v1.HistoryRecord"
#: Key of the position records (object ids never start with a NUL byte).
POSITION_KEY = b"\x00streamer.position"
#: Kafka ``content-type`` header of position records.
POSITION_CONTENT_TYPE = "application/json"
#: Objects decoded and imported into a store per transaction while restoring.
RESTORE_CHUNK_OBJECTS = 2000
#: Errors reading the changelog that waiting does not cure.
_REFUSALS = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    }
)


class ChangelogError(RuntimeError):
    """A changelog that cannot be read (unreadable value, or the broker away for too long)."""


@cache
def history_schema() -> dict[str, Any]:
    """Parsed Avro schema of changelog values (``schemas/history.avsc``)."""
    return load_schema_file(SCHEMA_PATH)


@cache
def header() -> bytes:
    """The 10 bytes every light-curve value starts with: magic, then the schema's fingerprint."""
    return single_object_header(history_schema())


def encode_curve(object_id: str, points: np.ndarray) -> bytes:
    """The changelog value of one object's stored rows (:data:`~streamer.photometry.POINT_DTYPE`)."""
    buffer = io.BytesIO()
    buffer.write(header())
    fastavro.schemaless_writer(
        buffer, history_schema(), {"object_id": object_id, "points": points_to_columns(points)}
    )
    return buffer.getvalue()


def decode_curve(value: bytes) -> tuple[str, np.ndarray]:
    """The object id and stored rows of a changelog value, floats bit for bit.

    Raises
    ------
    ValueError
        If the value is not a light curve of ``schemas/history.avsc``.
    """
    if value[:HEADER_SIZE] != header():
        raise ValueError("not a history record (single-object header of schemas/history.avsc expected)")
    record = fastavro.schemaless_reader(io.BytesIO(value[HEADER_SIZE:]), history_schema(), None)
    if not isinstance(record, dict):
        raise ValueError("not a history record")
    try:
        return record["object_id"], points_from_columns(record["points"])
    except RejectedAlert as exc:
        raise ValueError(f"history record of {record['object_id']}: {exc.detail}") from None


def encode_position(topic: str, partition: int, next_offset: int) -> bytes:
    """A position record's value: the next input offset the partition's history reflects."""
    return json.dumps({"topic": topic, "partition": partition, "next_offset": next_offset}).encode()


def decode_position(value: bytes) -> int:
    """The next input offset of a position record."""
    return int(json.loads(value)["next_offset"])


@dataclass
class HistoryUpdate:
    """What one micro-batch writes to one changelog partition.

    Attributes
    ----------
    partition : int
        The input partition, and so the changelog partition.
    curves : list of (str, bytes)
        Object id and encoded stored light curve (:func:`encode_curve`) of every object the
        batch's alerts touched.
    next_offset : int
        The input offset after the batch: what the transaction commits for the partition.
    """

    partition: int
    curves: list[tuple[str, bytes]]
    next_offset: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a store reflects its changelog partition and its input partition.

    Attributes
    ----------
    changelog_offset : int or None
        The next changelog offset to apply (``None``: read from the beginning).
    input_offset : int or None
        The input offset up to which the store holds every alert (``None``: unknown).
    """

    changelog_offset: int | None = None
    input_offset: int | None = None


@dataclass
class RestoreStats:
    """What restoring one partition's store read, and where the next restore starts."""

    partition: int
    checkpoint: Checkpoint
    records: int = 0
    objects: int = 0
    seconds: float = 0.0


@dataclass
class _Restoring:
    """A partition being restored: what it has read and not yet applied."""

    topic: str
    store: HistoryStore
    offset: int
    input_offset: int | None
    stats: RestoreStats
    # Latest value per key (None: a tombstone), and the keys a tombstone deleted first.
    values: dict[bytes, bytes | None] = field(default_factory=dict)
    deleted: set[bytes] = field(default_factory=set)

    def read(self, msg: Any) -> None:
        key, value = msg.key(), msg.value()
        self.offset = msg.offset() + 1
        self.stats.records += 1
        if key == POSITION_KEY:
            if value is not None:
                position = decode_position(value)
                self.input_offset = max(position, self.input_offset or position)
        elif key is not None:  # compacted topics refuse keyless records anyway
            if value is None:
                self.deleted.add(key)
            self.values[key] = value
            if len(self.values) >= RESTORE_CHUNK_OBJECTS:
                self.apply()

    def apply(self) -> None:
        if self.deleted:
            self.store.delete_objects(key.decode() for key in self.deleted)
        curves = {}
        for key, value in self.values.items():
            if value is None:
                continue
            try:
                object_id, points = decode_curve(value)
            except ValueError as exc:
                raise ChangelogError(f"{self.topic}[{self.stats.partition}] key {key!r}: {exc}") from None
            curves[object_id] = points
        if curves:
            self.store.import_objects(curves)
        self.stats.objects += len(curves)
        self.values.clear()
        self.deleted.clear()


def restore(
    consumer: Any,
    topic: str,
    stores: Mapping[int, tuple[HistoryStore, Checkpoint]],
    committed: Mapping[int, int],
    *,
    timeout_s: float,
    settle_s: float,
    clock: Callable[[], float] = time.monotonic,
    on_progress: Callable[[], None] = lambda: None,
) -> dict[int, RestoreStats]:
    """Apply changelog partitions to their stores, from their checkpoints to the end.

    The end is the partition's last stable offset (``consumer`` reads ``read_committed``):
    records of open transactions are left out. Each key's latest value is imported
    (merged) into the store, :data:`RESTORE_CHUNK_OBJECTS` objects per store transaction;
    a tombstone deletes the object.

    Parameters
    ----------
    consumer : confluent_kafka.Consumer
        A consumer that joins no group (``assign`` only), ``read_committed``, with
        ``enable.partition.eof``; it is left unassigned.
    topic : str
        The changelog topic.
    stores : mapping of int to (HistoryStore, Checkpoint)
        Per partition, the store and how far it reflects the changelog already.
    committed : mapping of int to int
        Per partition, the committed input offset (negative: none). A partition whose
        changelog holds no position at or past it is read again, for up to ``settle_s``
        seconds (a committed transaction's markers can trail its offsets), then restored
        as it is with a warning (e.g. alerts consumed before the changelog was enabled).
    timeout_s : float
        Give up (:class:`ChangelogError`) when nothing is read for that long (broker away);
        the time a restore takes is otherwise bounded by the partition's size (compacted,
        about one record per object).
    on_progress : callable, optional
        Called after each record read and each partition end reached (the service's
        liveness).

    Returns
    -------
    dict of int to RestoreStats
        With each store's new checkpoint.
    """
    started = clock()
    partitions = {
        p: _Restoring(
            topic,
            store,
            OFFSET_BEGINNING if start.changelog_offset is None else start.changelog_offset,
            start.input_offset,
            RestoreStats(p, start),
        )
        for p, (store, start) in stores.items()
    }
    todo = set(partitions)
    settle_until: float | None = None
    while todo:
        reading = {p for p in todo if _has_records(consumer, TopicPartition(topic, p), partitions[p].offset)}
        assigned = bool(reading)
        if assigned:
            consumer.assign([TopicPartition(topic, p, partitions[p].offset) for p in sorted(reading)])
        try:
            progress = clock()
            while reading:
                if clock() - progress > timeout_s:
                    raise ChangelogError(
                        f"restoring {topic} partitions {sorted(reading)}: nothing read for {timeout_s:.0f} s"
                    )
                # A short wait: consume() waits its whole timeout unless the batch fills up.
                for msg in consumer.consume(1000, 0.1):
                    err, p = msg.error(), msg.partition()
                    if err is None:
                        partitions[p].read(msg)
                        progress = clock()
                        on_progress()
                    elif err.code() == KafkaError._PARTITION_EOF:
                        reading.discard(p)
                        progress = clock()
                        on_progress()
                    elif err.fatal() or err.code() in _REFUSALS:
                        raise ChangelogError(f"reading {topic}[{p}]: {err.str()}")
                    else:  # the broker away or moving: the timeout bounds the wait
                        log.warning("restoring %s[%s]: %s", topic, p, err.str())
        finally:
            if assigned:
                consumer.unassign()
        lagging = set()
        for p in todo:
            entry = partitions[p]
            entry.apply()
            if committed.get(p, -1) >= 0 and (entry.input_offset or -1) < committed[p]:
                lagging.add(p)
        settle_until = settle_until or clock() + settle_s
        if lagging and clock() < settle_until:
            time.sleep(0.2)
            todo = lagging
            continue
        for p in sorted(lagging):
            log.warning(
                "history changelog %s[%s] reflects input up to offset %s but offset %s is committed: "
                "alerts committed without the changelog are missing from the restored history",
                topic,
                p,
                partitions[p].input_offset,
                committed[p],
            )
        todo = set()
    seconds = clock() - started
    for entry in partitions.values():
        entry.stats.seconds = seconds
        entry.stats.checkpoint = Checkpoint(
            entry.offset if entry.offset >= 0 else entry.stats.checkpoint.changelog_offset,
            entry.input_offset,
        )
    return {p: entry.stats for p, entry in partitions.items()}


def _has_records(consumer: Any, partition: Any, offset: int) -> bool:
    """Whether the partition holds committed records at or after ``offset`` (a negative
    offset: the beginning). Reading one that does not would wait for a fetch to find out."""
    try:
        low, high = consumer.get_watermark_offsets(partition, timeout=5.0)
    except KafkaException:
        return True  # read it: the end of the partition says
    # A checkpoint past the last stable offset is this store's own writes beyond another's
    # open transaction: nothing to read before that transaction ends.
    return bool(high > max(low, offset))
