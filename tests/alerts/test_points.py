"""The shared rules: units, which rows are usable, and one row per measurement."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from streamer.alerts import RejectedAlert
from streamer.alerts.points import NO_BAND, deduplicate, finish_points, point_rows, screen
from streamer.photometry import POINT_DTYPE, PointKind, flux_to_mag, mag_to_flux

D, F, U = PointKind.DETECTION, PointKind.FORCED, PointKind.UPPER_LIMIT


def _points(*rows: tuple[int, float, int, int], flux: float = 100.0, flux_err: float = 5.0) -> np.ndarray:
    """Points from (source id, time, band, kind) tuples."""
    source_id, time, band, kind = zip(*rows, strict=True)
    n = len(rows)
    points = np.empty(n, dtype=POINT_DTYPE)
    points["source_id"], points["time"], points["band"], points["kind"] = source_id, time, band, kind
    points["flux"], points["flux_err"], points["mag"], points["mag_err"] = flux, flux_err, 20.0, 0.1
    points["known_at"] = max(time)
    return points


def test_njy_magnitude_conversions() -> None:
    # 3631 Jy is AB magnitude 0; 1 nJy is the zero point 31.4.
    mag, _ = flux_to_mag(np.array([3631e9, 1.0]), np.array([0.0, 0.0]))
    np.testing.assert_allclose(mag, [0.0, 31.4], atol=1e-3)
    flux, flux_err = mag_to_flux(np.array([21.4]), np.array([0.1]))
    np.testing.assert_allclose(flux, [1e4], rtol=1e-12)
    np.testing.assert_allclose(flux_err, [1e4 * 0.1 * math.log(10) / 2.5], rtol=1e-12)
    mag, mag_err = flux_to_mag(flux, flux_err)
    np.testing.assert_allclose([mag[0], mag_err[0]], [21.4, 0.1], rtol=1e-12)
    assert np.isnan(flux_to_mag(np.array([-5.0]), np.array([1.0]))[0]).all()


def test_same_source_within_a_kind_keeps_the_first_row() -> None:
    points = _points((7, 10.0, 1, D), (7, 10.0, 1, D), (8, 9.0, 1, D))
    points["flux"][1] = -1.0

    kept = deduplicate(points)

    assert kept["source_id"].tolist() == [8, 7]
    assert kept["flux"].tolist() == [100.0, 100.0]


def test_detection_beats_forced_beats_upper_limit_for_one_visit() -> None:
    points = _points(
        (1, 10.0, 2, F),
        (2, 10.0 + 0.9e-6, 2, D),  # same visit as 1
        (3, 11.0, 2, U),
        (3, 11.0, 2, F),  # ELAsTiCC/ZTF reuse ids across kinds: not a duplicate
        (5, 12.0, 2, F),
        (6, 12.0, 3, D),  # same time, other band: another visit
        (7, 13.0, 2, F),
        (8, 13.0 + 5e-6, 2, D),  # 5e-6 days apart: two visits
        (9, 14.0, 1, D),
        (10, 14.0, 1, D),  # two detections of one visit are both kept
    )

    kept = deduplicate(points)

    assert list(zip(kept["source_id"].tolist(), kept["kind"].tolist(), strict=True)) == [
        (2, D),
        (3, F),
        (6, D),  # sorted by time, then kind
        (5, F),
        (7, F),
        (8, D),
        (9, D),
        (10, D),
    ]


def test_points_come_out_sorted_by_time() -> None:
    points = _points((1, 5.0, 0, D), (2, 1.0, 1, F), (3, 3.0, 2, U), (4, 2.0, 3, D))
    assert deduplicate(points)["time"].tolist() == [1.0, 2.0, 3.0, 5.0]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("time", math.nan, "non_finite_time"),
        ("band", NO_BAND, "unknown_band"),
        ("flux", math.inf, "non_finite_flux"),
        ("flux", math.nan, "non_finite_flux"),
        ("flux_err", math.nan, "non_finite_error"),
        ("flux_err", -0.5, "negative_error"),
    ],
)
def test_a_bad_trigger_rejects_and_a_bad_history_row_is_dropped(
    column: str, value: float, reason: str
) -> None:
    trigger_bad = _points((1, 10.0, 1, D), (2, 9.0, 1, D))
    trigger_bad[column][0] = value
    with pytest.raises(RejectedAlert) as caught:
        screen(trigger_bad, Counter())
    assert caught.value.reason == reason

    history_bad = _points((1, 10.0, 1, D), (2, 9.0, 1, F), (3, 8.0, 1, D))
    history_bad[column][1] = value
    dropped: Counter[str] = Counter()
    kept = screen(history_bad, dropped)
    assert kept["source_id"].tolist() == [1, 3]
    assert dropped == {reason: 1}


def test_upper_limits_need_only_a_limiting_magnitude() -> None:
    points = _points((1, 10.0, 1, D), (2, 9.0, 1, U), (3, 8.0, 1, U))
    points["flux"][1:] = points["flux_err"][1:] = math.nan
    points["mag"][2] = math.nan
    dropped: Counter[str] = Counter()

    assert screen(points, dropped)["source_id"].tolist() == [1, 2]
    assert dropped == {"non_finite_limit": 1}


def test_no_rows_is_no_usable_point() -> None:
    empty = point_rows(
        source_id=[], time=[], flux=[], flux_err=[], mag=[], mag_err=[], band=[], kind=D, known_at=1.0
    )
    with pytest.raises(RejectedAlert) as caught:
        finish_points([empty], Counter())
    assert caught.value.reason == "no_usable_point"


def test_point_rows_turns_nulls_into_nan() -> None:
    points = point_rows(
        source_id=[1],
        time=[5.0],
        flux=[None],
        flux_err=[None],
        mag=[None],
        mag_err=[None],
        band=[2],
        kind=F,
        known_at=6.0,
    )
    assert np.isnan(points["flux"]).all() and points["kind"][0] == F and points["known_at"][0] == 6.0
