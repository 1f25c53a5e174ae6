"""ZTF alerts: signed fluxes from magnitudes, upper limits apart, forced photometry in nJy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.alerts import AlertDecoder, RejectedAlert
from streamer.alerts.synthetic import (
    encode_container,
    encode_ztf_container,
    make_light_curve,
    make_ztf_alert,
)
from streamer.photometry import BAND_INDEX, PointKind

from .conftest import read_container

SAMPLE_CANDID = 472263571115115000
SAMPLE_MAGPSF = float(np.float32(18.36185646057129))
SAMPLE_SIGMAPSF = float(np.float32(0.09404050558805466))


def _njy(mag: float) -> float:
    return 10 ** ((31.4 - mag) / 2.5)


def test_shared_sample(decoder: AlertDecoder, ztf_sample: bytes) -> None:
    alert = decoder.decode(ztf_sample)

    assert alert.survey == "ztf"
    assert alert.schema == "ztf.v3_3"
    assert alert.object_id == "ZTF17aaajnnn"
    assert alert.alert_id == SAMPLE_CANDID
    assert alert.alert_time == pytest.approx(2458226.7635764 - 2400000.5, abs=1e-9)

    detection = alert.points[alert.points["kind"] == PointKind.DETECTION]
    assert len(detection) == 1
    (row,) = detection
    assert row["source_id"] == SAMPLE_CANDID
    assert row["band"] == BAND_INDEX["r"]  # fid 2
    assert row["mag"] == SAMPLE_MAGPSF and row["mag_err"] == SAMPLE_SIGMAPSF
    assert row["flux"] == pytest.approx(_njy(SAMPLE_MAGPSF), rel=1e-9)
    assert row["flux"] == pytest.approx(164156.247, rel=1e-6)
    assert row["flux_err"] == pytest.approx(
        _njy(SAMPLE_MAGPSF) * SAMPLE_SIGMAPSF * math.log(10) / 2.5, rel=1e-9
    )

    limits = alert.points[alert.points["kind"] == PointKind.UPPER_LIMIT]
    _, (record,) = read_container(ztf_sample)
    expected = sorted(record["prv_candidates"], key=lambda row: row["jd"])
    assert len(limits) == len(expected) == 11
    np.testing.assert_array_equal(limits["source_id"], [row["pid"] for row in expected])
    np.testing.assert_array_equal(limits["mag"], [row["diffmaglim"] for row in expected])
    np.testing.assert_allclose(limits["time"], [row["jd"] - 2400000.5 for row in expected], rtol=0, atol=1e-9)
    assert (
        np.isnan(limits["flux"]).all()
        and np.isnan(limits["flux_err"]).all()
        and np.isnan(limits["mag_err"]).all()
    )
    assert alert.points["time"][-1] == alert.alert_time  # sorted: the trigger is the latest


@pytest.mark.parametrize(("isdiffpos", "sign"), [("t", 1), ("1", 1), ("f", -1), ("0", -1)])
def test_isdiffpos_signs_the_flux(
    decoder: AlertDecoder, ztf_sample: bytes, isdiffpos: str, sign: int
) -> None:
    writer, (record,) = read_container(ztf_sample)
    record["candidate"]["isdiffpos"] = isdiffpos

    (row,) = decoder.decode(encode_container([record], writer)).points[-1:]

    assert row["flux"] == pytest.approx(sign * _njy(SAMPLE_MAGPSF), rel=1e-9)
    assert row["flux_err"] > 0
    assert row["mag"] == SAMPLE_MAGPSF  # magpsf is kept as reported


def test_synthetic_alert_with_forced_photometry(decoder: AlertDecoder) -> None:
    curve = make_light_curve(12, bands="gri", forced_every=0, seed=8, first_source_id=10**15)
    limits = make_light_curve(3, bands="g", start_mjd=59990.0, forced_every=0, first_source_id=500)
    limits["mag"] = [20.1, 20.2, 20.3]
    forced = make_light_curve(6, bands="gr", start_mjd=59900.0, seed=9, first_source_id=900)
    record = make_ztf_alert("ZTF24aaaaaaa", 7, curve[-1], curve[:-1], limits, forced, cutout_bytes=20_000)
    record["fp_hists"][4]["forcediffimflux"] = -99999.0  # "no measurement"
    record["fp_hists"][5]["forcediffimflux"] = None

    alert = decoder.decode(encode_ztf_container(record))

    assert alert.schema == "ztf.v4_02"
    points = alert.points
    detections = points[points["kind"] == PointKind.DETECTION]
    np.testing.assert_array_equal(detections["source_id"], curve["source_id"])
    np.testing.assert_allclose(detections["flux"], curve["flux"], rtol=1e-6)  # float32 magnitudes
    upper = points[points["kind"] == PointKind.UPPER_LIMIT]
    np.testing.assert_array_equal(upper["source_id"], limits["source_id"])
    np.testing.assert_allclose(upper["mag"], [20.1, 20.2, 20.3], rtol=1e-6)
    got_forced = points[points["kind"] == PointKind.FORCED]
    np.testing.assert_array_equal(got_forced["source_id"], forced["source_id"][:4])
    np.testing.assert_allclose(got_forced["flux"], forced["flux"][:4], rtol=1e-6)
    np.testing.assert_allclose(got_forced["flux_err"], forced["flux_err"][:4], rtol=1e-6)
    assert decoder.dropped_rows == {"non_finite_flux": 2}


def test_forced_flux_dn_to_njy(decoder: AlertDecoder) -> None:
    curve = make_light_curve(2, bands="g", forced_every=0)
    forced = make_light_curve(1, bands="r", start_mjd=59000.0, first_source_id=77)
    record = make_ztf_alert("ZTF24aaaaaab", 1, curve[-1], forced=forced)
    record["fp_hists"][0].update(forcediffimflux=1000.0, forcediffimfluxunc=-20.0, magzpsci=26.0)
    record["fp_hists"].append(
        {**record["fp_hists"][0], "pid": 78, "forcediffimfluxunc": 20.0, "jd": 2459001.5}
    )

    points = decoder.decode(encode_ztf_container(record)).points

    (row,) = points[points["kind"] == PointKind.FORCED]
    assert row["source_id"] == 78
    assert row["flux"] == pytest.approx(1000.0 * 10 ** (-0.4 * (26.0 - 31.4)), rel=1e-6)
    assert row["flux"] == pytest.approx(144543.977, rel=1e-6)
    assert row["flux_err"] == pytest.approx(20.0 * 10 ** (-0.4 * (26.0 - 31.4)), rel=1e-6)
    assert row["mag"] == pytest.approx(26.0 - 2.5 * math.log10(1000.0), rel=1e-6)
    assert decoder.dropped_rows == {"negative_error": 1}


def test_forced_point_replaces_the_upper_limit_of_its_exposure(decoder: AlertDecoder) -> None:
    curve = make_light_curve(2, bands="g", forced_every=0)
    exposure = make_light_curve(1, bands="r", start_mjd=59500.0, first_source_id=4242)
    record = make_ztf_alert("ZTF24aaaaaac", 1, curve[-1], upper_limits=exposure, forced=exposure)

    points = decoder.decode(encode_ztf_container(record)).points

    assert points[points["source_id"] == 4242]["kind"].tolist() == [PointKind.FORCED]


def test_ztf_3_schemas_have_no_forced_photometry(decoder: AlertDecoder) -> None:
    curve = make_light_curve(3, bands="gr", forced_every=0)
    record = make_ztf_alert("ZTF18abcdefg", 3, curve[-1], curve[:-1], schema_version="3.3")
    assert decoder.decode(encode_ztf_container(record, "3.3")).schema == "ztf.v3_3"
    with pytest.raises(ValueError, match="no forced photometry"):
        make_ztf_alert("ZTF18abcdefg", 3, curve[-1], forced=curve[:1], schema_version="3.3")


def test_unknown_sign_of_the_trigger_rejects(decoder: AlertDecoder, ztf_sample: bytes) -> None:
    writer, (record,) = read_container(ztf_sample)
    record["candidate"]["isdiffpos"] = "?"
    with pytest.raises(RejectedAlert) as caught:
        decoder.decode(encode_container([record], writer))
    assert caught.value.reason == "non_finite_flux"
