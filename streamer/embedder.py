"""Light curves of updated objects -> embedding records, through one batched model call.

This is the arrow between the history store and the sink: it turns each alert's as-of
light curve (history rows, :data:`~streamer.photometry.POINT_DTYPE`) into the model's
inputs, embeds all of them with :meth:`~streamer.embed.EmbeddingSession.embed_many`, and
wraps the results as :class:`~streamer.records.EmbeddingRecord`.

Model inputs:

* ATCAT: every detection and forced point with finite flux and error, in nJy
  (``mag_zp=31.4``), band index u0 g1 r2 i3 z4 y5, all bands in one sequence.
* Astromer: magnitudes, one band at a time; every band with at least one point of
  finite magnitude (positive flux) is embedded and listed in the record's ``bands``.

Upper limits are never fed to the models.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.embed import (
    ATCAT,
    Astromer1,
    Astromer1ZTF,
    Astromer2,
    EmbeddingSession,
    MultipleReductions,
    SingleBandModel,
)
from streamer.photometry import BANDS, DecodedAlert, PointKind
from streamer.records import EmbeddingRecord

#: Model names accepted by the CLI and configuration.
MODELS: dict[str, type[EmbeddingSession]] = {
    "atcat": ATCAT,
    "astromer1": Astromer1,
    "astromer1-ztf": Astromer1ZTF,
    "astromer2": Astromer2,
}


def load_model(
    name: str = "atcat",
    *,
    model_file: str | os.PathLike[str] | None = None,
    output: str | None = None,
    reduction: str | list[str] = "non-overlapping-windows",
    reduction_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
    cache_bytes: int = 0,
    use_fp16: bool = False,
    ort_session_kwargs: dict[str, Any] | None = None,
) -> EmbeddingSession:
    """Model by name, from ``model_file`` when given, else from the HuggingFace Hub.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`; with ``model_file`` it says which family the file is.
    model_file : path, optional
        Local ONNX file (the offline path).
    output : str, optional
        Model output; default ``last`` for ATCAT, ``mean`` for Astromer.
    reduction, reduction_kwargs, batch_size, cache_bytes, ort_session_kwargs
        See :class:`~streamer.embed.EmbeddingSession`.
    use_fp16 : bool
        ATCAT from the Hub: take ``atcat_fp16.onnx``.

    Raises
    ------
    ValueError
        Unknown model name or output.
    streamer.embed.ModelUnavailable
        File missing, or Hub unreachable and nothing cached.
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    kwargs: dict[str, Any] = {
        "reduction": reduction,
        "reduction_kwargs": reduction_kwargs,
        "batch_size": batch_size,
        "cache_bytes": cache_bytes,
    }
    if output is not None:
        kwargs["output"] = output
    if model_file is not None:
        return cls.from_path(model_file, ort_session_kwargs=ort_session_kwargs, **kwargs)
    if cls is ATCAT:
        return ATCAT.from_hf(use_fp16=use_fp16, ort_session_kwargs=ort_session_kwargs, **kwargs)
    return cls.from_hf(ort_session_kwargs=ort_session_kwargs, **kwargs)


@dataclass(frozen=True, slots=True)
class EmbeddingFailure:
    """An alert whose light curve could not be embedded, with the reason."""

    alert: DecodedAlert
    reason: str
    detail: str


def reduction_name(model: EmbeddingSession) -> str:
    """Reduction as written in records, e.g. ``non-overlapping-windows`` or ``beginning,end``."""

    def one(r: object) -> str:
        name = type(r).__name__
        return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")

    if isinstance(model.reduction, MultipleReductions):
        return ",".join(one(r) for r in model.reduction.reductions)
    return one(model.reduction)


class LightCurveEmbedder:
    """Embeds as-of light curves of alerts in one batched model call.

    Parameters
    ----------
    model : EmbeddingSession
        ATCAT (``band_groups=None``, bands as indices) or an Astromer model with
        ``bands=None`` (bands are split here, one light curve per band).
    model_name : str
        Name written to records.
    clock : callable
        Seconds since the epoch, for ``produced_at`` (replaceable in tests).
    memo_bytes : int
        Budget of the curve memo: embeddings of recently embedded model inputs (one
        light curve, or one band of one), keyed by their content. An alert that adds no
        point to a curve (a repeat, or a point in another band for Astromer) is answered
        from it without touching the model. 0 disables it; it is always off for the
        ``random-subsample`` reduction, whose output depends on the random stream.
    """

    def __init__(
        self, model: EmbeddingSession, model_name: str, clock: Any = time.time, memo_bytes: int = 0
    ) -> None:
        if isinstance(model, ATCAT) and model.band_groups is not None:
            raise ValueError("the pipeline feeds ATCAT band indices: build it with band_groups=None")
        if isinstance(model, SingleBandModel) and model.bands is not None:
            raise ValueError("the pipeline splits bands itself: build Astromer models with bands=None")
        self.model = model
        self.model_name = model_name
        self.clock = clock
        self.reduction = reduction_name(model)
        self.memo = CurveMemo(0 if "random" in self.reduction else memo_bytes)

    def embed(
        self, alerts: Sequence[DecodedAlert], curves: Sequence[np.ndarray]
    ) -> tuple[list[EmbeddingRecord], list[EmbeddingFailure]]:
        """Records for the alerts whose curves can be embedded, failures for the rest.

        Parameters
        ----------
        alerts : sequence of DecodedAlert
        curves : sequence of numpy.ndarray
            As-of light curve of each alert (history rows, time-ordered).
        """
        inputs: list[tuple[np.ndarray, ...]] = []
        # For each alert: its band labels and the range of its rows in ``inputs``.
        layout: list[tuple[int, tuple[str, ...], dict[str, int]] | None] = []
        failures: list[EmbeddingFailure] = []
        for alert, curve in zip(alerts, curves, strict=True):
            usable = curve[curve["kind"] != PointKind.UPPER_LIMIT]
            if isinstance(self.model, ATCAT):
                pieces, bands, counts = self._atcat_inputs(usable)
            else:
                pieces, bands, counts = self._astromer_inputs(usable)
            if not pieces:
                layout.append(None)
                failures.append(EmbeddingFailure(alert, "no_usable_point", "no point the model can use"))
                continue
            layout.append((len(inputs), bands, counts))
            inputs.extend(pieces)
        if not inputs:
            return [], failures
        embeddings = self._embed_inputs(inputs)
        produced_at = int(self.clock() * 1000)
        records = []
        for alert, slot in zip(alerts, layout, strict=True):
            if slot is None:
                continue
            start, bands, counts = slot
            if isinstance(self.model, ATCAT):
                embedding = embeddings[start]
            else:  # one single-band curve per band: stack them on the band axis
                embedding = embeddings[start : start + len(bands), 0]
            records.append(
                EmbeddingRecord(
                    object_id=alert.object_id,
                    survey=alert.survey,
                    alert_id=alert.alert_id,
                    alert_time=alert.alert_time,
                    model=self.model_name,
                    model_sha256=self.model.model_sha256,
                    output=self.model.output,
                    reduction=self.reduction,
                    bands=bands,
                    points_per_band=counts,
                    embedding=np.asarray(embedding, dtype=np.float32),
                    produced_at_ms=produced_at,
                )
            )
        return records, failures

    def _embed_inputs(self, inputs: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        """``embed_many`` on the inputs the memo does not know (each distinct one once)."""
        if not self.memo.budget:
            return self.model.embed_many(inputs)
        keys = [self.memo.key(piece) for piece in inputs]
        out: list[np.ndarray | None] = [self.memo.get(k) for k in keys]
        todo: dict[bytes, int] = {}
        for i, (k, found) in enumerate(zip(keys, out, strict=True)):
            if found is None and k not in todo:
                todo[k] = i
        fresh: dict[bytes, np.ndarray] = {}
        if todo:
            computed = self.model.embed_many([inputs[i] for i in todo.values()])
            for k, embedding in zip(todo, computed, strict=True):
                fresh[k] = np.asarray(embedding)
                self.memo.put(k, fresh[k])
        self.memo.misses += len(todo)
        self.memo.hits += sum(found is None for found in out) - len(todo)  # repeats within the batch
        return np.stack([fresh[k] if found is None else found for k, found in zip(keys, out, strict=True)])

    @staticmethod
    def _atcat_inputs(
        points: np.ndarray,
    ) -> tuple[list[tuple[np.ndarray, ...]], tuple[str, ...], dict[str, int]]:
        ok = np.isfinite(points["flux"]) & np.isfinite(points["flux_err"]) & (points["flux_err"] >= 0)
        points = points[ok]
        if points.size == 0:
            return [], (), {}
        counts = np.bincount(points["band"], minlength=len(BANDS))
        per_band = {BANDS[b]: int(n) for b, n in enumerate(counts) if n}
        band = points["band"].astype(np.int64)
        return [(points["time"], points["flux"], points["flux_err"], band)], ("ugrizy",), per_band

    @staticmethod
    def _astromer_inputs(
        points: np.ndarray,
    ) -> tuple[list[tuple[np.ndarray, ...]], tuple[str, ...], dict[str, int]]:
        points = points[np.isfinite(points["mag"])]
        pieces: list[tuple[np.ndarray, ...]] = []
        bands: list[str] = []
        counts: dict[str, int] = {}
        for b, label in enumerate(BANDS):
            selected = points[points["band"] == b]
            if selected.size:
                pieces.append((selected["time"], selected["mag"]))
                bands.append(label)
                counts[label] = int(selected.size)
        return pieces, tuple(bands), counts


class CurveMemo:
    """Content-keyed LRU of whole-input embeddings, bounded in bytes.

    Attributes
    ----------
    hits, misses : int
        Inputs answered from the memo, and distinct inputs sent to the model.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @staticmethod
    def key(piece: tuple[np.ndarray, ...]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for array in piece:
            a = np.ascontiguousarray(array)
            h.update(a.dtype.str.encode())
            h.update(len(a).to_bytes(8, "little"))
            h.update(a.tobytes())
        return h.digest()

    def get(self, key: bytes, *, count: bool = True) -> np.ndarray | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += count
        return found

    def put(self, key: bytes, embedding: np.ndarray) -> None:
        if embedding.nbytes > self.budget:
            return
        # The memo hands out this array again: freeze it so no caller can change a later record.
        embedding = embedding.copy()
        embedding.flags.writeable = False
        self._entries[key] = embedding
        self.used += embedding.nbytes
        while self.used > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self.used -= dropped.nbytes
