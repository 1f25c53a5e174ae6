"""ZTF alerts (schema 3.x and 4.x): candidates, upper limits and forced photometry to points.

ZTF reports PSF magnitudes of the difference image, whose sign is in ``isdiffpos``; the
points keep ``magpsf``/``sigmapsf`` as magnitudes and carry the matching signed nJy flux.
``prv_candidates`` rows without ``candid``/``magpsf`` are non-detections that only give a
limiting magnitude. From 4.0, ``fp_hists`` adds forced photometry in image units (DN).
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter
from typing import Any

import numpy as np

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.points import NO_BAND, finish_points, point_rows
from streamer.alerts.projection import named_types
from streamer.alerts.schemas import INTEGER, NUMERIC, check_fields, record_schema
from streamer.photometry import BAND_INDEX, NJY_ZERO_POINT, DecodedAlert, PointKind, flux_to_mag, mag_to_flux

#: Fields read from ZTF alerts, at any depth; cutouts and the ~100 other candidate columns are skipped.
ZTF_FIELDS = frozenset(
    {
        "schemavsn",
        "objectId",
        "candid",
        "candidate",
        "prv_candidates",
        "fp_hists",
        "jd",
        "fid",
        "pid",
        "magpsf",
        "sigmapsf",
        "isdiffpos",
        "diffmaglim",
        "magzpsci",
        "forcediffimflux",
        "forcediffimfluxunc",
    }
)

#: ZTF filter id -> band index (1 = g, 2 = r, 3 = i).
ZTF_BANDS: dict[int, int] = {1: BAND_INDEX["g"], 2: BAND_INDEX["r"], 3: BAND_INDEX["i"]}
#: Julian date of MJD 0.
MJD_JD_OFFSET = 2400000.5
#: ``fp_hists`` value meaning "no measurement".
FORCED_FLUX_MISSING = -99999.0
#: ``isdiffpos`` -> sign of the difference flux; anything else leaves the flux unknown (NaN).
DIFFERENCE_SIGNS: dict[str | None, float] = {"t": 1.0, "1": 1.0, "f": -1.0, "0": -1.0}

_detection_columns = itemgetter("candid", "jd", "magpsf", "sigmapsf", "isdiffpos", "fid")
_limit_columns = itemgetter("pid", "jd", "diffmaglim", "fid")
_forced_columns = itemgetter("pid", "jd", "forcediffimflux", "forcediffimfluxunc", "magzpsci", "fid")


def check_ztf_schema(schema: dict[str, Any]) -> None:
    """Check that a ``ztf.alert`` writer schema has the fields :func:`ztf_alert` reads.

    Raises
    ------
    RejectedAlert
        ``unknown_schema`` naming the first missing or mistyped field.
    """
    named = named_types(schema)
    top = {field["name"]: field["type"] for field in schema["fields"]}
    text = frozenset({"string", "null"})
    check_fields(schema, {"objectId": text, "candid": INTEGER}, "ztf.alert")
    if "schemavsn" in top:
        check_fields(schema, {"schemavsn": text}, "ztf.alert")
    if not isinstance(top["candid"], str) or not isinstance(top.get("candidate"), dict | str):
        raise RejectedAlert("unknown_schema", "ztf.alert.candidate is missing or may be null")
    number, maybe_number = NUMERIC, NUMERIC | {"null"}
    detection = {"jd": number, "fid": INTEGER, "magpsf": maybe_number, "sigmapsf": maybe_number}
    check_fields(
        record_schema(top["candidate"], named),
        {**detection, "candid": INTEGER, "isdiffpos": text},
        "ztf.alert.candidate",
    )
    if "prv_candidates" in top:
        prv = {
            "candid": INTEGER | {"null"},
            "pid": INTEGER,
            "diffmaglim": maybe_number,
            "isdiffpos": text,
        }
        check_fields(
            record_schema(top["prv_candidates"], named), {**detection, **prv}, "ztf.alert.prv_candidates"
        )
    if "fp_hists" in top:
        forced = {"pid": INTEGER, "jd": number, "fid": INTEGER, "magzpsci": maybe_number}
        forced.update(forcediffimflux=maybe_number, forcediffimfluxunc=maybe_number)
        check_fields(record_schema(top["fp_hists"], named), forced, "ztf.alert.fp_hists")


def _bands(fids: tuple[int | None, ...]) -> list[int]:
    return [ZTF_BANDS.get(fid, NO_BAND) for fid in fids]  # type: ignore[arg-type]


def _mjd(jds: tuple[float | None, ...]) -> np.ndarray:
    return np.asarray(jds, dtype=np.float64) - MJD_JD_OFFSET


def _detections(rows: list[dict[str, Any]], known_at: float) -> np.ndarray:
    candid, jd, magpsf, sigmapsf, isdiffpos, fid = zip(*map(_detection_columns, rows), strict=True)
    mag = np.asarray(magpsf, dtype=np.float64)
    mag_err = np.asarray(sigmapsf, dtype=np.float64)
    with np.errstate(all="ignore"):
        flux, flux_err = mag_to_flux(mag, mag_err)
    flux *= np.array([DIFFERENCE_SIGNS.get(sign, np.nan) for sign in isdiffpos])
    return point_rows(
        source_id=candid,
        time=_mjd(jd),
        flux=flux,
        flux_err=flux_err,
        mag=mag,
        mag_err=mag_err,
        band=_bands(fid),
        kind=PointKind.DETECTION,
        known_at=known_at,
    )


def _upper_limits(rows: list[dict[str, Any]], known_at: float) -> np.ndarray:
    pid, jd, diffmaglim, fid = zip(*map(_limit_columns, rows), strict=True)
    nan = np.full(len(rows), np.nan)
    return point_rows(
        source_id=pid,
        time=_mjd(jd),
        flux=nan,
        flux_err=nan,
        mag=diffmaglim,
        mag_err=nan,
        band=_bands(fid),
        kind=PointKind.UPPER_LIMIT,
        known_at=known_at,
    )


def _forced(rows: list[dict[str, Any]], known_at: float) -> np.ndarray:
    pid, jd, raw_flux, raw_err, magzpsci, fid = zip(*map(_forced_columns, rows), strict=True)
    dn_flux = np.asarray(raw_flux, dtype=np.float64)
    dn_err = np.asarray(raw_err, dtype=np.float64)
    # The sentinel becomes NaN, so validation drops the row like any missing flux.
    dn_flux[dn_flux == FORCED_FLUX_MISSING] = np.nan
    dn_err[dn_err == FORCED_FLUX_MISSING] = np.nan
    with np.errstate(all="ignore"):
        # DN -> nJy: the image zero point magzpsci maps DN onto AB magnitudes.
        to_njy = 10.0 ** (-0.4 * (np.asarray(magzpsci, dtype=np.float64) - NJY_ZERO_POINT))
        flux, flux_err = dn_flux * to_njy, dn_err * to_njy
        mag, mag_err = flux_to_mag(flux, flux_err)
    return point_rows(
        source_id=pid,
        time=_mjd(jd),
        flux=flux,
        flux_err=flux_err,
        mag=mag,
        mag_err=mag_err,
        band=_bands(fid),
        kind=PointKind.FORCED,
        known_at=known_at,
    )


def ztf_alert(record: dict[str, Any], dropped: Counter[str]) -> DecodedAlert:
    """Turn a projected ZTF alert record into a :class:`DecodedAlert`.

    Parameters
    ----------
    record : dict
        The alert as read with :data:`ZTF_FIELDS`.
    dropped : collections.Counter
        Incremented by check name for every history row dropped as unusable.

    Raises
    ------
    RejectedAlert
        ``null_object_id``, or the failed check of an unusable triggering candidate.
    """
    object_id = record["objectId"]
    if not object_id:
        raise RejectedAlert("null_object_id", f"alert {record['candid']}: objectId is empty")
    candidate = record["candidate"]
    alert_time = float("nan") if candidate["jd"] is None else float(candidate["jd"]) - MJD_JD_OFFSET

    detections: list[dict[str, Any]] = [candidate]
    limits: list[dict[str, Any]] = []
    for row in record.get("prv_candidates") or ():
        (detections if row["candid"] is not None and row["magpsf"] is not None else limits).append(row)
    groups = [_detections(detections, alert_time)]
    if limits:
        groups.append(_upper_limits(limits, alert_time))
    if record.get("fp_hists"):
        groups.append(_forced(record["fp_hists"], alert_time))

    points = finish_points(groups, dropped)
    version = (record.get("schemavsn") or "unknown").replace(".", "_")
    return DecodedAlert(
        survey="ztf",
        object_id=object_id,
        alert_id=record["candid"],
        alert_time=alert_time,
        points=points,
        schema=f"ztf.v{version}",
    )
