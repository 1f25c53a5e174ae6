"""Bit-for-bit checks: the reductions against the reference's, and batching against one call."""

from __future__ import annotations

import light_curve.embed as lce
import numpy as np
import onnxruntime as ort
import pytest

import streamer.embed as se
from streamer.embed.tensors import InputTensors
from tests.embed.lightcurves import random_curve


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("output", ["mean", "sequence"])
@pytest.mark.parametrize("n_windows", [1, 2, 3, 7])
def test_window_reduction_is_the_references_bit_for_bit(dtype, output, n_windows) -> None:
    rng = np.random.default_rng(n_windows)
    seq = 5 if output == "sequence" else 1
    embeddings = rng.normal(size=(n_windows, seq, 64)).astype(dtype)
    embeddings[0, 0, :8] = -0.0
    mask = np.ones((n_windows, 5), dtype=bool)
    mask[-1, 3:] = False
    tensors = InputTensors(bool_mask=mask)
    ours = se.NonOverlappingWindows().reduce_embeddings(embeddings, tensors, output=output)
    ref = lce.NonOverlappingWindows().reduce_embeddings(embeddings, tensors, output=output)
    assert ours.dtype == ref.dtype
    assert ours.tobytes() == ref.tobytes()


def test_sequence_padding_is_positive_zero_as_in_the_reference(astromer_file) -> None:
    session = ort.InferenceSession(str(astromer_file))
    time, mag, _, _, _ = random_curve(np.random.default_rng(0), {"g": 1})
    ours = se.Astromer1(session, output="sequence")(time, mag)
    ref = lce.Astromer1(session, output="sequence")(time, mag)
    assert not np.signbit(ref[0, 0, 1:]).any()
    assert ours.tobytes() == ref.tobytes()


@pytest.mark.parametrize("output", ["last", "mean", "sequence"])
def test_a_curve_embeds_the_same_alone_and_in_a_batch(atcat_file, output) -> None:
    model = se.ATCAT(ort.InferenceSession(str(atcat_file)), output=output, band_groups={"g": 1})
    rng = np.random.default_rng(0)
    curves = []
    for _ in range(8):
        time, _, flux, flux_err, band = random_curve(rng, {"g": 30})
        curves.append((time, flux, flux_err, band))
    batch = model.embed_many(curves)
    for curve, embedding in zip(curves, batch, strict=True):
        assert embedding.tobytes() == model.embed_many([curve])[0].tobytes()
