"""One history store per input partition, restored from the changelog when assigned.

Replicas of ``streamer run`` in one consumer group split the input partitions between
them, and an input keyed by object id (``streamer repartition``) holds all alerts of an
object in one partition. So an object's history belongs to its partition: this module
keeps a store per assigned partition, and when a partition arrives (a rebalance, a
replica taking over from a dead one) brings its store up to date from the partition's
changelog (:mod:`streamer.history.changelog`) before any of its alerts is processed.

Stores are SQLite files in a directory (``<input topic>-<partition>.sqlite``), or held in
memory. A store whose partition is revoked stays open until the next assignment: taken
back at once (an eager rebalance revokes everything it then re-assigns), its restore reads
only what others wrote meanwhile; otherwise it is closed, its file kept as a cache that a
later assignment restores incrementally from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from streamer.history.changelog import Checkpoint, RestoreStats, restore
from streamer.history.memory import MemoryHistoryStore
from streamer.history.sqlite import SQLiteHistoryStore
from streamer.history.store import DEFAULT_MAX_POINTS_PER_OBJECT, HistoryStore

log = logging.getLogger("streamer.history")

#: Most seconds between two saves of a store's checkpoint on disk while it is active. A
#: checkpoint is a hint: a stale one only makes the next restore read more.
CHECKPOINT_INTERVAL_S = 10.0


class PartitionedHistory:
    """The history stores of the assigned partitions of one input topic.

    Parameters
    ----------
    input_topic : str
        The input topic (one: two topics would share changelog partitions).
    changelog_topic : str
        Its changelog topic, with as many partitions.
    directory : path or None
        Where the SQLite stores live (created if missing); ``None`` keeps them in memory.
    max_points_per_object : int or None
        See :class:`~streamer.history.store.HistoryStore`.
    """

    def __init__(
        self,
        input_topic: str,
        changelog_topic: str,
        directory: str | Path | None = None,
        *,
        max_points_per_object: int | None = DEFAULT_MAX_POINTS_PER_OBJECT,
    ) -> None:
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._max_points = max_points_per_object
        self._active: dict[int, HistoryStore] = {}
        self._idle: dict[int, HistoryStore] = {}
        self._checkpoints: dict[int, Checkpoint] = {}
        self._saved_at: dict[int, float] = {}

    # ------------------------------------------------------------ lifecycle
    def assign(
        self,
        partitions: Iterable[int],
        consumer: Any,
        committed: dict[int, int],
        *,
        timeout_s: float,
        settle_s: float,
        on_progress: Callable[[], None] = lambda: None,
    ) -> dict[int, RestoreStats]:
        """Activate the stores of newly assigned partitions, restored from the changelog.

        Parameters
        ----------
        partitions : iterable of int
            The partitions now assigned (stores already active are left as they are).
        consumer : confluent_kafka.Consumer
            For :func:`~streamer.history.changelog.restore`.
        committed : dict of int to int
            The committed input offset of each partition (negative: none).
        timeout_s, settle_s : float
        on_progress : callable, optional
            See :func:`~streamer.history.changelog.restore`.
        """
        wanted = [p for p in partitions if p not in self._active]
        for p in list(self._idle):
            if p not in wanted:
                self._close(p, self._idle.pop(p))
        stores = {p: self._idle.pop(p) if p in self._idle else self._open(p) for p in wanted}
        try:
            stats = restore(
                consumer,
                self.changelog_topic,
                {p: (store, self._checkpoint(p, store)) for p, store in stores.items()},
                committed,
                timeout_s=timeout_s,
                settle_s=settle_s,
                on_progress=on_progress,
            )
        except BaseException:
            self._idle.update(stores)
            raise
        for p, store in stores.items():
            self._checkpoints[p] = stats[p].checkpoint
            self._save_checkpoint(p, store)
            self._active[p] = store
        return stats

    def revoke(self, partitions: Iterable[int]) -> None:
        """Deactivate the stores of revoked (or lost) partitions, keeping them until the next
        :meth:`assign`."""
        for p in partitions:
            store = self._active.pop(p, None)
            if store is not None:
                self._save_checkpoint(p, store)
                self._idle[p] = store

    def close(self) -> None:
        """Save every checkpoint and close every store."""
        for p, store in [*self._active.items(), *self._idle.items()]:
            self._close(p, store)
        self._active.clear()
        self._idle.clear()

    # ---------------------------------------------------------------- use
    def store(self, partition: int) -> HistoryStore:
        """The store of an assigned partition.

        Raises
        ------
        KeyError
            If the partition is not assigned (its store is not restored).
        """
        try:
            return self._active[partition]
        except KeyError:
            raise KeyError(f"{self.input_topic}[{partition}] is not assigned") from None

    def committed(self, partition: int, changelog_offset: int | None, input_offset: int) -> None:
        """Record a committed transaction: the store now reflects the changelog before
        ``changelog_offset`` (``None``: unknown) and the input before ``input_offset``."""
        store = self._active.get(partition)
        if store is None:
            return
        previous = self._checkpoints.get(partition, Checkpoint())
        self._checkpoints[partition] = Checkpoint(
            changelog_offset if changelog_offset is not None else previous.changelog_offset,
            max(input_offset, previous.input_offset or input_offset),
        )
        if time.monotonic() - self._saved_at.get(partition, 0.0) > CHECKPOINT_INTERVAL_S:
            self._save_checkpoint(partition, store)

    @property
    def partitions(self) -> list[int]:
        """The assigned partitions."""
        return sorted(self._active)

    def object_count(self) -> int:
        """Objects in the stores of the assigned partitions."""
        return sum(s.object_count() for s in self._active.values())

    def point_count(self) -> int:
        """Rows in the stores of the assigned partitions."""
        return sum(s.point_count() for s in self._active.values())

    def size_bytes(self) -> int:
        """Bytes of the stores of the assigned partitions."""
        return sum(s.size_bytes() for s in self._active.values())

    # ------------------------------------------------------------ helpers
    def _open(self, partition: int) -> HistoryStore:
        if self.directory is None:
            return MemoryHistoryStore(max_points_per_object=self._max_points)
        path = self.directory / f"{self.input_topic}-{partition}.sqlite"
        return SQLiteHistoryStore(path, max_points_per_object=self._max_points)

    def _names(self, partition: int) -> tuple[str, str]:
        return (
            f"changelog:{self.changelog_topic}:{partition}",
            f"input:{self.input_topic}:{partition}",
        )

    def _checkpoint(self, partition: int, store: HistoryStore) -> Checkpoint:
        if partition in self._checkpoints:  # newer than the saved one
            return self._checkpoints[partition]
        changelog, input_ = self._names(partition)
        return Checkpoint(store.checkpoint(changelog), store.checkpoint(input_))

    def _save_checkpoint(self, partition: int, store: HistoryStore) -> None:
        checkpoint = self._checkpoints.get(partition)
        if checkpoint is None:
            return
        changelog, input_ = self._names(partition)
        if checkpoint.changelog_offset is not None:
            store.set_checkpoint(changelog, checkpoint.changelog_offset)
        if checkpoint.input_offset is not None:
            store.set_checkpoint(input_, checkpoint.input_offset)
        self._saved_at[partition] = time.monotonic()

    def _close(self, partition: int, store: HistoryStore) -> None:
        self._save_checkpoint(partition, store)
        self._checkpoints.pop(partition, None)
        self._saved_at.pop(partition, None)
        store.close()
