"""Embedding engine: the ``light_curve.embed`` API, batched across many light curves.

>>> from streamer.embed import ATCAT
>>> model = ATCAT.from_path("atcat_f32.onnx", band_groups={"u": 0, "g": 1, "r": 2})  # doctest: +SKIP
>>> model(time, flux, flux_err, band).shape  # doctest: +SKIP
(1, 1, 1, 384)
>>> model.embed_many([(t1, f1, e1, b1), (t2, f2, e2, b2)]).shape  # doctest: +SKIP
(2, 1, 1, 1, 384)
"""

from streamer.embed.astromer import Astromer1, Astromer1ZTF, Astromer2
from streamer.embed.atcat import ATCAT
from streamer.embed.cache import WindowCache
from streamer.embed.model import (
    Dim,
    EmbeddingSession,
    InvalidLightCurve,
    ModelUnavailable,
    MultiBandModel,
    SingleBandModel,
)
from streamer.embed.reduction import (
    Beginning,
    End,
    Middle,
    MultipleReductions,
    NonOverlappingWindows,
    RandomSubsample,
    Reduction,
    SingleSubsampleReduction,
    reduction_from_str,
)
from streamer.embed.tensors import AstromerInputs, ATCATInputs, InputTensors

__all__ = [
    "ATCAT",
    "ATCATInputs",
    "Astromer1",
    "Astromer1ZTF",
    "Astromer2",
    "AstromerInputs",
    "Beginning",
    "Dim",
    "EmbeddingSession",
    "End",
    "InputTensors",
    "InvalidLightCurve",
    "Middle",
    "ModelUnavailable",
    "MultiBandModel",
    "MultipleReductions",
    "NonOverlappingWindows",
    "RandomSubsample",
    "Reduction",
    "SingleBandModel",
    "SingleSubsampleReduction",
    "WindowCache",
    "reduction_from_str",
]
