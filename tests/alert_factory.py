"""Rubin-framed alerts of several objects with known light curves, for end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

import streamer.embed as se
from streamer.alerts import synthetic


@dataclass(frozen=True)
class GeneratedAlert:
    name: str
    object_id: str
    alert_id: int
    data: bytes
    curve: np.ndarray  # the light curve the alert's record must embed


def make_alerts(
    n_objects: int = 3,
    every: int = 4,
    base_points: int = 40,
    cutout_bytes: int = 2000,
    first_object_id: int = 1000,
    history_window: int | None = None,
) -> list[GeneratedAlert]:
    """Alerts at every ``every``-th detection of multi-night, multi-band light curves.

    Objects are numbered from ``first_object_id``, and object *n*'s source ids count up
    from 10,000 * (*n* - 999): calls with distinct object ranges share no alert or point.

    With ``history_window``, an alert carries only its last ``history_window`` points (the
    trigger included), as real alerts carry a window of the past: its ``curve`` (the whole
    light curve up to the trigger) is then what it embeds only when the object's earlier
    alerts are in the history (``every=1`` and a window of 3 or more carry every point).
    """
    out = []
    for k in range(n_objects):
        object_id = first_object_id + k
        curve = synthetic.make_light_curve(
            base_points + 25 * (k % 4),
            cadence_days=0.9 + k % 3,
            first_source_id=10_000 * (object_id - 999),
            seed=k,
        )
        detections = np.flatnonzero(curve["kind"] == 0)
        for i in detections[::every]:
            alert_id = int(curve["source_id"][i])
            first = 0 if history_window is None else max(0, i + 1 - history_window)
            record = synthetic.make_lsst_alert_from_light_curve(
                curve[first : i + 1], object_id=object_id, alert_id=alert_id, cutout_bytes=cutout_bytes
            )
            data = synthetic.encode_confluent(record)
            out.append(
                GeneratedAlert(f"{object_id}-{alert_id}.avro", str(object_id), alert_id, data, curve[: i + 1])
            )
    return out


@cache
def _atcat(path: str) -> se.ATCAT:
    return se.ATCAT(ort.InferenceSession(path))


def expected_embedding(atcat_file: Path, curve: np.ndarray) -> np.ndarray:
    """What the ATCAT file gives for a light curve, called directly."""
    model = _atcat(str(atcat_file))
    return model(curve["time"], curve["flux"], curve["flux_err"], curve["band"].astype(np.int64))
