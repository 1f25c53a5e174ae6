"""The history store interface: every object's light curve across alerts.

:class:`HistoryStore` holds the whole merge and read logic; a concrete store only says
how to load, save and delete whole light curves, how to make a batch atomic, and where it
keeps its checkpoints (how far it has applied a changelog). The merge rules themselves
live in :mod:`streamer.history.merging`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np

from streamer.history.merging import (
    PointBatch,
    batch_from_alerts,
    batch_from_curves,
    batch_from_points,
    merge_light_curves,
)
from streamer.photometry import POINT_DTYPE, DecodedAlert, PointKind

#: Default cap on stored rows per object. Rubin alerts carry up to 12 months of history
#: (a few hundred rows); 10 000 leaves years of headroom while bounding a runaway object
#: (e.g. a variable star in a deep-drilling field) to ~0.6 MB.
DEFAULT_MAX_POINTS_PER_OBJECT = 10_000


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge changed.

    Attributes
    ----------
    changed_objects : frozenset of str
        Objects whose stored light curve changed: a new point, a lowered ``known_at``,
        or a forced point replaced by the detection of the same epoch. Only these need
        new embeddings.
    points_received : int
        Rows carried by the merged alerts, duplicates included.
    stored_points_delta : int
        Change in the number of stored rows.
    """

    changed_objects: frozenset[str]
    points_received: int
    stored_points_delta: int


def visible_points(curve: np.ndarray, as_of: float | None, include_upper_limits: bool) -> np.ndarray:
    """The part of a stored light curve that could be seen at ``as_of``.

    Parameters
    ----------
    curve : numpy.ndarray
        Stored light curve (:data:`~streamer.photometry.POINT_DTYPE`).
    as_of : float or None
        MJD; keep rows with ``time <= as_of`` and ``known_at <= as_of``. ``None`` keeps all.
    include_upper_limits : bool
        Keep :attr:`~streamer.photometry.PointKind.UPPER_LIMIT` rows.

    Returns
    -------
    numpy.ndarray
        A new (writable) array; order is preserved.
    """
    if include_upper_limits:
        mask = np.ones(len(curve), dtype=bool)
    else:
        mask = curve["kind"] != PointKind.UPPER_LIMIT
    if as_of is not None:
        mask &= (curve["time"] <= as_of) & (curve["known_at"] <= as_of)
    return curve[mask]


