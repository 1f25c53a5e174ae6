"""Valid alert packets with chosen content, for tests, end-to-end runs and benchmarks.

Light curves are :data:`~streamer.photometry.POINT_DTYPE` arrays, so what a test feeds in
compares directly with what the decoder gives back. Rubin alerts follow any schema
version lsst-alert-packet ships (every field the pipeline ignores is filled with a zero
or null), ELAsTiCC alerts the built-in v0.9 schema, ZTF alerts a ZTF-like schema with the
real photometry fields (:func:`ztf_schema`).

Example
-------
>>> curve = make_light_curve(40, seed=1)
>>> alert = make_lsst_alert_from_light_curve(curve, object_id=17, alert_id=1, cutout_bytes=40_000)
>>> message = encode_confluent(alert, schema_version="7.4")
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import fastavro
import numpy as np

from streamer.alerts.dia import DiaLayout, DiaRowFields, dia_layout
from streamer.alerts.projection import named_types
from streamer.alerts.schemas import elasticc_v0_9_schema, parse_record_schema, rubin_schema, rubin_schema_id
from streamer.alerts.ztf import MJD_JD_OFFSET, ZTF_BANDS
from streamer.photometry import BANDS, NJY_ZERO_POINT, POINT_DTYPE, PointKind, flux_to_mag

#: Rubin schema version used when none is given.
DEFAULT_LSST_VERSION = "7.4"
#: ZTF schema version used when none is given (4.x carries forced photometry).
DEFAULT_ZTF_VERSION = "4.02"
#: Image zero point written into synthetic ZTF forced photometry (DN -> AB magnitudes).
ZTF_FORCED_ZERO_POINT = 26.3

_ZTF_FID = {BANDS[index]: fid for fid, index in ZTF_BANDS.items()}


def _version(schema_version: str) -> tuple[int, int]:
    major, _, minor = schema_version.partition(".")
    return int(major), int(minor or 0)


@cache
def lsst_schema(schema_version: str = DEFAULT_LSST_VERSION) -> dict[str, Any]:
    """Parsed Rubin alert schema, e.g. ``lsst_schema("7.4")`` (cached)."""
    return rubin_schema(*_version(schema_version))


def make_light_curve(
    n_points: int,
    *,
    start_mjd: float = 60000.0,
    cadence_days: float = 1.5,
    bands: str = "ugrizy",
    peak_flux: float = 20_000.0,
    forced_every: int = 2,
    first_source_id: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """A noisy transient: a Gaussian rise and fall in flux, sampled round-robin over ``bands``.

    Parameters
    ----------
    n_points : int
        Number of points.
    start_mjd, cadence_days : float
        Time of the first point and spacing between points (days).
    bands : str
        Band labels cycled through, from ``"ugrizy"``.
    peak_flux : float
        Peak flux in nJy, reached two thirds of the way through.
    forced_every : int
        Every ``forced_every``-th point is FORCED, the rest DETECTION (0: all detections).
        The last point is always a detection, so it can trigger an alert.
    first_source_id : int
        Source ids count up from here.
    seed : int
        Seed of the noise.

    Returns
    -------
    numpy.ndarray
        :data:`POINT_DTYPE` rows sorted by time, ``known_at`` set to the last time.
    """
    rng = np.random.default_rng(seed)
    time = start_mjd + cadence_days * np.arange(n_points)
    peak = start_mjd + cadence_days * n_points * 2 / 3
    width = max(cadence_days * n_points / 6, 1.0)
    flux_err = 0.05 * peak_flux + rng.uniform(0, 0.02 * peak_flux, n_points)
    flux = peak_flux * np.exp(-0.5 * ((time - peak) / width) ** 2) + rng.normal(0, 1, n_points) * flux_err
    kind = np.full(n_points, PointKind.DETECTION, dtype=np.uint8)
    if forced_every > 0:
        kind[::forced_every] = PointKind.FORCED
        kind[-1] = PointKind.DETECTION
    points = np.empty(n_points, dtype=POINT_DTYPE)
    points["source_id"] = first_source_id + np.arange(n_points)
    points["time"] = time
    points["flux"] = flux
    points["flux_err"] = flux_err
    points["mag"], points["mag_err"] = flux_to_mag(flux, flux_err)
    points["band"] = [BANDS.index(bands[i % len(bands)]) for i in range(n_points)]
    points["kind"] = kind
    points["known_at"] = time[-1] if n_points else np.nan
    return points


def blank_record(schema: Any, named: Mapping[str, Any] | None = None) -> Any:
    """A value of ``schema`` with every field null, zero, empty or the first enum symbol."""
    named = named_types(schema) if named is None else named
    if isinstance(schema, list):
        return None if "null" in schema else blank_record(schema[0], named)
    if isinstance(schema, str):
        if schema in named:
            return blank_record(named[schema], named)
        zeros = {"null": None, "boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0}
        return zeros.get(schema, "" if schema == "string" else b"")
    kind = schema["type"]
    if kind == "record":
        return {field["name"]: blank_record(field["type"], named) for field in schema["fields"]}
    if kind == "array":
        return []
    if kind == "map":
        return {}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return bytes(schema["size"])
    return blank_record(kind, named)


def _field_record(schema: dict[str, Any], field_name: str) -> dict[str, Any]:
    """Blank value of the record held (maybe through a union or array) by a top-level field."""
    key = (id(schema), field_name)
    cached = _BLANKS.get(key)
    if cached is None or cached[0] is not schema:
        cached = _BLANKS[key] = (schema, _blank_field_record(schema, field_name))
    return copy.deepcopy(cached[1])


#: Blank records per (schema, field), the schema kept so its id is not reused.
_BLANKS: dict[tuple[int, str], tuple[dict[str, Any], dict[str, Any]]] = {}


def _blank_field_record(schema: dict[str, Any], field_name: str) -> dict[str, Any]:
    named = named_types(schema)
    field_type = next(f["type"] for f in schema["fields"] if f["name"] == field_name)
    branches = field_type if isinstance(field_type, list) else [field_type]
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "array":
            branch = branch["items"]
        if branch != "null":
            return blank_record(branch, named)
    raise ValueError(f"{field_name} holds no record")


def _cutouts(field_names: list[str], cutout_bytes: int | Sequence[int], seed: int) -> dict[str, bytes | None]:
    # Random bytes, like the gzip-compressed FITS stamps the real cutouts are.
    rng = np.random.default_rng(seed)
    sizes = [cutout_bytes] * len(field_names) if isinstance(cutout_bytes, int) else list(cutout_bytes)
    if len(sizes) != len(field_names):
        raise ValueError(f"{len(sizes)} cutout sizes for the {len(field_names)} cutouts {field_names}")
    return {name: rng.bytes(size) if size else None for name, size in zip(field_names, sizes, strict=True)}


def _dia_row(
    template: dict[str, Any], fields: DiaRowFields, point: np.void, object_id: int, uppercase_y: bool
) -> dict[str, Any]:
    label = BANDS[point["band"]]
    row = dict(template)
    row.update(
        {
            fields.source_id: int(point["source_id"]),
            fields.time: float(point["time"]),
            fields.flux: float(point["flux"]),
            fields.flux_err: float(point["flux_err"]),
            fields.band: "Y" if uppercase_y and label == "y" else label,
            "diaObjectId": object_id,
        }
    )
    return row


#: Layouts per schema, the schema kept so its id is not reused.
_LAYOUTS: dict[int, tuple[dict[str, Any], DiaLayout]] = {}


def _dia_alert(
    schema: dict[str, Any],
    object_id: int,
    alert_id: int,
    detection: np.void,
    prv_sources: np.ndarray | Sequence[np.void],
    prv_forced: np.ndarray | Sequence[np.void],
    cutout_bytes: int | Sequence[int],
    seed: int,
) -> dict[str, Any]:
    cached = _LAYOUTS.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _LAYOUTS[id(schema)] = (schema, dia_layout(schema))
    layout = cached[1]
    uppercase_y = layout.survey == "elasticc"
    record = blank_record(schema)
    source = _field_record(schema, "diaSource")
    record["diaSource"] = _dia_row(source, layout.source, detection, object_id, uppercase_y)
    record["prvDiaSources"] = [
        _dia_row(source, layout.source, p, object_id, uppercase_y) for p in prv_sources
    ]
    if layout.forced is not None:
        forced = _field_record(schema, "prvDiaForcedSources")
        rows = [_dia_row(forced, layout.forced, p, object_id, uppercase_y) for p in prv_forced]
        record["prvDiaForcedSources"] = rows
    elif len(prv_forced):
        raise ValueError(f"{layout.schema_label} carries no forced photometry")
    if "diaObject" in record:
        record["diaObject"] = {**_field_record(schema, "diaObject"), "diaObjectId": object_id}
    record[layout.alert_id] = alert_id
    cutout_fields = [name for name in record if name.startswith("cutout")]
    record.update(_cutouts(cutout_fields, cutout_bytes, seed))
    return record


def make_lsst_alert(
    object_id: int,
    alert_id: int,
    detection: np.void,
    prv_sources: np.ndarray | Sequence[np.void] = (),
    prv_forced: np.ndarray | Sequence[np.void] = (),
    *,
    cutout_bytes: int | Sequence[int] = 0,
    schema_version: str = DEFAULT_LSST_VERSION,
    seed: int = 0,
) -> dict[str, Any]:
    """A Rubin alert record, valid for ``schema_version``, with the given photometry.

    Parameters
    ----------
    object_id, alert_id : int
        ``diaObjectId`` (also set on every source) and the top-level alert id
        (``alertId`` up to 7.x, ``diaSourceId`` from 8.0).
    detection : numpy.void
        The triggering detection, one :data:`POINT_DTYPE` row (flux in nJy).
    prv_sources, prv_forced : sequence of POINT_DTYPE rows
        History detections and forced measurements.
    cutout_bytes : int or sequence of int
        Size of each cutout (one size for all, or one per cutout field); 0 leaves it null.
    schema_version : str
        Any version lsst-alert-packet ships, e.g. ``"3.0"``, ``"7.4"``, ``"11.1"``.
    seed : int
        Seed of the cutout bytes.

    Returns
    -------
    dict
        The record, ready for :func:`encode_confluent`; edit it to build bad alerts.
    """
    schema = lsst_schema(schema_version)
    return _dia_alert(schema, object_id, alert_id, detection, prv_sources, prv_forced, cutout_bytes, seed)


def make_elasticc_alert(
    object_id: int,
    alert_id: int,
    detection: np.void,
    prv_sources: np.ndarray | Sequence[np.void] = (),
    prv_forced: np.ndarray | Sequence[np.void] = (),
    *,
    cutout_bytes: int | Sequence[int] = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """An ELAsTiCC v0.9 alert record (see :func:`make_lsst_alert`); encode with :func:`encode_schemaless`."""
    schema = elasticc_v0_9_schema()
    return _dia_alert(schema, object_id, alert_id, detection, prv_sources, prv_forced, cutout_bytes, seed)


def _split_light_curve(light_curve: np.ndarray) -> tuple[np.void, np.ndarray, np.ndarray]:
    detections = np.flatnonzero(light_curve["kind"] == PointKind.DETECTION)
    if not len(detections):
        raise ValueError("the light curve has no detection to trigger the alert")
    trigger = detections[-1]
    earlier = light_curve[: trigger + 1]
    history = earlier[:-1]
    return (
        light_curve[trigger],
        history[history["kind"] == PointKind.DETECTION],
        history[history["kind"] == PointKind.FORCED],
    )


def make_lsst_alert_from_light_curve(
    light_curve: np.ndarray, object_id: int, alert_id: int, **options: Any
) -> dict[str, Any]:
    """:func:`make_lsst_alert` triggered by the last detection, with every earlier point as history.

    ``options`` are passed on (``cutout_bytes``, ``schema_version``, ``seed``).
    """
    detection, prv_sources, prv_forced = _split_light_curve(light_curve)
    return make_lsst_alert(object_id, alert_id, detection, prv_sources, prv_forced, **options)


def encode_schemaless(record: Mapping[str, Any], schema: dict[str, Any]) -> bytes:
    """Schemaless Avro bytes of ``record`` (the ELAsTiCC wire format)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, dict(record))
    return buffer.getvalue()


