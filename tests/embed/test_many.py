"""Many light curves in one call (the streaming path) and the window cache."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import streamer.embed as se
from tests.embed.lightcurves import random_curve


def _same(got: np.ndarray, want: np.ndarray) -> None:
    """Bit for bit: every onnxruntime run has the same batch size, whatever the curves."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def atcat_session(atcat_file) -> ort.InferenceSession:
    return ort.InferenceSession(str(atcat_file))


@pytest.fixture(scope="module")
def astromer_session(astromer_file) -> ort.InferenceSession:
    return ort.InferenceSession(str(astromer_file))


def _atcat_curves(seed: int, n_curves: int) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_curves):
        per_band = {b: int(rng.integers(0, 150)) for b in "ugrizy"}
        per_band["r"] += 1
        time, _, flux, flux_err, band = random_curve(rng, per_band)
        curves.append((time, flux, flux_err, band))
    return curves


@pytest.mark.parametrize("output", ["last", "mean", "sequence"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_embed_many_equals_one_call_per_curve(atcat_session, output, batch_size) -> None:
    groups = [{"u": 0, "g": 1, "r": 2}, {"i": 3, "z": 4, "y": 5}]
    model = se.ATCAT(
        atcat_session, output=output, band_groups=groups, allow_extra_bands=True, batch_size=batch_size
    )
    curves = [c for c in _atcat_curves(0, 25) if any(b in "izy" for b in c[3])]
    many = model.embed_many(curves)
    assert many.shape[0] == len(curves)
    for curve, embedding in zip(curves, many, strict=True):
        _same(embedding, model(*curve))


def test_batch_size_sets_the_onnx_chunking(atcat_session) -> None:
    curves = _atcat_curves(1, 10)
    model = se.ATCAT(atcat_session, band_groups=dict(zip("ugrizy", range(6), strict=True)), batch_size=4)
    model.embed_many(curves)
    n_windows = sum(-(-c[0].size // model.seq_size) for c in curves)
    assert model.windows_computed == n_windows
    assert model.onnx_runs == -(-n_windows // 4)


def test_random_subsample_in_one_call_draws_like_consecutive_calls(astromer_session) -> None:
    rng = np.random.default_rng(4)
    curves = [random_curve(rng, {"g": n})[:2] for n in (500, 20, 350, 800)]
    batched = se.Astromer1(astromer_session, reduction="random-subsample", reduction_kwargs={"rng": 99})
    looped = se.Astromer1(astromer_session, reduction="random-subsample", reduction_kwargs={"rng": 99})
    many = batched.embed_many(curves)
    for curve, embedding in zip(curves, many, strict=True):
        _same(embedding, looped(*curve))


def _grow(rng: np.random.Generator, start: int, steps: int):
    time, mag, _, _, _ = random_curve(rng, {"g": start + steps})
    for n in range(start, start + steps + 1):
        yield time[:n], mag[:n]


def test_cache_serves_unchanged_windows_of_growing_curves(astromer_session) -> None:
    rng = np.random.default_rng(8)
    cached = se.Astromer1(astromer_session, cache_bytes=50_000_000)
    plain = se.Astromer1(astromer_session)
    for time, mag in _grow(rng, 610, 30):
        _same(cached(time, mag), plain(time, mag))
    # 610..640 points = 4 windows each; after the first call only the last one is new.
    assert plain.windows_computed == 31 * 4
    assert cached.windows_computed == 4 + 30
    assert cached.cache is not None and cached.cache.hits == 30 * 3


def test_cache_is_invalidated_by_a_point_inserted_earlier(astromer_session) -> None:
    rng = np.random.default_rng(12)
    time, mag, _, _, _ = random_curve(rng, {"g": 500})
    model = se.Astromer1(astromer_session, output="sequence", cache_bytes=50_000_000)
    reference = se.Astromer1(astromer_session, output="sequence")
    model(time, mag)
    # A late-arriving point observed early (e.g. forced photometry) shifts every window.
    t2 = np.insert(time, 5, time[4] + 1e-3)
    m2 = np.insert(mag, 5, 17.0)
    before = model.windows_computed
    _same(model(t2, m2), reference(t2, m2))
    assert model.windows_computed - before == 3  # all three windows recomputed


def test_cache_respects_its_memory_budget(astromer_session) -> None:
    rng = np.random.default_rng(13)
    budget = 20 * (256 * 4 + se.WindowCache.ENTRY_OVERHEAD)
    model = se.Astromer1(astromer_session, cache_bytes=budget)
    curves = [random_curve(rng, {"g": 190})[:2] for _ in range(60)]
    model.embed_many(curves)
    assert model.cache is not None
    assert len(model.cache) == 20
    assert model.cache.bytes_used <= budget
    # The oldest entries were evicted: the first curve is computed again.
    before = model.windows_computed
    model(*curves[0])
    assert model.windows_computed == before + 1
    # The most recent one is still served.
    model(*curves[-1])
    assert model.windows_computed == before + 1


def test_identical_windows_in_one_batch_run_once(atcat_session) -> None:
    curve = _atcat_curves(3, 1)[0]
    groups = dict(zip("ugrizy", range(6), strict=True))
    model = se.ATCAT(atcat_session, band_groups=groups, cache_bytes=10_000_000)
    out = model.embed_many([curve, curve, curve])
    np.testing.assert_array_equal(out[0], out[2])
    assert model.windows_computed == -(-curve[0].size // model.seq_size)
