"""ATCAT: a causal multi-band transformer over fluxes (Tung 2025, arXiv:2511.00614)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from streamer.embed.model import MultiBandModel
from streamer.embed.tensors import ATCATInputs

if TYPE_CHECKING:
    from typing import Self

    import onnxruntime as ort
    from numpy.typing import ArrayLike

    from streamer.embed.reduction import Reduction

#: Zero point ATCAT was trained on (ELAsTiCC / SNANA FLUXCAL).
ATCAT_ZERO_POINT = 27.5


class ATCAT(MultiBandModel):
    """ATCAT multi-band embedding model: 384-d, modified MIT licence (non-military use).

    Hub: ``light-curve/atcat``, files ``atcat_f32.onnx`` and ``atcat_fp16.onnx``; the
    float16 file is recognised from its first input's type.

    All bands are merged into one time-ordered sequence per window; times are relative to
    the window's first valid time; fluxes are rescaled from ``mag_zp`` to zero point 27.5.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    output : {"last", "mean", "sequence"}
        ``"last"``: embedding at the last valid position; ``"mean"``: masked mean;
        ``"sequence"``: per position, shape ``(..., 243, 384)``.
    band_groups : Mapping, list of Mapping, or None
        Band label -> model band (0..5 = u g r i z Y); see :class:`MultiBandModel`.
    allow_extra_bands : bool
    reduction : str, list of str, or Reduction
    reduction_kwargs : dict, optional
    mag_zp : float
        AB zero point of the input fluxes: 31.4 for nJy (LSST, default), 27.5 for
        FLUXCAL, 8.9 for Jy.
    **engine_kwargs
        ``batch_size``, ``cache_bytes`` (see :class:`~streamer.embed.EmbeddingSession`).
    """

    seq_size: int = 243
    n_model_bands: int = 6
    hf_repo = "light-curve/atcat"
    hf_filename = "atcat.onnx"
    model_outputs: frozenset[str] = frozenset({"last", "mean", "sequence"})
    valid_model_bands = frozenset(range(6))
    value_names = ("time", "flux", "flux_err")
    #: ATCAT-sized models ran fastest with 2-8 windows per run on a 2-core CPU (best at 4).
    default_batch_size = 4

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        output: Literal["last", "mean", "sequence"] = "last",
        band_groups: Mapping[Any, int] | Sequence[Mapping[Any, int]] | None = None,
        allow_extra_bands: bool = False,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        mag_zp: float = 31.4,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(
            session,
            band_groups=band_groups,
            allow_extra_bands=allow_extra_bands,
            reduction=reduction,
            reduction_kwargs=reduction_kwargs,
            **engine_kwargs,
        )
        if output not in self.model_outputs:
            raise ValueError(
                f"Unknown output '{output}'. Must be one of: {', '.join(sorted(self.model_outputs))}"
            )
        self.output = output
        self.mag_zp = mag_zp
        self.dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
        self.flux_scale = (
            None if abs(mag_zp - ATCAT_ZERO_POINT) < 1e-4 else 10 ** (-0.4 * (mag_zp - ATCAT_ZERO_POINT))
        )

    @classmethod
    def from_hf(  # type: ignore[override]
        cls,
        output: str = "last",
        use_fp16: bool = False,
        *,
        band_groups: Mapping[Any, int] | Sequence[Mapping[Any, int]] | None = None,
        allow_extra_bands: bool = False,
        reduction: str | list[str] | Reduction = "non-overlapping-windows",
        reduction_kwargs: dict[str, Any] | None = None,
        mag_zp: float = 31.4,
        ort_session_kwargs: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> Self:
        """Load ``atcat_f32.onnx`` (or ``atcat_fp16.onnx``) from the HuggingFace Hub."""
        filename = "atcat_fp16.onnx" if use_fp16 else "atcat_f32.onnx"
        return super().from_hf(
            filename,
            output=output,
            band_groups=band_groups,
            allow_extra_bands=allow_extra_bands,
            reduction=reduction,
            reduction_kwargs=reduction_kwargs,
            mag_zp=mag_zp,
            ort_session_kwargs=ort_session_kwargs,
            **engine_kwargs,
        )

    def __call__(  # type: ignore[override]
        self, time: ArrayLike, flux: ArrayLike, flux_err: ArrayLike, band: ArrayLike
    ) -> np.ndarray:
        """Embed a light curve.

        Parameters
        ----------
        time, flux, flux_err : array-like, shape ``(n,)``
            Times in days; fluxes and errors at zero point ``mag_zp``.
        band : array-like, shape ``(n,)``
            Integers 0-5 when ``band_groups`` is None, else keys of ``band_groups``.

        Returns
        -------
        numpy.ndarray, shape ``(n_band_groups, n_subsamples, seq, 384)``
        """
        return super().__call__(time, flux, flux_err, band=band)

    def preprocess_lc(  # type: ignore[override]
        self, time: ArrayLike, flux: ArrayLike, flux_err: ArrayLike, band: ArrayLike
    ) -> ATCATInputs:
        """Model tensors of one light curve; ``band`` holds model bands 0-5 (LSST u g r i z Y)."""
        return super().preprocess_lc(time, flux, flux_err, band)  # type: ignore[return-value]

    def _window_tensors(self, *padded: np.ndarray) -> ATCATInputs:
        time, flux, flux_err, band, mask = padded
        # Windows are filled from the left, so the first valid time is at position 0.
        first_time = time[:, :1]
        time = np.where(mask, time - first_time, time)
        if self.flux_scale is not None:
            flux = np.where(mask, flux * self.flux_scale, flux)
            flux_err = np.where(mask, flux_err * self.flux_scale, flux_err)
        return ATCATInputs(
            bool_mask=mask,
            flux=flux.astype(self.dtype),
            flux_err=flux_err.astype(self.dtype),
            time=time.astype(self.dtype),
            mask=mask,
            channel_index=band.astype(np.int64),
        )
