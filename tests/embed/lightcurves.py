"""Random light curves for the embedding tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LSST_BANDS = ["u", "g", "r", "i", "z", "y"]


def random_curve(
    rng: np.random.Generator, points_per_band: Mapping[object, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(time, mag, flux_nJy, flux_err_nJy, band)``, time-ordered, with exactly the
    requested number of points in each band."""
    band = np.concatenate([np.full(n, b, dtype=object) for b, n in points_per_band.items()])
    band = np.asarray(band.tolist())
    n = band.size
    time = rng.uniform(60000.0, 61000.0, n)
    order = np.argsort(time)
    time, band = time[order], band[order]
    mag = rng.normal(20.0, 1.0, n)
    flux = 10 ** (-0.4 * (mag - 31.4))
    flux_err = flux * rng.uniform(0.01, 0.2, n)
    return time, mag, flux, flux_err, band
