"""Embedding records: what streamer publishes, one per accepted alert.

The Avro schema is ``schemas/embedding.avsc``; :func:`record_schema` parses it once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

#: The published schema, kept at the repository's top level (``schemas/``).
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "embedding.avsc"


@cache
def record_schema() -> dict[str, Any]:
    """Parsed Avro schema of :class:`EmbeddingRecord`."""
    schema: dict[str, Any] = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))  # type: ignore[assignment]
    return schema


@dataclass(frozen=True, slots=True)
class EmbeddingRecord:
    """The embedding of one object's light curve as of one alert.

    ``embedding`` is a float32 array of shape ``(bands, subsamples, sequence or 1, dim)``.
    """

    object_id: str
    survey: str
    alert_id: int
    alert_time: float
    model: str
    model_sha256: str | None
    output: str
    reduction: str
    bands: tuple[str, ...]
    points_per_band: dict[str, int]
    embedding: np.ndarray
    produced_at_ms: int

    def to_avro(self) -> dict[str, Any]:
        """The record as a dict for ``fastavro`` (``schemas/embedding.avsc``)."""
        values = np.ascontiguousarray(self.embedding, dtype=np.float32)
        return {
            "object_id": self.object_id,
            "survey": self.survey,
            "alert_id": int(self.alert_id),
            "alert_time": float(self.alert_time),
            "model": self.model,
            "model_sha256": self.model_sha256,
            "output": self.output,
            "reduction": self.reduction,
            "bands": list(self.bands),
            "points_per_band": {k: int(v) for k, v in self.points_per_band.items()},
            "shape": list(values.shape),
            "embedding": values.ravel().tolist(),
            "produced_at": int(self.produced_at_ms),
        }

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> EmbeddingRecord:
        """Inverse of :meth:`to_avro` (``produced_at`` may be a datetime from fastavro)."""
        produced = data["produced_at"]
        if not isinstance(produced, int):
            produced = int(produced.timestamp() * 1000)
        return cls(
            object_id=data["object_id"],
            survey=data["survey"],
            alert_id=data["alert_id"],
            alert_time=data["alert_time"],
            model=data["model"],
            model_sha256=data["model_sha256"],
            output=data["output"],
            reduction=data["reduction"],
            bands=tuple(data["bands"]),
            points_per_band=dict(data["points_per_band"]),
            embedding=np.asarray(data["embedding"], dtype=np.float32).reshape(data["shape"]),
            produced_at_ms=produced,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (same fields as the Avro record)."""
        return self.to_avro()
