"""Bad input raises a ValueError naming the problem before anything reaches onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import streamer.embed as se


class _NoRunSession:
    """Wraps a session and fails the test if ``run`` is reached."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def get_inputs(self):
        return self._session.get_inputs()

    def run(self, *args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("invalid input reached onnxruntime")


@pytest.fixture
def atcat(atcat_file) -> se.ATCAT:
    session = _NoRunSession(ort.InferenceSession(str(atcat_file)))
    return se.ATCAT(session, band_groups={"g": 1, "r": 2})


@pytest.fixture
def astromer(astromer_file) -> se.Astromer1:
    return se.Astromer1(_NoRunSession(ort.InferenceSession(str(astromer_file))))


T = np.array([1.0, 2.0, 3.0])
F = np.array([10.0, 20.0, 30.0])
E = np.array([1.0, 1.0, 1.0])
B = np.array(["g", "r", "g"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((T[:0], F[:0], E[:0], B[:0]), "empty light curve"),
        ((T, F[:2], E, B), "different lengths: time=3, flux=2"),
        ((T, np.array([1.0, np.nan, 2.0]), E, B), "flux contains NaN"),
        ((np.array([1.0, np.inf, 2.0]), F, E, B), "time contains NaN or infinite"),
        ((T, F, np.array([1.0, 1.0, -np.inf]), B), "flux_err contains NaN"),
        ((T, F, E, np.array(["g", "q", "r"])), r"Invalid values found: \['q'\]"),
        ((T.astype(str), F, E, B), "time must be a real numeric array, got dtype <U32"),
        ((T, F.astype(complex), E, B), "flux must be a real numeric array"),
        ((T.reshape(3, 1), F, E, B), r"time must be one-dimensional, got shape \(3, 1\)"),
    ],
)
def test_bad_atcat_input_is_a_clear_value_error(atcat, args, message) -> None:
    with pytest.raises(ValueError, match=message):
        atcat(*args)


def test_band_group_without_observations_is_named(atcat_file) -> None:
    session = _NoRunSession(ort.InferenceSession(str(atcat_file)))
    model = se.ATCAT(session, band_groups=[{"g": 1}, {"r": 2}], allow_extra_bands=True)
    with pytest.raises(ValueError, match=r"no observations in band group 1 \['r'\]"):
        model(T, F, E, np.array(["g", "u", "g"]))


def test_bad_curve_in_a_batch_is_named_by_its_index(atcat) -> None:
    good = (T, F, E, B)
    bad = (T, np.array([1.0, np.nan, 2.0]), E, B)
    with pytest.raises(se.InvalidLightCurve, match="light curve #2: flux contains NaN") as info:
        atcat.embed_many([good, good, bad, good])
    assert info.value.index == 2


def test_unknown_band_in_a_batch_is_named_by_its_index(atcat) -> None:
    with pytest.raises(se.InvalidLightCurve) as info:
        atcat.embed_many([(T, F, E, B), (T, F, E, np.array(["g", "g", "Y"]))])
    assert info.value.index == 1


def test_astromer_bad_inputs(astromer) -> None:
    with pytest.raises(ValueError, match="mag contains NaN"):
        astromer(T, np.array([20.0, np.nan, 21.0]))
    with pytest.raises(ValueError, match="empty light curve"):
        astromer([], [])
    with pytest.raises(ValueError, match="band array must be provided"):
        astromer(T, F, band=B)
    with pytest.raises(ValueError, match="expected 2 arrays"):
        astromer.embed_many([(T, F, E)])


def test_bad_configuration_is_rejected(atcat_file) -> None:
    session = ort.InferenceSession(str(atcat_file))
    with pytest.raises(ValueError, match="Unknown output 'max'"):
        se.ATCAT(session, output="max")
    with pytest.raises(ValueError, match="Duplicate keys found: \\['g'\\]"):
        se.ATCAT(session, band_groups=[{"g": 1}, {"g": 2}])
    with pytest.raises(ValueError, match="Invalid values found: \\[6\\]"):
        se.ATCAT(session, band_groups={"g": 6})
    with pytest.raises(ValueError, match="Unknown reduction 'sideways'"):
        se.ATCAT(session, reduction="sideways")
    with pytest.raises(ValueError, match="rng must be provided"):
        se.ATCAT(session, reduction="random-subsample")
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        se.ATCAT(session, batch_size=0)


def test_extra_bands_are_ignored_when_allowed(atcat_file) -> None:
    session = ort.InferenceSession(str(atcat_file))
    strict = se.ATCAT(session)
    lenient = se.ATCAT(session, allow_extra_bands=True)
    band = np.array([1, 7, 2])
    with pytest.raises(ValueError, match=r"Invalid values found: \['7'\]"):
        strict(T, F, E, band)
    # Band 7 never reaches the model: the result is that of the curve without it.
    keep = band != 7
    np.testing.assert_allclose(
        lenient(T, F, E, band), strict(T[keep], F[keep], E[keep], band[keep]), atol=1e-6
    )
