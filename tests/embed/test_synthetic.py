"""Tests of the synthetic ONNX models that stand in for the published Astromer / ATCAT files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamer.embed.synthetic import (
    build_astromer,
    build_astromer1_sized,
    build_atcat,
    build_atcat_sized,
)

ASTROMER_SEQ = 200
ASTROMER_EMBED = 256
ATCAT_SEQ = 243
ATCAT_EMBED = 384

# Valid-point counts per window: the extremes (1 point, full window) and something in between.
ASTROMER_N_VALID = (1, 2, 20, 57, ASTROMER_SEQ)
ATCAT_N_VALID = (1, 2, 20, 100, ATCAT_SEQ)

Inputs = dict[str, np.ndarray]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feeds: Inputs) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _astromer_inputs(rng: np.random.Generator, n_valid: tuple[int, ...] = ASTROMER_N_VALID) -> Inputs:
    """Windows preprocessed like the reference: centred magnitudes and times, zero padding."""
    n = len(n_valid)
    mag = np.zeros((n, ASTROMER_SEQ), dtype=np.float64)
    time = np.zeros_like(mag)
    mask = np.zeros_like(mag)
    for i, k in enumerate(n_valid):
        t = np.sort(rng.uniform(-1000.0, 1000.0, k))
        m = rng.uniform(15.0, 25.0, k)
        time[i, :k] = t - t.mean()
        mag[i, :k] = m - m.mean()
        mask[i, :k] = 1.0
    as_input = lambda a: a[..., np.newaxis].astype(np.float32)  # noqa: E731
    return {"input": as_input(mag), "times": as_input(time), "mask_in": as_input(mask)}


def _atcat_inputs(
    rng: np.random.Generator, n_valid: tuple[int, ...] = ATCAT_N_VALID, *, fp16: bool = False
) -> Inputs:
    """Left-aligned windows like the reference: time from the first point, fluxes at zp 27.5."""
    n = len(n_valid)
    dtype = np.float16 if fp16 else np.float32
    # float16 tops out at 65504, so the fp16 variant gets fluxes its inputs can represent.
    max_flux = 6e4 if fp16 else 1e6
    flux = np.zeros((n, ATCAT_SEQ), dtype=np.float64)
    flux_err = np.zeros_like(flux)
    time = np.zeros_like(flux)
    mask = np.zeros((n, ATCAT_SEQ), dtype=bool)
    band = np.zeros((n, ATCAT_SEQ), dtype=np.int64)
    for i, k in enumerate(n_valid):
        t = np.sort(rng.uniform(0.0, 2000.0, k))
        time[i, :k] = t - t[0]
        flux[i, :k] = np.exp(rng.uniform(np.log(1.0), np.log(max_flux), k)) * rng.choice([-1.0, 1.0], k)
        flux_err[i, :k] = np.abs(flux[i, :k]) * rng.uniform(0.01, 0.5, k) + 1.0
        mask[i, :k] = True
        band[i, :k] = rng.integers(0, 6, k)
    return {
        "flux": flux.astype(dtype),
        "flux_err": flux_err.astype(dtype),
        "time": time.astype(dtype),
        "mask": mask,
        "channel_index": band,
    }


@pytest.fixture(scope="module")
def astromer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_astromer(tmp_path_factory.mktemp("models") / "astromer.onnx")


@pytest.fixture(scope="module", params=[False, True], ids=["f32", "fp16"])
def atcat(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    fp16 = request.param
    return build_atcat(tmp_path_factory.mktemp("models") / f"atcat_{fp16}.onnx", fp16=fp16), fp16


def _signature(session: ort.InferenceSession) -> tuple[list[tuple], list[tuple]]:
    return (
        [(i.name, i.type, i.shape) for i in session.get_inputs()],
        [(o.name, o.type, o.shape) for o in session.get_outputs()],
    )


def _astromer_signature() -> tuple[list[tuple], list[tuple]]:
    float_in = ("tensor(float)", ["batch", ASTROMER_SEQ, 1])
    return (
        [("input", *float_in), ("times", *float_in), ("mask_in", *float_in)],
        [
            ("mean", "tensor(float)", ["batch", ASTROMER_EMBED]),
            ("max", "tensor(float)", ["batch", ASTROMER_EMBED]),
            ("sequence", "tensor(float)", ["batch", ASTROMER_SEQ, ASTROMER_EMBED]),
        ],
    )


def _atcat_signature(fp16: bool) -> tuple[list[tuple], list[tuple]]:
    float_type = "tensor(float16)" if fp16 else "tensor(float)"
    shape = ["batch", ATCAT_SEQ]
    return (
        [
            ("flux", float_type, shape),
            ("flux_err", float_type, shape),
            ("time", float_type, shape),
            ("mask", "tensor(bool)", shape),
            ("channel_index", "tensor(int64)", shape),
        ],
        [
            ("last", float_type, ["batch", ATCAT_EMBED]),
            ("mean", float_type, ["batch", ATCAT_EMBED]),
            ("sequence", float_type, ["batch", ATCAT_SEQ, ATCAT_EMBED]),
        ],
    )


def _valid_positions(mask: np.ndarray) -> np.ndarray:
    """Boolean ``[N, S]`` from either model's mask input."""
    return mask.reshape(mask.shape[0], -1).astype(bool)


