"""A history store in process memory: for tests and short replays."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from streamer.history.store import DEFAULT_MAX_POINTS_PER_OBJECT, HistoryStore, empty_light_curve


class MemoryHistoryStore(HistoryStore):
    """Light curves kept in a dict of object id to numpy array; lost on exit.

    Same merge and read behaviour as :class:`~streamer.history.sqlite.SQLiteHistoryStore`.
    A failed merge is undone, so a batch is all-or-nothing here too.

    Parameters
    ----------
    max_points_per_object : int or None
        See :class:`~streamer.history.store.HistoryStore`.
    """

    def __init__(self, *, max_points_per_object: int | None = DEFAULT_MAX_POINTS_PER_OBJECT) -> None:
        super().__init__(max_points_per_object=max_points_per_object)
        self._curves: dict[str, np.ndarray] = {}
        # Previous curve (None: absent) of each object written in the open transaction.
        self._undo: dict[str, np.ndarray | None] | None = None
        self._checkpoints: dict[str, int] = {}

    def delete_objects(self, object_ids: Iterable[str]) -> int:
        return sum(self._curves.pop(oid, None) is not None for oid in set(object_ids))

    def iter_object_ids(self) -> Iterator[str]:
        # A snapshot, so callers may delete objects while iterating.
        return iter(list(self._curves))

    def checkpoint(self, name: str) -> int | None:
        return self._checkpoints.get(name)

    def set_checkpoint(self, name: str, position: int) -> None:
        self._checkpoints[name] = int(position)

    def object_count(self) -> int:
        return len(self._curves)

    def point_count(self) -> int:
        return sum(len(curve) for curve in self._curves.values())

    def size_bytes(self) -> int:
        return sum(curve.nbytes for curve in self._curves.values())

    def close(self) -> None:
        self._curves.clear()
        self._checkpoints.clear()

    def _load(self, object_ids: Sequence[str]) -> list[np.ndarray]:
        empty = empty_light_curve()
        return [self._curves.get(oid, empty) for oid in object_ids]

    def _save(self, curves: Iterable[tuple[str, np.ndarray]]) -> None:
        for object_id, curve in curves:
            if self._undo is not None and object_id not in self._undo:
                self._undo[object_id] = self._curves.get(object_id)
            # Copy: the merged curves are views into one batch-wide buffer.
            self._curves[object_id] = np.array(curve)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._undo = {}
        try:
            yield
        except BaseException:
            for object_id, previous in self._undo.items():
                if previous is None:
                    del self._curves[object_id]
                else:
                    self._curves[object_id] = previous
            raise
        finally:
            self._undo = None
