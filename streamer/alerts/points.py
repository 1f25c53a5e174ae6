"""From survey columns to the validated, deduplicated, time-sorted points of one alert.

Survey modules (:mod:`~streamer.alerts.dia`, :mod:`~streamer.alerts.ztf`) only map fields
to :data:`~streamer.photometry.POINT_DTYPE` columns; the rules every survey shares live
here: which rows are usable, what rejects an alert, and which of two measurements of one
visit is kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from streamer.alerts.errors import RejectedAlert
from streamer.photometry import BAND_INDEX, BANDS, POINT_DTYPE, PointKind

#: Band column value of a row whose band is null or not one of u g r i z y.
NO_BAND = 255
#: Band label -> index into :data:`~streamer.photometry.BANDS`; ELAsTiCC writes ``Y``.
BAND_CODES: dict[str, int] = {**BAND_INDEX, "Y": BAND_INDEX["y"]}
#: Two measurements of one band closer than this (days) belong to the same visit.
SAME_VISIT_DAYS = 1e-6
#: Largest usable magnitude of a time, flux or flux error: past it, the models' float32
#: inputs (times relative to a window's first, rescaled fluxes) overflow to inf.
MAX_ABS_VALUE = 1e30

# Row checks in the order they are reported; index 0 means the row is usable. The names
# of the first five double as rejection reasons when the failing row is the trigger.
_CHECKS = (
    "",
    "non_finite_time",
    "unknown_band",
    "non_finite_flux",
    "non_finite_error",
    "negative_error",
    "non_finite_limit",
    "after_trigger",
)


def point_rows(
    *,
    source_id: Sequence[int] | np.ndarray,
    time: Sequence[float | None] | np.ndarray,
    flux: Sequence[float | None] | np.ndarray,
    flux_err: Sequence[float | None] | np.ndarray,
    mag: Sequence[float | None] | np.ndarray,
    mag_err: Sequence[float | None] | np.ndarray,
    band: Sequence[int] | np.ndarray,
    kind: PointKind,
    known_at: float,
) -> np.ndarray:
    """Fill a :data:`POINT_DTYPE` array from columns; ``None`` becomes NaN.

    ``band`` holds indices with :data:`NO_BAND` for unusable bands; nothing is validated.
    """
    points = np.empty(len(source_id), dtype=POINT_DTYPE)
    points["source_id"] = source_id
    for column, values in (
        ("time", time),
        ("flux", flux),
        ("flux_err", flux_err),
        ("mag", mag),
        ("mag_err", mag_err),
    ):
        points[column] = np.asarray(values, dtype=np.float64)
    points["band"] = band
    points["kind"] = kind
    points["known_at"] = known_at
    return points


def _out_of_range(values: np.ndarray) -> np.ndarray:
    """NaN, infinite, or past :data:`MAX_ABS_VALUE` in magnitude."""
    return ~(np.abs(values) <= MAX_ABS_VALUE)  # NaN compares False


def failed_checks(points: np.ndarray) -> np.ndarray:
    """Index into the row checks of the first check each row fails (0: usable).

    Detections and forced points need a finite flux and a finite, non-negative error;
    a time, flux or error beyond :data:`MAX_ABS_VALUE` counts as non-finite;
    upper limits need a finite limiting magnitude. Every row needs a time and a band, and
    no history row may be later than the trigger (row 0): a copy of a later alert's
    trigger would otherwise stand in for it in the history (its first copy wins there).
    """
    measured = points["kind"] != PointKind.UPPER_LIMIT
    flux_err = points["flux_err"]
    conditions = [
        _out_of_range(points["time"]),
        points["band"] == NO_BAND,
        measured & _out_of_range(points["flux"]),
        measured & _out_of_range(flux_err),
        measured & (flux_err < 0),
        ~measured & ~np.isfinite(points["mag"]),
        points["time"] > points["time"][:1] + SAME_VISIT_DAYS,
    ]
    failures = np.zeros(len(points), dtype=np.uint8)
    # Later checks first, so that the first failing check of a row is the one that stays.
    for code in range(len(conditions), 0, -1):
        failures[conditions[code - 1]] = code
    return failures


def screen(points: np.ndarray, dropped: Counter[str]) -> np.ndarray:
    """Reject the alert for a bad trigger (row 0); drop and count bad history rows.

    Raises
    ------
    RejectedAlert
        When the triggering detection is unusable: ``no_usable_point`` if no other row is
        usable either, else the trigger's failed check as reason.
    """
    failures = failed_checks(points)
    if failures[0]:
        trigger = points[0]
        band = "missing/unknown" if trigger["band"] == NO_BAND else BANDS[trigger["band"]]
        detail = (
            f"triggering source {trigger['source_id']}: {_CHECKS[failures[0]]}, time={trigger['time']} "
            f"flux={trigger['flux']} flux_err={trigger['flux_err']} band={band}"
        )
        if failures.all():
            failed = Counter(_CHECKS[code] for code in failures)
            counts = ", ".join(f"{n} {check}" for check, n in sorted(failed.items()))
            raise RejectedAlert(
                "no_usable_point", f"none of {len(points)} rows is usable ({counts}); {detail}"
            )
        raise RejectedAlert(_CHECKS[failures[0]], detail)
    bad = failures != 0
    if bad.any():
        dropped.update(_CHECKS[code] for code in failures[bad])
        points = points[~bad]
    return points


def deduplicate(points: np.ndarray) -> np.ndarray:
    """Keep one row per measurement, sorted by time.

    A source id repeated within one kind keeps its first row (the trigger comes first).
    Rows of different kinds for one visit (same band, times within
    :data:`SAME_VISIT_DAYS`) keep the lowest kind: a detection beats a forced point,
    which beats an upper limit. Rows are returned sorted by time, then kind, then id.
    """
    if len(points) > 1:
        # lexsort is stable: repeats keep their arrival order, so the first one met stays.
        order = np.lexsort((points["source_id"], points["kind"]))
        source_id, kind = points["source_id"][order], points["kind"][order]
        repeated = np.zeros(len(points), dtype=bool)
        repeated[1:] = (source_id[1:] == source_id[:-1]) & (kind[1:] == kind[:-1])
        if repeated.any():
            keep = np.ones(len(points), dtype=bool)
            keep[order[repeated]] = False
            points = points[keep]

    if len(points) > 1:
        order = np.lexsort((points["kind"], points["time"], points["band"]))
        band, time, kind = points["band"][order], points["time"][order], points["kind"][order]
        new_visit = np.ones(len(points), dtype=bool)
        new_visit[1:] = (band[1:] != band[:-1]) | (np.diff(time) > SAME_VISIT_DAYS)
        visit_kind = np.minimum.reduceat(kind, np.flatnonzero(new_visit))
        keep_sorted = kind == visit_kind[np.cumsum(new_visit) - 1]
        if not keep_sorted.all():
            keep = np.empty(len(points), dtype=bool)
            keep[order] = keep_sorted
            points = points[keep]

    return points[np.lexsort((points["source_id"], points["kind"], points["time"]))]


def finish_points(groups: Sequence[np.ndarray], dropped: Counter[str]) -> np.ndarray:
    """Join row groups, :func:`screen` them, then :func:`deduplicate`.

    Row 0 of the first group must be the triggering detection.

    Raises
    ------
    RejectedAlert
        For a bad trigger, or ``no_usable_point`` when there are no rows at all.
    """
    total = sum(len(group) for group in groups)
    if total == 0:
        raise RejectedAlert("no_usable_point", "the alert carries no photometry rows")
    # Slice assignment: np.concatenate spends more time promoting structured dtypes than copying.
    points = np.empty(total, dtype=POINT_DTYPE)
    start = 0
    for group in groups:
        points[start : start + len(group)] = group
        start += len(group)
    # screen() keeps the trigger or raises, so the result is never empty.
    return deduplicate(screen(points, dropped))