def _assert_changed(before: np.ndarray, after: np.ndarray, what: str) -> None:
    diff = np.max(np.abs(after.astype(np.float64) - before.astype(np.float64)))
    # Inference is deterministic, so any change is a real dependence; the threshold only asks that
    # it be visible at the output precision: ~100 float32 ulps, or a few float16 ulps, of O(1) values.
    threshold = 3e-3 if before.dtype == np.float16 else 1e-4
    assert diff > threshold, f"{what} barely changed (max |diff| = {diff})"


def _big_change(value: np.floating) -> np.floating:
    """Flip the sign and move by a factor 30 (down for big values, to stay inside float16)."""
    factor = -30.0 if abs(value) < 1e3 else -1.0 / 30.0
    return value * factor


def _assert_same(before: np.ndarray, after: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6, err_msg=what)


# --- signatures -------------------------------------------------------------------------------


def test_astromer_signature(astromer_path: Path) -> None:
    assert _signature(_session(astromer_path)) == _astromer_signature()


def test_atcat_signature(atcat: tuple[Path, bool]) -> None:
    path, fp16 = atcat
    assert _signature(_session(path)) == _atcat_signature(fp16)


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (build_astromer1_sized, _astromer_signature()),
        (build_atcat_sized, _atcat_signature(fp16=False)),
        (lambda p: build_atcat_sized(p, fp16=True), _atcat_signature(fp16=True)),
    ],
    ids=["astromer1_sized", "atcat_sized", "atcat_sized_fp16"],
)
def test_sized_presets_signature(tmp_path: Path, builder: Callable[[Path], Path], expected: tuple) -> None:
    path = builder(tmp_path / "model.onnx")
    assert path == tmp_path / "model.onnx"
    assert _signature(_session(path)) == expected


def test_sized_presets_are_big(tmp_path: Path) -> None:
    # Parameters dominate the file size: Astromer 1 ~0.66 M, ATCAT (4 x d384, FFN 1536) ~7.1 M floats.
    astromer_mb = build_astromer1_sized(tmp_path / "a.onnx").stat().st_size / 4e6
    atcat_mb = build_atcat_sized(tmp_path / "b.onnx").stat().st_size / 4e6
    assert 0.6 < astromer_mb < 0.8
    assert 7.0 < atcat_mb < 7.5


# --- determinism and argument checks ----------------------------------------------------------


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = build_atcat(tmp_path / "a.onnx", seed=3).read_bytes()
    b = build_atcat(tmp_path / "b.onnx", seed=3).read_bytes()
    c = build_atcat(tmp_path / "c.onnx", seed=4).read_bytes()
    assert a == b
    assert a != c
    assert (
        build_astromer(tmp_path / "d.onnx").read_bytes() == build_astromer(tmp_path / "e.onnx").read_bytes()
    )


@pytest.mark.parametrize("builder", [build_astromer, build_atcat])
def test_invalid_sizes(tmp_path: Path, builder: Callable[..., Path]) -> None:
    with pytest.raises(ValueError, match="divisible"):
        builder(tmp_path / "m.onnx", d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="positive"):
        builder(tmp_path / "m.onnx", n_layers=-1)


# --- Astromer behaviour -----------------------------------------------------------------------


