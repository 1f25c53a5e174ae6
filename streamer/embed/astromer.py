"""Astromer family: single-band transformers over magnitudes (Astromer 1, 1-ZTF, 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.embed.model import SingleBandModel
from streamer.embed.tensors import AstromerInputs

if TYPE_CHECKING:
    from typing import Self

    import onnxruntime as ort
    from numpy.typing import ArrayLike

    from streamer.embed.reduction import Reduction


class _AstromerModel(SingleBandModel):
    """Shared pre-processing of the Astromer models.

    Each window is centred independently: time and magnitude minus their mean over the
    window's valid points, computed in the input precision (float64 for float64 input)
    before the cast to float32, so MJD-sized times keep their precision.

    Outputs are 4-D ``(n_bands, n_subsamples, seq, 256)``: ``seq`` is 1 for ``"mean"`` and
    ``"max"`` and 200 for ``"sequence"``.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    output : {"mean", "max", "sequence"}
    bands : sequence of str or int, optional
        Band labels; ``None`` treats the light curve as one band.
    reduction : str, list of str, or Reduction
        Defaults to ``"non-overlapping-windows"``.
    reduction_kwargs : dict, optional
    **engine_kwargs
        ``batch_size``, ``cache_bytes`` (see :class:`~streamer.embed.EmbeddingSession`).
    """

    seq_size: int = 200
    dtype: type = np.float32
    hf_filename: str
    model_outputs: frozenset[str] = frozenset({"mean", "max", "sequence"})
    value_names = ("time", "mag")
    #: Astromer-1-sized models ran fastest with 2-8 windows per run on a 2-core CPU.
    default_batch_size = 4

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        output: str = "mean",
        bands: Sequence[str | int] | None = None,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(
            session, bands=bands, reduction=reduction, reduction_kwargs=reduction_kwargs, **engine_kwargs
        )
        if output not in self.model_outputs:
            raise ValueError(
                f"Unknown output '{output}'. Must be one of: {', '.join(sorted(self.model_outputs))}"
            )
        self.output = output

    def __call__(self, time: ArrayLike, mag: ArrayLike, band: ArrayLike | None = None) -> np.ndarray:  # type: ignore[override]
        """Embed a light curve.

        Parameters
        ----------
        time : array-like, shape ``(n,)``
            Observation times in days (e.g. MJD).
        mag : array-like, shape ``(n,)``
            Magnitudes.
        band : array-like, shape ``(n,)``, optional
            Band labels, required when ``bands`` was given.

        Returns
        -------
        numpy.ndarray, shape ``(n_bands, n_subsamples, seq, 256)``
        """
        return super().__call__(time, mag, band=band)

    @classmethod
    def from_hf(  # type: ignore[override]
        cls,
        output: str = "mean",
        *,
        bands: Sequence[str | int] | None = None,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        ort_session_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> Self:
        """Load the model from the HuggingFace Hub (see :meth:`EmbeddingSession.from_hf`)."""
        return super().from_hf(
            cls.hf_filename,
            output=output,
            bands=bands,
            reduction=reduction,
            reduction_kwargs=reduction_kwargs,
            ort_session_kwargs=ort_session_kwargs,
            **engine_kwargs,
        )

    def preprocess_lc(self, time: ArrayLike, mag: ArrayLike) -> AstromerInputs:  # type: ignore[override]
        """Model tensors of one single-band light curve."""
        return super().preprocess_lc(time, mag)  # type: ignore[return-value]

    def _window_tensors(self, *padded: np.ndarray) -> AstromerInputs:
        time, mag, mask = padded
        n_valid = mask.sum(axis=-1, keepdims=True)
        time_mean = (time * mask).sum(axis=-1, keepdims=True) / n_valid
        mag_mean = (mag * mask).sum(axis=-1, keepdims=True) / n_valid
        # Padding stays exactly 0: only valid positions are centred.
        time = np.where(mask, time - time_mean, time).astype(self.dtype)
        mag = np.where(mask, mag - mag_mean, mag).astype(self.dtype)
        idx = (..., np.newaxis)
        return AstromerInputs(
            times=time[idx], input=mag[idx], mask_in=mask.astype(self.dtype)[idx], bool_mask=mask
        )


class Astromer1(_AstromerModel):
    """Astromer 1 (Donoso-Oliva et al. 2023, A&A 670, A54): MACHO R-band, 256-d, MIT.

    Hub: ``light-curve/astromer1`` / ``astromer1.onnx``.
    """

    hf_repo = "light-curve/astromer1"
    hf_filename = "astromer1.onnx"


class Astromer1ZTF(_AstromerModel):
    """Astromer 1 fine-tuned on ZTF DR20 g band (Nakoneczny et al. 2025), GPL-3.0.

    Hub: ``light-curve/astromer1-ztfdr20`` / ``astromer1_ztfdr20.onnx``.
    """

    hf_repo = "light-curve/astromer1-ztfdr20"
    hf_filename = "astromer1_ztfdr20.onnx"


class Astromer2(_AstromerModel):
    """Astromer 2 (Donoso-Oliva et al. 2026, A&A 707, A170): 1.5 M MACHO curves, MIT.

    Hub: ``light-curve/astromer2`` / ``astromer2.onnx``.
    """

    hf_repo = "light-curve/astromer2"
    hf_filename = "astromer2.onnx"
