"""Photometry points: the common currency between decoding, history and embedding.

Every decoder turns an alert into a :class:`DecodedAlert` whose ``points`` is a numpy
structured array of :data:`POINT_DTYPE`; the history store keeps the same rows per object.
Structured arrays (not lists of objects) keep the hot path vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

#: Zero point of nJy fluxes in AB magnitudes: ``mag = 31.4 - 2.5 log10(flux_nJy)``.
NJY_ZERO_POINT = 31.4

#: Band labels in model order (ATCAT channel index = position in this tuple).
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
BAND_INDEX: dict[str, int] = {b: i for i, b in enumerate(BANDS)}


class PointKind(IntEnum):
    """How a photometry point was measured."""

    DETECTION = 0
    FORCED = 1
    UPPER_LIMIT = 2


#: One photometry point. ``flux``/``flux_err`` are nJy (NaN when unknown, e.g. ZTF upper
#: limits); ``mag``/``mag_err`` are AB magnitudes (NaN for non-positive nJy fluxes; ZTF keeps
#: ``magpsf`` of negative differences, whose flux is negative); ``band`` is an
#: index into :data:`BANDS`; ``time`` is MJD (TAI for Rubin/ELAsTiCC, UTC-based for ZTF);
#: ``known_at`` is the time of the earliest alert that carried the point (as-of semantics).
POINT_DTYPE = np.dtype(
    [
        ("source_id", np.int64),
        ("time", np.float64),
        ("flux", np.float64),
        ("flux_err", np.float64),
        ("mag", np.float64),
        ("mag_err", np.float64),
        ("band", np.uint8),
        ("kind", np.uint8),
        ("known_at", np.float64),
    ]
)


@dataclass(frozen=True, slots=True)
class DecodedAlert:
    """The part of an alert packet the pipeline needs.

    Attributes
    ----------
    survey : str
        ``"lsst"``, ``"ztf"`` or ``"elasticc"``.
    object_id : str
        Astronomical object identifier (Rubin/ELAsTiCC ``diaObjectId`` as decimal text,
        ZTF ``objectId``).
    alert_id : int
        Alert identifier (Rubin ``alertId``/``diaSourceId``, ZTF ``candid``).
    alert_time : float
        MJD of the triggering observation.
    points : numpy.ndarray
        Structured array of :data:`POINT_DTYPE`: the triggering detection and every
        history row carried by the alert, ``known_at`` set to ``alert_time``.
    schema : str
        Schema version the packet was decoded with, e.g. ``"lsst.v7_4"``.
    """

    survey: str
    object_id: str
    alert_id: int
    alert_time: float
    points: np.ndarray
    schema: str


def flux_to_mag(flux: np.ndarray, flux_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert nJy fluxes to AB magnitudes, NaN where the flux is not positive.

    ``mag_err = 2.5 / ln(10) * flux_err / flux`` (first-order error propagation).
    """
    flux = np.asarray(flux, dtype=np.float64)
    flux_err = np.asarray(flux_err, dtype=np.float64)
    positive = flux > 0
    safe = np.where(positive, flux, 1.0)
    mag = np.where(positive, NJY_ZERO_POINT - 2.5 * np.log10(safe), np.nan)
    mag_err = np.where(positive, 2.5 / np.log(10.0) * flux_err / safe, np.nan)
    return mag, mag_err


def mag_to_flux(mag: np.ndarray, mag_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert AB magnitudes to nJy fluxes (inverse of :func:`flux_to_mag`)."""
    mag = np.asarray(mag, dtype=np.float64)
    mag_err = np.asarray(mag_err, dtype=np.float64)
    flux = 10.0 ** (-0.4 * (mag - NJY_ZERO_POINT))
    flux_err = flux * mag_err * np.log(10.0) / 2.5
    return flux, flux_err
