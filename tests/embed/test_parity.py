"""Our engine returns the numbers of ``light_curve.embed`` (PyPI light-curve 0.13.3) for
the same ONNX file and inputs: every model, output, reduction and band configuration."""

from __future__ import annotations

import light_curve.embed as lce
import numpy as np
import onnxruntime as ort
import pytest

import streamer.embed as se
from tests.embed.lightcurves import LSST_BANDS, random_curve

ATOL = 1e-5
REDUCTIONS = [
    "non-overlapping-windows",
    "beginning",
    "end",
    "middle",
    "random-subsample",
    ["beginning", "end", "middle"],
    ["random-subsample", "end", "random-subsample"],
]


def _lengths(seq: int) -> list[int]:
    return [1, seq - 1, seq, seq + 1, 3 * seq + 17]


def _assert_same(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def _reduction_kwargs(reduction: str | list[str]) -> dict[str, object]:
    return {"rng": 1234}


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("output", ["mean", "max", "sequence"])
@pytest.mark.parametrize("bands", [None, ["g", "r"]], ids=["bands=None", "bands=gr"])
def test_astromer_matches_reference(astromer_file, reduction, output, bands) -> None:
    session = ort.InferenceSession(str(astromer_file))
    kwargs = {"output": output, "bands": bands, "reduction": reduction}
    ref = lce.Astromer1(session, **kwargs, reduction_kwargs=_reduction_kwargs(reduction))
    ours = se.Astromer1(session, **kwargs, reduction_kwargs=_reduction_kwargs(reduction))
    rng = np.random.default_rng(7)
    for n in _lengths(ours.seq_size):
        per_band = {"g": n} if bands is None else {"g": n, "r": max(1, n // 3)}
        time, mag, _, _, band = random_curve(rng, per_band)
        if bands is None:
            _assert_same(ours(time, mag), ref(time, mag))
        else:
            _assert_same(ours(time, mag, band=band), ref(time, mag, band=band))


BAND_GROUPS = {
    "None": None,
    "dict": dict(zip(LSST_BANDS, range(6), strict=True)),
    "list": [{"g": 1, "r": 2}, {"i": 3, "z": 4, "y": 5}],
}


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=str)
@pytest.mark.parametrize("output", ["last", "mean", "sequence"])
@pytest.mark.parametrize("groups", list(BAND_GROUPS))
@pytest.mark.parametrize("mag_zp", [31.4, 27.5, 8.9])
def test_atcat_matches_reference(atcat_file, reduction, output, groups, mag_zp) -> None:
    session = ort.InferenceSession(str(atcat_file))
    band_groups = BAND_GROUPS[groups]
    kwargs = {"output": output, "band_groups": band_groups, "reduction": reduction, "mag_zp": mag_zp}
    ref = lce.ATCAT(session, **kwargs, reduction_kwargs=_reduction_kwargs(reduction))
    ours = se.ATCAT(session, **kwargs, reduction_kwargs=_reduction_kwargs(reduction))
    rng = np.random.default_rng(11)
    for n in _lengths(ours.seq_size):
        if band_groups is None:
            per_band = {b: max(1, n // 6) for b in range(6)}
        elif isinstance(band_groups, dict):
            per_band = {"g": n, "r": max(1, n // 2), "u": 1}
        else:
            per_band = {"g": n, "r": 2, "z": max(1, n // 2)}
        time, _, flux, flux_err, band = random_curve(rng, per_band)
        if mag_zp == 8.9:  # Jy
            flux, flux_err = flux * 1e-9, flux_err * 1e-9
        elif mag_zp == 27.5:  # FLUXCAL
            flux, flux_err = flux * 10 ** (-0.4 * 3.9), flux_err * 10 ** (-0.4 * 3.9)
        _assert_same(ours(time, flux, flux_err, band), ref(time, flux, flux_err, band))


@pytest.mark.parametrize("output", ["last", "mean", "sequence"])
def test_atcat_fp16_file_is_detected_and_matches_reference(atcat_fp16_file, output) -> None:
    session = ort.InferenceSession(str(atcat_fp16_file))
    ref = lce.ATCAT(session, output=output, band_groups=BAND_GROUPS["dict"])
    ours = se.ATCAT(session, output=output, band_groups=BAND_GROUPS["dict"])
    assert ours.dtype == np.float16
    rng = np.random.default_rng(5)
    for n in (1, 242, 600):
        time, _, flux, flux_err, band = random_curve(rng, {"g": n, "i": 3})
        ours_out, ref_out = ours(time, flux, flux_err, band), ref(time, flux, flux_err, band)
        assert ours_out.dtype == ref_out.dtype
        # float16 outputs: compare at float16 resolution of the values.
        np.testing.assert_allclose(
            ours_out.astype(np.float32), ref_out.astype(np.float32), rtol=2e-3, atol=2e-3
        )


@pytest.mark.parametrize("model_cls", [se.Astromer1, se.Astromer1ZTF, se.Astromer2])
def test_every_astromer_variant_matches_reference(astromer_file, model_cls) -> None:
    session = ort.InferenceSession(str(astromer_file))
    ours = model_cls(session)
    ref = getattr(lce, model_cls.__name__)(session)
    time, mag, _, _, _ = random_curve(np.random.default_rng(3), {"g": 450})
    _assert_same(ours(time, mag), ref(time, mag))
    assert ours.hf_repo == ref.hf_repo and ours.hf_filename == ref.hf_filename


def test_preprocess_and_predict_match_reference(astromer_file, atcat_file) -> None:
    rng = np.random.default_rng(9)
    time, mag, flux, flux_err, _ = random_curve(rng, {"g": 450})
    session = ort.InferenceSession(str(astromer_file))
    ours, ref = se.Astromer1(session), lce.Astromer1(session)
    # By name, as the reference's signatures allow.
    ours_t, ref_t = ours.preprocess_lc(time=time, mag=mag), ref.preprocess_lc(time=time, mag=mag)
    for name, value in ref_t.asdict().items():
        np.testing.assert_array_equal(ours_t.asdict()[name], value)
    _assert_same(ours.predict_tensors(ours_t), ref.predict_tensors(ref_t))

    session = ort.InferenceSession(str(atcat_file))
    ours_a, ref_a = se.ATCAT(session), lce.ATCAT(session)
    band = rng.integers(0, 6, time.size)
    ours_t, ref_t = (
        ours_a.preprocess_lc(time=time, flux=flux, flux_err=flux_err, band=band),
        ref_a.preprocess_lc(time=time, flux=flux, flux_err=flux_err, band=band),
    )
    for name, value in ref_t.asdict().items():
        np.testing.assert_array_equal(ours_t.asdict()[name], value)


def test_float32_inputs_follow_reference_precision(astromer_file) -> None:
    """Means are computed in the input's precision, as the reference does."""
    session = ort.InferenceSession(str(astromer_file))
    time, mag, _, _, _ = random_curve(np.random.default_rng(2), {"g": 300})
    t32, m32 = time.astype(np.float32), mag.astype(np.float32)
    ours, ref = se.Astromer1(session, output="sequence"), lce.Astromer1(session, output="sequence")
    _assert_same(ours(t32, m32), ref(t32, m32))
    # Mixed dtypes in one batch: each curve still matches its own reference call.
    batch = ours.embed_many([(t32, m32), (time, mag)])
    _assert_same(batch[0], ref(t32, m32))
    _assert_same(batch[1], ref(time, mag))