class HistoryStore(ABC):
    """Every object's light curve across alerts, merged idempotently.

    Merging follows the rules of :mod:`streamer.history.merging`: rows are deduplicated
    by ``(object, kind, source_id)``; a forced measurement at a detection's epoch gives
    way to the detection; ``known_at`` is the earliest alert time of all merged alerts
    that carried the row. The stored state therefore depends only on which alerts have
    been merged, not on their order or on repeats, while the object stays under the cap
    (see ``max_points_per_object``).

    Reads are *as of* a time: the curve for an alert holds only rows observed and known
    at or before that alert, so a replay in any order embeds exactly what live
    processing embedded, once the alerts carrying those rows have been merged.

    Parameters
    ----------
    max_points_per_object : int or None
        Keep at most this many rows per object (detections, forced points and upper
        limits together), the most recent by time; applied on every merge. ``None``
        disables the cap. Trimmed rows are gone: a curve read as of an earlier time no
        longer shows them, and merging an old alert again will not bring them back
        (they are older than everything kept). Replays reproduce live results only
        while objects stay under the cap: above it, an alert's curve also depends on
        which newer alerts were merged before or with it (its micro-batch), and a forced
        row whose detection was trimmed survives until that detection's alert is merged
        again.

    Notes
    -----
    A store is used by one thread at a time. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, *, max_points_per_object: int | None = DEFAULT_MAX_POINTS_PER_OBJECT) -> None:
        if max_points_per_object is not None and max_points_per_object < 1:
            raise ValueError(f"max_points_per_object must be >= 1 or None, got {max_points_per_object}")
        self._max_points = max_points_per_object

    @property
    def max_points_per_object(self) -> int | None:
        """Cap on stored rows per object (``None``: no cap)."""
        return self._max_points

    # -- writing -------------------------------------------------------------------------

    def merge(self, batch: Sequence[DecodedAlert]) -> MergeResult:
        """Merge a micro-batch of alerts atomically.

        Parameters
        ----------
        batch : sequence of DecodedAlert
            Alerts in any order, several per object allowed. Each alert's rows are taken
            as known at its ``alert_time``.

        Returns
        -------
        MergeResult
            Which objects changed. Merging alerts that add nothing new (repeats,
            overlapping history windows) changes nothing and reports no object.

        Raises
        ------
        TypeError, ValueError
            If an alert is malformed (see :func:`~streamer.history.merging.batch_from_alerts`);
            nothing is merged then.
        """
        return self._merge(batch_from_alerts(batch))

    def import_points(self, object_id: str, points: np.ndarray) -> bool:
        """Merge rows of one object that already carry their ``known_at``.

        The counterpart of :meth:`export_objects` for moving objects between stores
        (e.g. between partitions); the same merge rules apply, so importing into a store
        that already has part of the object is safe.

        Parameters
        ----------
        object_id : str
            The object the rows belong to.
        points : numpy.ndarray
            Rows of :data:`~streamer.photometry.POINT_DTYPE`.

        Returns
        -------
        bool
            Whether the object's stored light curve changed.
        """
        return bool(self._merge(batch_from_points(object_id, points)).changed_objects)

    def import_objects(self, curves: Mapping[str, np.ndarray]) -> frozenset[str]:
        """:meth:`import_points` for many objects in one transaction (e.g. a changelog restore).

        Parameters
        ----------
        curves : mapping of str to numpy.ndarray
            Rows of :data:`~streamer.photometry.POINT_DTYPE` per object.

        Returns
        -------
        frozenset of str
            The objects whose stored light curve changed.
        """
        return self._merge(batch_from_curves(curves)).changed_objects

    def _merge(self, batch: PointBatch) -> MergeResult:
        if not batch.object_ids:
            return MergeResult(frozenset(), 0, 0)
        with self._transaction():
            # Read inside the transaction so no other writer slips in between read and write.
            stored = self._load(batch.object_ids)
            changed = merge_light_curves(stored, batch, self._max_points)
            self._save((batch.object_ids[i], curve) for i, curve in changed.items())
        delta = sum(len(curve) - len(stored[i]) for i, curve in changed.items())
        return MergeResult(frozenset(batch.object_ids[i] for i in changed), len(batch.points), delta)

    @abstractmethod
    def delete_objects(self, object_ids: Iterable[str]) -> int:
        """Forget objects entirely (e.g. after handing them to another partition).

        Returns
        -------
        int
            How many of them were stored.
        """

    # -- reading -------------------------------------------------------------------------

    def light_curve(
        self, object_id: str, as_of: float | None = None, *, include_upper_limits: bool = False
    ) -> np.ndarray:
        """One object's light curve as of a time.

        Parameters
        ----------
        object_id : str
            The object.
        as_of : float or None
            MJD; keep rows observed (``time``) and known (``known_at``) at or before it.
            ``None`` returns everything stored.
        include_upper_limits : bool
            Also return upper limits (not fed to models by default).

        Returns
        -------
        numpy.ndarray
            Rows of :data:`~streamer.photometry.POINT_DTYPE` ordered by
            ``(time, band, kind, source_id)``; empty for an unknown object.
        """
        return self.light_curves([(object_id, as_of)], include_upper_limits=include_upper_limits)[0]

    def light_curves(
        self, requests: Sequence[tuple[str, float | None]], *, include_upper_limits: bool = False
    ) -> list[np.ndarray]:
        """Many light curves at once, each as of its own time.

        Each object is loaded once however often it is requested, with a few bulk
        queries for the whole request list.

        Parameters
        ----------
        requests : sequence of (str, float or None)
            ``(object_id, as_of)`` pairs, e.g. one per alert of a micro-batch with its
            ``alert_time``.
        include_upper_limits : bool
            Also return upper limits.

        Returns
        -------
        list of numpy.ndarray
            One light curve per request, in request order (see :meth:`light_curve`).
        """
        object_ids = tuple(dict.fromkeys(object_id for object_id, _ in requests))
        curves = dict(zip(object_ids, self._load(object_ids), strict=True))
        return [visible_points(curves[oid], as_of, include_upper_limits) for oid, as_of in requests]

    def export_objects(self, object_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Everything stored for some objects, upper limits and ``known_at`` included.

        Returns
        -------
        dict of str to numpy.ndarray
            Stored light curves of the objects that exist; unknown ids are left out.
            Feed them to :meth:`import_points` of another store.
        """
        object_ids = tuple(dict.fromkeys(object_ids))
        return {
            oid: curve.copy()
            for oid, curve in zip(object_ids, self._load(object_ids), strict=True)
            if len(curve)
        }

    @abstractmethod
    def iter_object_ids(self) -> Iterator[str]:
        """All stored object ids, e.g. to re-partition the store."""

    # -- positions in external logs ---------------------------------------------------------

    @abstractmethod
    def checkpoint(self, name: str) -> int | None:
        """A position saved with :meth:`set_checkpoint`, or ``None``.

        A store restored from a log (a Kafka changelog partition) records there how far
        it has applied it, so that the next restore reads only what came after.
        """

    @abstractmethod
    def set_checkpoint(self, name: str, position: int) -> None:
        """Save a position under ``name`` (durably, for a store on disk)."""

    # -- metrics and lifecycle -------------------------------------------------------------

    @abstractmethod
    def object_count(self) -> int:
        """Number of stored objects."""

    @abstractmethod
    def point_count(self) -> int:
        """Number of stored rows, upper limits included."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the store occupies (memory or database pages)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- storage primitives of a concrete store ---------------------------------------------

    @abstractmethod
    def _load(self, object_ids: Sequence[str]) -> list[np.ndarray]:
        """Stored light curves of distinct objects, in order; empty arrays for unknown ones.

        The arrays may be read-only views; callers must not modify them.
        """

    @abstractmethod
    def _save(self, curves: Iterable[tuple[str, np.ndarray]]) -> None:
        """Replace the stored light curves of some objects (consumed lazily)."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """Context in which :meth:`_save` calls commit together or not at all."""


def empty_light_curve() -> np.ndarray:
    """A light curve with no rows."""
    return np.empty(0, dtype=POINT_DTYPE)
