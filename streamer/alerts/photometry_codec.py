"""Compact photometry records: a :class:`~streamer.photometry.DecodedAlert` as Avro bytes.

``streamer repartition`` re-keys an upstream alert topic by object id into a topic of
these records; ``AlertDecoder(framing="photometry")`` (or ``"auto"``) reads them back. The
schema is ``schemas/photometry.avsc``: the alert's survey, object id, alert id, alert
time, the schema it was decoded with, and its points as parallel arrays, one per field of
:data:`~streamer.photometry.POINT_DTYPE`. The round trip is exact, floats bit for bit
(NaN included), so the records ``streamer run`` makes from this topic equal those it makes
from the original alerts.

Values use Avro *single-object encoding*, as the embedding records do without a registry:
``0xC3 0x01``, the schema's CRC-64-AVRO fingerprint (8 bytes, little-endian), then the
Avro binary written by fastavro. The fingerprint tells these values from every other
framing and from records of another schema.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streamer.alerts.errors import RejectedAlert
from streamer.alerts.projection import Projection
from streamer.alerts.schemas import load_schema_file
from streamer.photometry import BANDS, POINT_DTYPE, DecodedAlert, PointKind

#: The published schema, in the repository's top-level ``schemas/`` (as ``embedding.avsc``).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "photometry.avsc"
#: Avro single-object encoding's marker.
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
#: Magic and fingerprint: the bytes before the Avro data.
HEADER_SIZE = 10
#: Kafka ``content-type`` header of photometry values.
CONTENT_TYPE = "application/vnd.apache.avro+binary; schema=org.streamer.v1.PhotometryRecord"

_POINT_FIELDS: tuple[str, ...] = POINT_DTYPE.names or ()


@cache
def photometry_schema() -> dict[str, Any]:
    """Parsed Avro schema of photometry records (``schemas/photometry.avsc``)."""
    return load_schema_file(SCHEMA_PATH)


def single_object_header(schema: dict[str, Any]) -> bytes:
    """Avro single-object encoding's 10-byte header of ``schema``: magic, then its CRC-64-AVRO
    fingerprint (little-endian)."""
    canonical = to_parsing_canonical_form(schema)
    return SINGLE_OBJECT_MAGIC + struct.pack("<Q", int(fingerprint(canonical, "CRC-64-AVRO"), 16))


@cache
def header() -> bytes:
    """The 10 bytes every photometry value starts with: magic, then the schema's fingerprint."""
    return single_object_header(photometry_schema())


@cache
def _projection() -> Projection:
    # Every field: the projection is here for its classification of bad bytes.
    top = [field["name"] for field in photometry_schema()["fields"]]
    return Projection(photometry_schema(), [*top, *_POINT_FIELDS])


def is_photometry(message: bytes) -> bool:
    """Whether ``message`` starts like a photometry value (magic and this schema's fingerprint)."""
    return message[:HEADER_SIZE] == header()


def encode(alert: DecodedAlert) -> bytes:
    """The single-object encoded photometry record of ``alert``.

    Parameters
    ----------
    alert : DecodedAlert
        Its ``points`` must have the fields of :data:`~streamer.photometry.POINT_DTYPE`.
    """
    buffer = io.BytesIO()
    buffer.write(header())
    fastavro.schemaless_writer(
        buffer,
        photometry_schema(),
        {
            "survey": alert.survey,
            "object_id": alert.object_id,
            "alert_id": int(alert.alert_id),
            "alert_time": float(alert.alert_time),
            "schema": alert.schema,
            "points": points_to_columns(alert.points),
        },
    )
    return buffer.getvalue()


def decode(message: bytes) -> DecodedAlert:
    """The :class:`DecodedAlert` a photometry value was encoded from, exactly.

    Raises
    ------
    RejectedAlert
        ``truncated``, ``bad_magic`` (not single-object encoded), ``unknown_schema``
        (another schema's fingerprint), ``schema_mismatch`` (bytes that are not this
        schema's, or arrays of different lengths) or ``unknown_band``.
    """
    message = bytes(message)
    if message[:2] != SINGLE_OBJECT_MAGIC[: len(message)]:
        raise RejectedAlert("bad_magic", f"photometry values start with 0xC3 0x01, got {message[:2]!r}")
    if len(message) < HEADER_SIZE:
        raise RejectedAlert("truncated", f"{len(message)} bytes cannot hold the single-object header")
    if message[2:HEADER_SIZE] != header()[2:]:
        raise RejectedAlert(
            "unknown_schema", f"fingerprint {message[2:HEADER_SIZE].hex()} is not schemas/photometry.avsc's"
        )
    record = _projection().read_whole(message, HEADER_SIZE)
    points = points_from_columns(record["points"])
    return DecodedAlert(
        survey=record["survey"],
        object_id=record["object_id"],
        alert_id=record["alert_id"],
        alert_time=record["alert_time"],
        points=points,
        schema=record["schema"],
    )


def points_to_columns(points: np.ndarray) -> dict[str, list[Any]]:
    """The ``PhotometryPoints`` record of some rows: one list per field of :data:`POINT_DTYPE`."""
    return {name: points[name].tolist() for name in _POINT_FIELDS}


def points_from_columns(columns: dict[str, list[Any]]) -> np.ndarray:
    """Rows of :data:`POINT_DTYPE` from a decoded ``PhotometryPoints`` record, exactly.

    Raises
    ------
    RejectedAlert
        ``schema_mismatch`` (arrays of different lengths, unknown kinds) or ``unknown_band``.
    """
    size = len(columns["time"])
    if any(len(columns[name]) != size for name in _POINT_FIELDS):
        lengths = {name: len(columns[name]) for name in _POINT_FIELDS}
        raise RejectedAlert("schema_mismatch", f"point arrays of different lengths: {lengths}")
    band = np.asarray(columns["band"], dtype=np.int64)
    kind = np.asarray(columns["kind"], dtype=np.int64)
    if np.any((band < 0) | (band >= len(BANDS))):
        raise RejectedAlert(
            "unknown_band", f"band indices outside 0-{len(BANDS) - 1}: {sorted(set(band.tolist()))}"
        )
    if np.any((kind < 0) | (kind >= len(PointKind))):  # PointKind counts from 0
        raise RejectedAlert(
            "schema_mismatch", f"point kinds outside 0-{len(PointKind) - 1}: {sorted(set(kind.tolist()))}"
        )
    points = np.empty(size, POINT_DTYPE)
    for name in _POINT_FIELDS:
        points[name] = band if name == "band" else kind if name == "kind" else columns[name]
    return points
