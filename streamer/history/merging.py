"""The rules that turn alerts' photometry rows into one light curve per object.

Both history stores share these functions, so they give identical results by
construction. Everything is vectorised over all objects of a micro-batch at once: rows
of many objects travel together, tagged with an ``owner`` index into a list of object ids.

The rules, applied to everything stored for an object plus everything newly merged:

1. A row is identified by ``(object, kind, source_id)``. When several alerts carry it,
   the copy from the earliest alert wins and ``known_at`` is that alert's time (between
   alerts of the same time, the copy stored first wins; surveys do not revise rows, so
   the copies are identical anyway).
2. A forced measurement at the epoch of a detection (same band, time within
   :data:`EPOCH_TOLERANCE_DAYS`) is dropped in favour of the detection. The triggering
   alert always carries its own detection, so preferring detections makes the result
   independent of which of the two arrived first.
3. At most ``max_points`` rows per object are kept: the most recent by time.
4. Rows are ordered by ``(time, band, kind, source_id)``.

These rules make the stored light curve a function of the *set* of alerts merged so
far, not of their order or batching; that is what lets a replay in any order reproduce
the live results, while objects stay under the cap. Rule 2 needs the detection of an
epoch: once rule 3 has trimmed it, a forced row of that epoch merged later is kept (and
shown), and merging the detection's alert again removes it, so a capped object's state
depends on merge order and repeats. The rows the cap trims are gone, also for as-of reads
of earlier times (see :class:`~streamer.history.store.HistoryStore`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamer.photometry import POINT_DTYPE, DecodedAlert, PointKind

#: A detection and a forced measurement of the same band closer than this (days) are
#: the same epoch. 1e-6 day is ~0.09 s: far below any exposure time, far above the
#: rounding of MJDs that went through a JD or TAI conversion.
EPOCH_TOLERANCE_DAYS = 1e-6

_KNOWN_KINDS = max(PointKind) + 1

#: Opaque fixed-size record with the layout of one point: copying rows through it is a
#: plain memory copy.
_RECORD = np.dtype((np.void, POINT_DTYPE.itemsize))


@dataclass(frozen=True, slots=True)
class PointBatch:
    """Photometry rows of several objects, ready to merge.

    Attributes
    ----------
    object_ids : tuple of str
        Distinct objects in the batch.
    owner : numpy.ndarray
        ``intp`` array, one entry per row: index into ``object_ids``.
    points : numpy.ndarray
        Rows of :data:`~streamer.photometry.POINT_DTYPE`; ``known_at`` is final.
    """

    object_ids: tuple[str, ...]
    owner: np.ndarray
    points: np.ndarray


def batch_from_alerts(alerts: Sequence[DecodedAlert]) -> PointBatch:
    """Gather the rows of a micro-batch of alerts, stamped with their alert's time.

    ``known_at`` is set to the alert time of the alert carrying the row, whatever the
    decoder wrote there: by definition a row is known from the earliest alert that carried it.

    Parameters
    ----------
    alerts : sequence of DecodedAlert
        Alerts in any order; several may belong to the same object.

    Returns
    -------
    PointBatch
        All rows of all alerts (the alerts' arrays are not modified).

    Raises
    ------
    TypeError
        If an alert's points are not a :data:`~streamer.photometry.POINT_DTYPE` array.
    ValueError
        If an alert time or a point time is not finite, or a point has an unknown kind.
    """
    index: dict[str, int] = {}
    owners: list[int] = []
    parts: list[np.ndarray] = []
    for alert in alerts:
        if not isinstance(alert.points, np.ndarray) or alert.points.dtype != POINT_DTYPE:
            raise TypeError(
                f"alert {alert.alert_id} of object {alert.object_id}: points must be a numpy array "
                f"of POINT_DTYPE, got {getattr(alert.points, 'dtype', type(alert.points))}"
            )
        if not np.isfinite(alert.alert_time):
            raise ValueError(
                f"alert {alert.alert_id} of object {alert.object_id}: alert_time is {alert.alert_time}"
            )
        owners.append(index.setdefault(alert.object_id, len(index)))
        parts.append(alert.points.reshape(-1))
    lengths = np.fromiter((len(p) for p in parts), dtype=np.intp, count=len(parts))
    points = stack_points(parts)
    points["known_at"] = np.repeat(
        np.fromiter((a.alert_time for a in alerts), np.float64, len(parts)), lengths
    )
    bad = ~np.isfinite(points["time"]) | (points["kind"] >= _KNOWN_KINDS)
    if bad.any():
        # Name the first offending alert; the slow search only runs on the error path.
        alert = alerts[int(np.searchsorted(np.cumsum(lengths), np.flatnonzero(bad)[0], side="right"))]
        raise ValueError(
            f"alert {alert.alert_id} of object {alert.object_id}: a point has a non-finite time "
            f"or an unknown kind (kinds are {[k.name for k in PointKind]})"
        )
    return PointBatch(tuple(index), np.repeat(np.asarray(owners, dtype=np.intp), lengths), points)


def batch_from_points(object_id: str, points: np.ndarray) -> PointBatch:
    """Wrap already-stamped rows of one object (e.g. from an export) as a batch.

    Unlike :func:`batch_from_alerts`, ``known_at`` is taken from the rows as they are.

    Raises
    ------
    TypeError
        If ``points`` is not a :data:`~streamer.photometry.POINT_DTYPE` array.
    ValueError
        If a time or ``known_at`` is not finite, or a point has an unknown kind.
    """
    return batch_from_curves({object_id: points})


def batch_from_curves(curves: Mapping[str, np.ndarray]) -> PointBatch:
    """Wrap already-stamped rows of several objects (exports, a changelog) as one batch.

    Raises
    ------
    TypeError
        If an object's rows are not a :data:`~streamer.photometry.POINT_DTYPE` array.
    ValueError
        If a time or ``known_at`` is not finite, or a point has an unknown kind.
    """
    parts = []
    for object_id, points in curves.items():
        if not isinstance(points, np.ndarray) or points.dtype != POINT_DTYPE:
            raise TypeError(f"points of object {object_id} must be a numpy array of POINT_DTYPE")
        points = points.reshape(-1)
        finite = np.isfinite(points["time"]) & np.isfinite(points["known_at"])
        bad = ~finite | (points["kind"] >= _KNOWN_KINDS)
        if bad.any():
            raise ValueError(f"points of object {object_id}: non-finite time/known_at or unknown kind")
        parts.append(points)
    lengths = np.fromiter((len(p) for p in parts), dtype=np.intp, count=len(parts))
    owner = np.repeat(np.arange(len(parts), dtype=np.intp), lengths)
    return PointBatch(tuple(curves), owner, stack_points(parts))


def stack_points(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate :data:`~streamer.photometry.POINT_DTYPE` arrays into a new array.

    Goes through opaque fixed-size records: numpy's structured concatenate re-checks the
    fields of every input, which is several times slower for a thousand small arrays.
    """
    if not arrays:
        return np.empty(0, dtype=POINT_DTYPE)
    return np.concatenate([a.view(_RECORD) for a in arrays]).view(POINT_DTYPE)


def merge_light_curves(
    stored: Sequence[np.ndarray], batch: PointBatch, max_points: int | None
) -> dict[int, np.ndarray]:
    """Apply the merge rules to stored light curves and a batch of new rows.

    Parameters
    ----------
    stored : sequence of numpy.ndarray
        Current light curve of each of ``batch.object_ids`` (empty when unknown), as an
        earlier call returned it: deduplicated and in canonical order. Change detection
        relies on that.
    batch : PointBatch
        New rows.
    max_points : int or None
        Cap on rows per object (most recent kept); ``None`` for no cap.

    Returns
    -------
    dict of int to numpy.ndarray
        New light curve of each object that changed, keyed by its index in
        ``batch.object_ids``. Objects that gained nothing (repeats, rows older than the
        cap allows, forced rows at known detection epochs) are left out. The arrays are
        views into one buffer: copy them before keeping them long.
    """
    n_objects = len(batch.object_ids)
    lengths = np.fromiter((len(c) for c in stored), dtype=np.intp, count=n_objects)
    n_stored = int(lengths.sum())
    # Stored rows go first, so that the stable sorts below keep the stored copy on ties.
    points = stack_points([*stored, batch.points])
    owner = np.concatenate([np.repeat(np.arange(n_objects, dtype=np.intp), lengths), batch.owner])
    # Contiguous copies of the columns the rules look at: sorting strided fields of
    # 58-byte records is several times slower. The wide rows are gathered once, at the end.
    kind = np.ascontiguousarray(points["kind"])
    band = np.ascontiguousarray(points["band"])
    time = np.ascontiguousarray(points["time"])
    source_id = np.ascontiguousarray(points["source_id"])

    rows = _earliest_copies(owner, kind, source_id, np.ascontiguousarray(points["known_at"]))
    rows = rows[~_forced_at_detection_epochs(rows, n_stored, owner, kind, band, time)]

    def changed(rows: np.ndarray) -> np.ndarray:
        # Stored curves are canonical: an object whose surviving rows are exactly its
        # stored rows is unchanged, and needs neither sorting nor writing.
        counts = np.bincount(owner[rows], minlength=n_objects)
        added = np.bincount(owner[rows[rows >= n_stored]], minlength=n_objects)
        over_cap = counts > max_points if max_points is not None else False
        return (added > 0) | (counts != lengths) | over_cap

    rows = rows[changed(rows)[owner[rows]]]
    # Canonical order (rule 4). ``rows`` is already ordered by (object, kind, source_id),
    # so a stable sort on (object, time, band) leaves ties in that order: three sort
    # passes instead of five.
    rows = rows[np.lexsort((band[rows], time[rows], owner[rows]))]
    if max_points is not None:
        counts = np.bincount(owner[rows], minlength=n_objects)
        # Position counted from the end of each object's run, 1 for its latest row.
        from_end = np.cumsum(counts)[owner[rows]] - np.arange(len(rows))
        rows = rows[from_end <= max_points]
        # The cap may have trimmed exactly the new rows again.
        rows = rows[changed(rows)[owner[rows]]]

    merged = points.view(_RECORD)[rows].view(POINT_DTYPE)
    counts = np.bincount(owner[rows], minlength=n_objects)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {int(i): merged[bounds[i] : bounds[i + 1]] for i in np.flatnonzero(counts)}


def _earliest_copies(
    owner: np.ndarray, kind: np.ndarray, source_id: np.ndarray, known_at: np.ndarray
) -> np.ndarray:
    """Row index of the earliest-known copy of each ``(object, kind, source_id)`` (rule 1)."""
    object_kind = owner.astype(np.int64) * _KNOWN_KINDS + kind
    order = np.lexsort((known_at, source_id, object_kind))
    key, source = object_kind[order], source_id[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (key[1:] != key[:-1]) | (source[1:] != source[:-1])
    return order[first]


def _forced_at_detection_epochs(
    rows: np.ndarray,
    n_stored: int,
    owner: np.ndarray,
    kind: np.ndarray,
    band: np.ndarray,
    time: np.ndarray,
) -> np.ndarray:
    """Mask over ``rows`` of forced rows at a detection epoch of the same object and band (rule 2).

    Rows ``>= n_stored`` are new. Only ``(object, band)`` groups that received a new
    detection or forced row need checking: stored curves already obey the rule.
    """
    shadowed = np.zeros(len(rows), dtype=bool)
    if not len(rows):
        return shadowed
    flux = kind[rows] != PointKind.UPPER_LIMIT
    n_bands = int(band.max()) + 1
    group = owner[rows].astype(np.int64) * n_bands + band[rows]
    receiving = np.zeros(int(group.max()) + 1, dtype=bool)
    receiving[group[flux & (rows >= n_stored)]] = True
    candidates = np.flatnonzero(flux & receiving[group])
    is_detection = kind[rows[candidates]] == PointKind.DETECTION
    if is_detection.all() or not is_detection.any():
        return shadowed

    # Sort detections and forced rows together by (object, band, time); the detection
    # closest in time to a forced row is then the previous or the next detection.
    group, epoch = group[candidates], time[rows[candidates]]
    order = np.lexsort((epoch, group))
    group, epoch, is_detection = group[order], epoch[order], is_detection[order]
    n = len(order)
    position = np.arange(n)
    previous = np.maximum.accumulate(np.where(is_detection, position, -1))
    following = np.minimum.accumulate(np.where(is_detection, position, n)[::-1])[::-1]
    prev_at = np.maximum(previous, 0)
    next_at = np.minimum(following, n - 1)
    near_previous = (
        (previous >= 0) & (group[prev_at] == group) & (epoch - epoch[prev_at] <= EPOCH_TOLERANCE_DAYS)
    )
    near_following = (
        (following < n) & (group[next_at] == group) & (epoch[next_at] - epoch <= EPOCH_TOLERANCE_DAYS)
    )
    shadowed[candidates[order[~is_detection & (near_previous | near_following)]]] = True
    return shadowed