def test_astromer_outputs_finite_and_pooled(astromer_path: Path) -> None:
    feeds = _astromer_inputs(np.random.default_rng(0))
    out = _run(_session(astromer_path), feeds)
    valid = _valid_positions(feeds["mask_in"])
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
    for i in range(valid.shape[0]):
        seq = out["sequence"][i, valid[i]].astype(np.float64)
        np.testing.assert_allclose(out["mean"][i], seq.mean(axis=0), rtol=1e-5, atol=1e-5)
        # ``max`` projects the max-pooled encoder states, so it is not the max of ``sequence``;
        # but it must differ from the mean head (a separate pooling).
        if valid[i].sum() > 1:
            assert not np.allclose(out["max"][i], out["mean"][i], atol=1e-3)
    # Random weights must still produce O(1), non-degenerate embeddings.
    assert 0.1 < np.std(out["mean"]) < 10.0


@pytest.mark.parametrize("name", ["input", "times", "mask_in"])
def test_astromer_every_input_matters(astromer_path: Path, name: str) -> None:
    session = _session(astromer_path)
    feeds = _astromer_inputs(np.random.default_rng(1))
    before = _run(session, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    # A valid position of a 20-point window: attention averages over the valid keys, so in longer
    # windows one point moves the pooled outputs only by ~1/n of its own effect.
    window, pos = 2, 12
    if name == "mask_in":
        changed[name][window, pos] = 0.0  # drop one valid point
    else:
        changed[name][window, pos] += 0.7
    after = _run(session, changed)
    for out in ("mean", "max"):
        _assert_changed(before[out][window], after[out][window], f"{out} after changing {name}")
    keep = _valid_positions(changed["mask_in"])[window]
    _assert_changed(before["sequence"][window, keep], after["sequence"][window, keep], f"sequence ({name})")
    # Windows are independent of each other within a batch.
    others = [i for i in range(len(ASTROMER_N_VALID)) if i != window]
    for out in before:
        _assert_same(before[out][others], after[out][others], f"{out} of other windows")


def test_astromer_padding_is_ignored(astromer_path: Path) -> None:
    session = _session(astromer_path)
    rng = np.random.default_rng(2)
    feeds = _astromer_inputs(rng)
    before = _run(session, feeds)
    padded = ~_valid_positions(feeds["mask_in"])
    changed = {k: v.copy() for k, v in feeds.items()}
    for name in ("input", "times"):
        changed[name][padded] = rng.uniform(-1000.0, 1000.0, (padded.sum(), 1))
    after = _run(session, changed)
    for out in ("mean", "max"):
        _assert_same(before[out], after[out], out)
    valid = ~padded
    _assert_same(before["sequence"][valid], after["sequence"][valid], "sequence at valid positions")


def test_astromer_batch_independent(astromer_path: Path) -> None:
    session = _session(astromer_path)
    feeds = _astromer_inputs(np.random.default_rng(3))
    batched = _run(session, feeds)
    for i in range(len(ASTROMER_N_VALID)):
        single = _run(session, {k: v[i : i + 1] for k, v in feeds.items()})
        for out, value in single.items():
            np.testing.assert_allclose(value[0], batched[out][i], rtol=1e-5, atol=1e-5)


# --- ATCAT behaviour --------------------------------------------------------------------------


def test_atcat_outputs_finite_and_pooled(atcat: tuple[Path, bool]) -> None:
    path, fp16 = atcat
    feeds = _atcat_inputs(np.random.default_rng(0), fp16=fp16)
    out = _run(_session(path), feeds)
    expected_dtype = np.float16 if fp16 else np.float32
    for name, value in out.items():
        assert value.dtype == expected_dtype, name
        assert np.all(np.isfinite(value)), name
    n_valid = feeds["mask"].sum(axis=1)
    for i, k in enumerate(n_valid):
        np.testing.assert_allclose(out["last"][i], out["sequence"][i, k - 1], rtol=1e-5, atol=1e-5)
        seq_mean = out["sequence"][i, :k].astype(np.float64).mean(axis=0)
        tol = 2e-3 if fp16 else 1e-5
        np.testing.assert_allclose(out["mean"][i], seq_mean, rtol=tol, atol=tol)
    assert 0.1 < np.std(out["mean"].astype(np.float64)) < 10.0


def test_atcat_extreme_values_finite(atcat: tuple[Path, bool]) -> None:
    path, fp16 = atcat
    dtype = np.float16 if fp16 else np.float32
    feeds = _atcat_inputs(np.random.default_rng(5), fp16=fp16)
    # 1e6 overflows to inf in float16; the model must still give finite embeddings.
    with np.errstate(over="ignore"):
        feeds["flux"][:, ::2] = np.asarray(1e6, dtype=np.float64).astype(dtype)
        feeds["flux"][:, 1::2] = np.asarray(-1e6, dtype=np.float64).astype(dtype)
        feeds["flux_err"][:] = np.asarray(1e6, dtype=np.float64).astype(dtype)
    feeds["time"][:] = np.linspace(0.0, 5000.0, ATCAT_SEQ).astype(dtype)
    for value in _run(_session(path), feeds).values():
        assert np.all(np.isfinite(value))


@pytest.mark.parametrize("name", ["flux", "flux_err", "time", "mask", "channel_index"])
def test_atcat_every_input_matters(atcat: tuple[Path, bool], name: str) -> None:
    path, fp16 = atcat
    session = _session(path)
    feeds = _atcat_inputs(np.random.default_rng(1), fp16=fp16)
    before = _run(session, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    # A valid position of a 20-point window: attention averages over the valid keys, so in longer
    # windows one point moves the pooled outputs only by ~1/n of its own effect.
    window, pos = 2, 12
    if name == "mask":
        pos = 20
        changed[name][window, pos] = True  # one more valid point (the mask stays contiguous)
    elif name == "channel_index":
        changed[name][window, pos] = (changed[name][window, pos] + 1) % 6
    elif name == "time":
        changed[name][window, pos] += 3.0
    else:
        changed[name][window, pos] = _big_change(changed[name][window, pos])
    after = _run(session, changed)
    for out in ("last", "mean"):
        _assert_changed(before[out][window], after[out][window], f"{out} after changing {name}")
    _assert_changed(before["sequence"][window, pos], after["sequence"][window, pos], f"sequence ({name})")
    others = [i for i in range(len(ATCAT_N_VALID)) if i != window]
    for out in before:
        _assert_same(before[out][others], after[out][others], f"{out} of other windows")


def test_atcat_padding_is_ignored(atcat: tuple[Path, bool]) -> None:
    path, fp16 = atcat
    session = _session(path)
    rng = np.random.default_rng(2)
    feeds = _atcat_inputs(rng, fp16=fp16)
    before = _run(session, feeds)
    padded = ~feeds["mask"]
    changed = {k: v.copy() for k, v in feeds.items()}
    for name in ("flux", "flux_err", "time"):
        changed[name][padded] = rng.uniform(-3e4, 3e4, padded.sum()).astype(changed[name].dtype)
    changed["channel_index"][padded] = rng.integers(0, 6, padded.sum())
    after = _run(session, changed)
    for out in ("last", "mean"):
        _assert_same(before[out], after[out], out)
    _assert_same(before["sequence"][~padded], after["sequence"][~padded], "sequence at valid positions")


@pytest.mark.parametrize("name", ["flux", "flux_err", "time", "channel_index"])
def test_atcat_is_causal(atcat: tuple[Path, bool], name: str) -> None:
    path, fp16 = atcat
    session = _session(path)
    feeds = _atcat_inputs(np.random.default_rng(4), fp16=fp16)
    before = _run(session, feeds)
    changed = {k: v.copy() for k, v in feeds.items()}
    window, pos = 4, 150  # a full window
    if name == "channel_index":
        changed[name][window, pos] = (changed[name][window, pos] + 3) % 6
    elif name == "time":
        changed[name][window, pos] += 3.0
    else:
        changed[name][window, pos] = _big_change(changed[name][window, pos])
    after = _run(session, changed)
    _assert_same(before["sequence"][window, :pos], after["sequence"][window, :pos], "earlier positions")
    _assert_changed(before["sequence"][window, pos:], after["sequence"][window, pos:], "later positions")


def test_atcat_batch_independent(atcat: tuple[Path, bool]) -> None:
    path, fp16 = atcat
    session = _session(path)
    feeds = _atcat_inputs(np.random.default_rng(3), fp16=fp16)
    batched = _run(session, feeds)
    tol = 1e-3 if fp16 else 1e-5
    for i in range(len(ATCAT_N_VALID)):
        single = _run(session, {k: v[i : i + 1] for k, v in feeds.items()})
        for out, value in single.items():
            np.testing.assert_allclose(value[0], batched[out][i], rtol=tol, atol=tol)