def encode_confluent(record: Mapping[str, Any], schema_version: str = DEFAULT_LSST_VERSION) -> bytes:
    """Rubin wire format: ``0x00``, the 4-byte schema id, then schemaless Avro."""
    schema_id = rubin_schema_id(*_version(schema_version))
    return b"\x00" + schema_id.to_bytes(4, "big") + encode_schemaless(record, lsst_schema(schema_version))


def encode_container(
    records: Iterable[Mapping[str, Any]], schema: dict[str, Any], codec: str = "null"
) -> bytes:
    """An Avro object container file of ``records`` (ZTF messages, archive files)."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [dict(record) for record in records], codec=codec)
    return buffer.getvalue()


def _nullable(name: str, kind: str, null_first: bool = False) -> dict[str, Any]:
    # ZTF puts "null" second in most unions, with a null default all the same.
    return {"name": name, "type": ["null", kind] if null_first else [kind, "null"], "default": None}


_ZTF_FLOATS = ("chipsf", "magap", "sigmagap", "distnr", "magnr", "sigmagnr", "chinr", "sharpnr", "sky")
_ZTF_QUALITY = ("magdiff", "fwhm", "classtar", "mindtoedge", "seeratio", "elong", "rb", "drb")


@cache
def ztf_schema(schema_version: str = DEFAULT_ZTF_VERSION) -> dict[str, Any]:
    """A ZTF-like alert schema: real names, types and order for the photometry fields.

    Version 4.x adds ``fp_hists`` forced photometry; cutouts are ``ztf.alert.cutout``
    records holding gzipped FITS ``stampData``. Other candidate columns are a sample.
    """
    common = [
        {"name": "jd", "type": "double"},
        {"name": "fid", "type": "int"},
        {"name": "pid", "type": "long"},
        _nullable("diffmaglim", "float"),
        _nullable("pdiffimfilename", "string"),
        _nullable("programpi", "string"),
        {"name": "programid", "type": "int"},
    ]
    candidate = [
        *common,
        {"name": "candid", "type": "long"},
        {"name": "isdiffpos", "type": "string"},
        _nullable("tblid", "long"),
        _nullable("nid", "int"),
        _nullable("rcid", "int"),
        _nullable("field", "int"),
        {"name": "ra", "type": "double"},
        {"name": "dec", "type": "double"},
        {"name": "magpsf", "type": "float"},
        {"name": "sigmapsf", "type": "float"},
        *(_nullable(name, "float") for name in (*_ZTF_FLOATS, *_ZTF_QUALITY)),
        _nullable("ssnamenr", "string"),
        {"name": "ndethist", "type": "int"},
        {"name": "rbversion", "type": "string"},
        _nullable("magzpsci", "float"),
        {"name": "drbversion", "type": "string"},
    ]
    prv_candidate = [
        *common,
        _nullable("candid", "long"),
        _nullable("isdiffpos", "string"),
        _nullable("ra", "double"),
        _nullable("dec", "double"),
        _nullable("magpsf", "float"),
        _nullable("sigmapsf", "float"),
        *(_nullable(name, "float") for name in (*_ZTF_FLOATS, *_ZTF_QUALITY)),
        _nullable("magzpsci", "float"),
    ]
    fp_hist = [
        _nullable("field", "int"),
        _nullable("rcid", "int"),
        {"name": "fid", "type": "int"},
        {"name": "pid", "type": "long"},
        {"name": "rfid", "type": "long"},
        *(_nullable(name, "float") for name in ("sciinpseeing", "scibckgnd", "scisigpix", "magzpsci")),
        *(_nullable(name, "float") for name in ("magzpsciunc", "magzpscirms", "clrcoeff", "clrcounc")),
        *(_nullable(name, "float") for name in ("exptime", "adpctdif1", "adpctdif2", "diffmaglim")),
        {"name": "programid", "type": "int"},
        {"name": "jd", "type": "double"},
        _nullable("forcediffimflux", "float"),
        _nullable("forcediffimfluxunc", "float"),
        _nullable("procstatus", "string"),
        _nullable("distnr", "float"),
        {"name": "ranr", "type": "double"},
        {"name": "decnr", "type": "double"},
    ]
    cutout = {
        "type": "record",
        "name": "ztf.alert.cutout",
        "fields": [{"name": "fileName", "type": "string"}, {"name": "stampData", "type": "bytes"}],
    }
    fields = [
        {"name": "schemavsn", "type": "string"},
        {"name": "publisher", "type": "string"},
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {"name": "candidate", "type": {"type": "record", "name": "ztf.alert.candidate", "fields": candidate}},
        {
            "name": "prv_candidates",
            "type": [
                {
                    "type": "array",
                    "items": {"type": "record", "name": "ztf.alert.prv_candidate", "fields": prv_candidate},
                },
                "null",
            ],
            "default": None,
        },
    ]
    if _version(schema_version)[0] >= 4:
        fp_type = {
            "type": "array",
            "items": {"type": "record", "name": "ztf.alert.fp_hist", "fields": fp_hist},
        }
        fields.append({"name": "fp_hists", "type": [fp_type, "null"], "default": None})
    fields.append({"name": "cutoutScience", "type": [cutout, "null"], "default": None})
    fields.append({"name": "cutoutTemplate", "type": ["ztf.alert.cutout", "null"], "default": None})
    fields.append({"name": "cutoutDifference", "type": ["ztf.alert.cutout", "null"], "default": None})
    return parse_record_schema(
        {"type": "record", "name": "ztf.alert", "version": schema_version, "fields": fields}
    )


def _ztf_row(template: dict[str, Any], point: np.void) -> dict[str, Any]:
    band = BANDS[point["band"]]
    if band not in _ZTF_FID:
        raise ValueError(f"ZTF observes in g, r and i, not {band}")
    source_id = int(point["source_id"])
    # magpsf is the magnitude of |difference flux|; isdiffpos carries the sign.
    magpsf, sigmapsf = flux_to_mag(abs(point["flux"]), point["flux_err"])
    if np.isfinite(point["mag"]):
        magpsf, sigmapsf = point["mag"], point["mag_err"]
    return {
        **template,
        "jd": float(point["time"]) + MJD_JD_OFFSET,
        "fid": _ZTF_FID[band],
        "pid": source_id // 1000,
        "diffmaglim": 20.5,
        "candid": source_id,
        "magpsf": float(magpsf),
        "sigmapsf": float(sigmapsf),
        "isdiffpos": "f" if point["flux"] < 0 else "t",
        "magzpsci": ZTF_FORCED_ZERO_POINT,
    }


def make_ztf_alert(
    object_id: str,
    candid: int,
    detection: np.void,
    prv_detections: np.ndarray | Sequence[np.void] = (),
    upper_limits: np.ndarray | Sequence[np.void] = (),
    forced: np.ndarray | Sequence[np.void] = (),
    *,
    cutout_bytes: int | Sequence[int] = 0,
    schema_version: str = DEFAULT_ZTF_VERSION,
    seed: int = 0,
) -> dict[str, Any]:
    """A ZTF-like alert record with the given photometry (encode with :func:`encode_ztf_container`).

    Parameters
    ----------
    object_id : str
        ``objectId``, e.g. ``"ZTF24aaaaaaa"``.
    candid : int
        Top-level ``candid``; the trigger's ``candid`` is its ``source_id``.
    detection, prv_detections : POINT_DTYPE rows
        Detections: ``mag``/``mag_err`` become ``magpsf``/``sigmapsf``, the sign of
        ``flux`` becomes ``isdiffpos``, ``pid`` is ``source_id // 1000``.
    upper_limits : POINT_DTYPE rows
        Non-detections: ``mag`` becomes ``diffmaglim``, ``source_id`` the ``pid``.
    forced : POINT_DTYPE rows
        ``fp_hists`` rows (4.x only): nJy ``flux`` written in DN for zero point
        :data:`ZTF_FORCED_ZERO_POINT`, ``source_id`` as ``pid``.
    cutout_bytes : int or sequence of int
        Size of each cutout's ``stampData``; 0 leaves the cutout null.
    schema_version : str
        ``"3.3"`` or ``"4.02"``-like; 3.x cannot carry ``forced``.
    seed : int
        Seed of the cutout bytes.
    """
    schema = ztf_schema(schema_version)
    record = blank_record(schema)
    candidate = _ztf_row(_field_record(schema, "candidate"), detection)
    prv_template = _field_record(schema, "prv_candidates")
    prv = [_ztf_row(prv_template, point) for point in prv_detections]
    for point in upper_limits:
        row = _ztf_row(prv_template, point)
        row.update(pid=int(point["source_id"]), diffmaglim=float(point["mag"]), candid=None, isdiffpos=None)
        row.update(magpsf=None, sigmapsf=None)
        prv.append(row)
    record.update(schemavsn=schema_version, publisher="streamer.synthetic", objectId=object_id, candid=candid)
    record.update(candidate=candidate, prv_candidates=prv)
    if len(forced):
        if "fp_hists" not in record:
            raise ValueError(f"ZTF {schema_version} carries no forced photometry")
        fp_template = _field_record(schema, "fp_hists")
        to_dn = 10.0 ** (0.4 * (ZTF_FORCED_ZERO_POINT - NJY_ZERO_POINT))
        record["fp_hists"] = [
            {
                **fp_template,
                "fid": _ZTF_FID[BANDS[point["band"]]],
                "pid": int(point["source_id"]),
                "jd": float(point["time"]) + MJD_JD_OFFSET,
                "magzpsci": ZTF_FORCED_ZERO_POINT,
                "forcediffimflux": float(point["flux"]) * to_dn,
                "forcediffimfluxunc": float(point["flux_err"]) * to_dn,
            }
            for point in forced
        ]
    names = ["cutoutScience", "cutoutTemplate", "cutoutDifference"]
    for name, stamp in _cutouts(names, cutout_bytes, seed).items():
        record[name] = None if stamp is None else {"fileName": f"{name}.fits.gz", "stampData": stamp}
    return record


def encode_ztf_container(record: Mapping[str, Any], schema_version: str = DEFAULT_ZTF_VERSION) -> bytes:
    """One ZTF alert as ZTF publishes it: a container file with the schema embedded."""
    return encode_container([record], ztf_schema(schema_version))
