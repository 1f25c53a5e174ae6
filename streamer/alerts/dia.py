"""Rubin (every lsst-alert-packet version) and ELAsTiCC alerts: DIA sources to points.

Both streams carry the triggering ``diaSource`` plus ``prvDiaSources`` (detections) and
``prvDiaForcedSources`` (forced photometry), fluxes in nJy. Field names changed over the
Rubin versions (``midPointTai``/``psFlux``/``filterName`` up to 4.0, ``midpointMjdTai``/
``psfFlux``/``band`` from 5.0), so they are looked up once per writer schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.points import BAND_CODES, NO_BAND, finish_points, point_rows
from streamer.alerts.projection import named_types
from streamer.alerts.schemas import INTEGER, NUMERIC, check_fields, record_schema
from streamer.photometry import DecodedAlert, PointKind, flux_to_mag

#: Fields read from DIA alerts, at any depth (see :func:`~streamer.alerts.projection.reader_schema`);
#: cutouts, diaObject summaries and every other column are skipped.
DIA_FIELDS = frozenset(
    {
        "alertId",
        "diaSourceId",
        "diaForcedSourceId",
        "diaObjectId",
        "diaSource",
        "prvDiaSources",
        "prvDiaForcedSources",
        "diaObject",
        "midpointMjdTai",
        "midPointTai",
        "psfFlux",
        "psfFluxErr",
        "psFlux",
        "psFluxErr",
        "band",
        "filterName",
    }
)

_TIME_NAMES = ("midpointMjdTai", "midPointTai")
_FLUX_NAMES = ("psfFlux", "psFlux")
_FLUX_ERR_NAMES = ("psfFluxErr", "psFluxErr")
_BAND_NAMES = ("band", "filterName")


@dataclass(frozen=True, slots=True)
class DiaRowFields:
    """Names of the photometry fields of one DIA record type in one schema version."""

    source_id: str
    time: str
    flux: str
    flux_err: str
    band: str
    columns: itemgetter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One C call per row pulls all five values.
        getter = itemgetter(self.source_id, self.time, self.flux, self.flux_err, self.band)
        object.__setattr__(self, "columns", getter)


@dataclass(frozen=True, slots=True)
class DiaLayout:
    """How to read photometry from alerts written with one DIA writer schema.

    Attributes
    ----------
    survey : str
        ``"lsst"`` or ``"elasticc"``.
    schema_label : str
        Schema name without ``.alert``, e.g. ``"lsst.v7_4"``.
    alert_id : str
        Top-level alert identifier: ``alertId`` (Rubin <= 7.x, ELAsTiCC) or
        ``diaSourceId`` (Rubin >= 8.0).
    source, forced : DiaRowFields
        Field names in ``diaSource`` and ``diaForcedSource`` records (``forced`` is None
        when the schema carries no forced photometry).
    """

    survey: str
    schema_label: str
    alert_id: str
    source: DiaRowFields
    forced: DiaRowFields | None


def _row_fields(record: dict[str, Any] | None, id_name: str, where: str) -> DiaRowFields:
    names = {f["name"] for f in record["fields"]} if record else set()

    def pick(options: Sequence[str]) -> str:
        for option in options:
            if option in names:
                return option
        raise RejectedAlert("unknown_schema", f"{where} has none of the fields {list(options)}")

    fields = DiaRowFields(
        pick([id_name]), pick(_TIME_NAMES), pick(_FLUX_NAMES), pick(_FLUX_ERR_NAMES), pick(_BAND_NAMES)
    )
    nullable_number = NUMERIC | {"null"}
    expected = {
        fields.source_id: INTEGER,
        fields.time: nullable_number,
        fields.flux: nullable_number,
        fields.flux_err: nullable_number,
        fields.band: frozenset({"string", "null"}),
        "diaObjectId": INTEGER | {"null"},
    }
    check_fields(record, expected, where)
    return fields


def dia_layout(schema: dict[str, Any]) -> DiaLayout:
    """Find the photometry fields of a Rubin or ELAsTiCC writer schema.

    Raises
    ------
    RejectedAlert
        ``unknown_schema`` when the schema lacks the fields the mapping needs.
    """
    name = schema["name"]
    named = named_types(schema)
    top = {f["name"]: f["type"] for f in schema["fields"]}
    alert_id = next((key for key in ("alertId", "diaSourceId") if key in top), None)
    if alert_id is None or "diaSource" not in top:
        raise RejectedAlert("unknown_schema", f"{name}: no alertId/diaSourceId or diaSource field")
    check_fields(schema, {alert_id: INTEGER}, name)
    if not isinstance(top["diaSource"], dict | str):
        raise RejectedAlert("unknown_schema", f"{name}.diaSource may be null")
    source = _row_fields(record_schema(top["diaSource"], named), "diaSourceId", f"{name}.diaSource")
    forced = None
    if "prvDiaForcedSources" in top:
        forced_record = record_schema(top["prvDiaForcedSources"], named)
        forced = _row_fields(forced_record, "diaForcedSourceId", f"{name}.prvDiaForcedSources")
    if "prvDiaSources" in top:
        history = _row_fields(
            record_schema(top["prvDiaSources"], named), "diaSourceId", f"{name}.prvDiaSources"
        )
        if history != source:
            raise RejectedAlert("unknown_schema", f"{name}: prvDiaSources rows differ from diaSource")
    if "diaObject" in top:
        check_fields(
            record_schema(top["diaObject"], named), {"diaObjectId": INTEGER | {"null"}}, f"{name}.diaObject"
        )
    survey = name.split(".", 1)[0]
    return DiaLayout(survey, name.removesuffix(".alert"), alert_id, source, forced)


def _points(rows: list[dict[str, Any]], fields: DiaRowFields, kind: PointKind, known_at: float) -> np.ndarray:
    source_id, time, raw_flux, raw_err, band = zip(*map(fields.columns, rows), strict=True)
    flux = np.asarray(raw_flux, dtype=np.float64)
    flux_err = np.asarray(raw_err, dtype=np.float64)
    with np.errstate(all="ignore"):
        mag, mag_err = flux_to_mag(flux, flux_err)
    return point_rows(
        source_id=source_id,
        time=time,
        flux=flux,
        flux_err=flux_err,
        mag=mag,
        mag_err=mag_err,
        band=[BAND_CODES.get(label, NO_BAND) for label in band],
        kind=kind,
        known_at=known_at,
    )


def dia_alert(record: dict[str, Any], layout: DiaLayout, dropped: Counter[str]) -> DecodedAlert:
    """Turn a projected DIA alert record into a :class:`DecodedAlert`.

    Parameters
    ----------
    record : dict
        The alert as read with :data:`DIA_FIELDS`.
    layout : DiaLayout
        Field names of the record's writer schema.
    dropped : collections.Counter
        Incremented by check name for every history row dropped as unusable.

    Raises
    ------
    RejectedAlert
        ``null_object_id``, or the failed check of an unusable triggering detection.
    """
    trigger = record["diaSource"]
    object_id = trigger.get("diaObjectId")
    if object_id is None and record.get("diaObject"):
        object_id = record["diaObject"].get("diaObjectId")
    if object_id is None:
        raise RejectedAlert("null_object_id", f"alert {record[layout.alert_id]}: diaObjectId is null")

    trigger_time = trigger[layout.source.time]
    alert_time = float("nan") if trigger_time is None else float(trigger_time)
    groups = [
        _points(
            [trigger, *(record.get("prvDiaSources") or ())], layout.source, PointKind.DETECTION, alert_time
        )
    ]
    forced_rows = record.get("prvDiaForcedSources")
    if forced_rows and layout.forced is not None:
        groups.append(_points(forced_rows, layout.forced, PointKind.FORCED, alert_time))
    points = finish_points(groups, dropped)
    return DecodedAlert(
        survey=layout.survey,
        object_id=str(object_id),
        alert_id=record[layout.alert_id],
        alert_time=alert_time,
        points=points,
        schema=layout.schema_label,
    )
