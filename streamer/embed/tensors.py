"""Model input tensors: one dataclass per model family, fed to onnxruntime by name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


@dataclass
class InputTensors:
    """Base container produced by :meth:`EmbeddingSession.preprocess_lc`.

    Every subclass carries ``bool_mask``, shape ``(n_windows, seq_size)``, True at valid
    (non-padded) positions; the other fields are the ONNX inputs, named as in the graph.
    """

    bool_mask: np.ndarray = field(kw_only=True)

    def asdict(self) -> dict[str, np.ndarray]:
        """ONNX feed: every field but ``bool_mask``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "bool_mask"}

    def take(self, rows: slice | np.ndarray) -> InputTensors:
        """The same tensors restricted to some windows."""
        return type(self)(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @property
    def n_windows(self) -> int:
        return int(self.bool_mask.shape[0])


@dataclass
class AstromerInputs(InputTensors):
    """Astromer inputs, float32 ``(n_windows, seq_size, 1)``: centred magnitudes and times."""

    times: np.ndarray = field(kw_only=True)
    input: np.ndarray = field(kw_only=True)
    mask_in: np.ndarray = field(kw_only=True)


@dataclass
class ATCATInputs(InputTensors):
    """ATCAT inputs, ``(n_windows, seq_size)``: rescaled fluxes, relative times, bands."""

    flux: np.ndarray = field(kw_only=True)
    flux_err: np.ndarray = field(kw_only=True)
    time: np.ndarray = field(kw_only=True)
    mask: np.ndarray = field(kw_only=True)
    channel_index: np.ndarray = field(kw_only=True)
