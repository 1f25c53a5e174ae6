"""Fixtures for the history tests: both stores behind one factory, and alert builders.

The builders are handed out as fixtures (``make_points``, ``make_alert``, ``make_survey``)
rather than imported, so that test modules never import ``conftest`` by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from streamer.history import (
    DEFAULT_MAX_POINTS_PER_OBJECT,
    EPOCH_TOLERANCE_DAYS,
    HistoryStore,
    MemoryHistoryStore,
    SQLiteHistoryStore,
)
from streamer.photometry import POINT_DTYPE, DecodedAlert, PointKind, flux_to_mag

#: ``(kind, source_id, time, band)``: enough to place a point; its flux follows from it.
Row = tuple[PointKind, int, float, int]

StoreFactory = Callable[..., HistoryStore]


def _build_points(rows: Sequence[Row]) -> np.ndarray:
    """Points for the given rows; flux is a function of the row so repeats are identical."""
    points = np.zeros(len(rows), dtype=POINT_DTYPE)
    if not rows:
        return points
    kind, source_id, time, band = zip(*rows, strict=True)
    points["kind"] = kind
    points["source_id"] = source_id
    points["time"] = time
    points["band"] = band
    points["flux"] = 1000.0 + (points["source_id"] % 997) * 3.0 + points["kind"] * 0.5
    points["flux_err"] = 10.0 + points["band"]
    points["mag"], points["mag_err"] = flux_to_mag(points["flux"], points["flux_err"])
    upper_limit = points["kind"] == PointKind.UPPER_LIMIT
    points["flux"][upper_limit] = np.nan
    points["flux_err"][upper_limit] = np.nan
    points["mag_err"][upper_limit] = np.nan
    # Decoders stamp known_at with the alert time; the store must not rely on it anyway.
    points["known_at"] = np.nan
    return points


def _build_alert(
    object_id: str, alert_time: float, rows: Sequence[Row], *, alert_id: int = 0
) -> DecodedAlert:
    """An alert of ``object_id`` at ``alert_time`` carrying ``rows``."""
    return DecodedAlert(
        survey="lsst",
        object_id=object_id,
        alert_id=alert_id,
        alert_time=alert_time,
        points=_build_points(rows),
        schema="lsst.v7_4",
    )


def _synthetic_survey(seed: int, n_objects: int = 6, window: int = 4) -> list[DecodedAlert]:
    """Multi-night, multi-band light curves and the alerts a survey would send for them.

    Each detection triggers an alert at its own time, carrying it plus the rows of the
    previous ``window`` detections' span: earlier detections, forced photometry (also at
    the detection epochs, jittered below the epoch tolerance) and upper limits.
    """
    rng = np.random.default_rng(seed)
    alerts: list[DecodedAlert] = []
    for number in range(n_objects):
        object_id = f"{1_000_000 + number}"
        nights = 60_000.0 + np.sort(rng.choice(60, size=rng.integers(5, 10), replace=False))
        rows: list[Row] = []
        for night in nights:
            for slot, band in enumerate(rng.choice(6, size=rng.integers(1, 4), replace=False)):
                time = float(night + 0.1 + 0.02 * slot + rng.uniform(0, 0.01))
                source_id = 10_000 * number + len(rows)
                rows.append((PointKind.DETECTION, source_id, time, int(band)))
                jitter = rng.uniform(-0.5, 0.5) * EPOCH_TOLERANCE_DAYS
                rows.append((PointKind.FORCED, source_id, time + jitter, int(band)))
            # Forced-only and non-detection epochs later in the night, in one band.
            band = int(rng.integers(6))
            rows.append((PointKind.FORCED, 10_000 * number + 5_000 + len(rows), float(night + 0.3), band))
            rows.append(
                (PointKind.UPPER_LIMIT, 10_000 * number + 8_000 + len(rows), float(night + 0.35), band)
            )
        detections = sorted((row for row in rows if row[0] == PointKind.DETECTION), key=lambda row: row[2])
        for i, trigger in enumerate(detections):
            start = detections[max(0, i - window)][2]
            carried = [row for row in rows if start <= row[2] < trigger[2]]
            alerts.append(_build_alert(object_id, trigger[2], [trigger, *carried], alert_id=trigger[1]))
    return alerts


@pytest.fixture
def make_points() -> Callable[[Sequence[Row]], np.ndarray]:
    """Build a POINT_DTYPE array from ``(kind, source_id, time, band)`` rows."""
    return _build_points


@pytest.fixture
def make_alert() -> Callable[..., DecodedAlert]:
    """Build an alert: ``make_alert(object_id, alert_time, rows, alert_id=0)``."""
    return _build_alert


@pytest.fixture
def make_survey() -> Callable[..., list[DecodedAlert]]:
    """Alerts of a synthetic survey: ``make_survey(seed, n_objects=6, window=4)``."""
    return _synthetic_survey


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Factory of fresh stores of one kind; every test using it runs once per kind."""
    opened: list[HistoryStore] = []

    def make(max_points_per_object: int | None = DEFAULT_MAX_POINTS_PER_OBJECT) -> HistoryStore:
        store: HistoryStore
        if request.param == "memory":
            store = MemoryHistoryStore(max_points_per_object=max_points_per_object)
        else:
            path = tmp_path / f"history-{len(opened)}.sqlite"
            store = SQLiteHistoryStore(path, max_points_per_object=max_points_per_object)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> HistoryStore:
    """A fresh store with the default cap, once per kind."""
    return make_store()
