"""Rubin (every shipped schema version) and ELAsTiCC alerts decode to the right points."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streamer.alerts import AlertDecoder
from streamer.alerts.schemas import elasticc_v0_9_schema, load_schema_file
from streamer.alerts.synthetic import (
    encode_confluent,
    encode_schemaless,
    make_elasticc_alert,
    make_light_curve,
    make_lsst_alert,
    make_lsst_alert_from_light_curve,
)
from streamer.photometry import BAND_INDEX, PointKind

from .conftest import ELASTICC_SCHEMA, RUBIN_VERSIONS, assert_points_equal, fake_alert_path, read_container


def _confluent(version: str, payload_of_container: bytes) -> bytes:
    """Re-frame the single record of a container file as a Confluent wire message."""
    _, records = read_container(payload_of_container)
    return encode_confluent(records[0], version)


@pytest.mark.parametrize("version", RUBIN_VERSIONS)
def test_fake_alert_of_every_version(decoder: AlertDecoder, version: str) -> None:
    container = fake_alert_path(version).read_bytes()
    _, (record,) = read_container(container)
    trigger_time = record["diaSource"].get("midpointMjdTai", record["diaSource"].get("midPointTai"))

    for message in (container, _confluent(version, container)):
        alert = decoder.decode(message)

        assert alert.survey == "lsst"
        assert alert.schema == f"lsst.v{version.replace('.', '_')}"
        # diaSource.diaObjectId is null in the samples: the id comes from diaObject.
        assert alert.object_id == "281323062375219201"
        assert alert.alert_id == 1231321321
        assert alert.alert_time == trigger_time
        points = alert.points
        assert sorted(points["source_id"]) == [281323062375219198, 281323062375219199, 281323062375219200]
        assert (points["kind"] == PointKind.DETECTION).all()
        assert (points["band"] == BAND_INDEX["r"]).all()
        np.testing.assert_array_equal(points["flux"], 1241.0)
        np.testing.assert_array_equal(points["flux_err"], 12.0)
        np.testing.assert_allclose(points["mag"], 31.4 - 2.5 * math.log10(1241.0), rtol=1e-12)
        np.testing.assert_allclose(points["mag_err"], 2.5 / math.log(10) * 12.0 / 1241.0, rtol=1e-12)
        np.testing.assert_array_equal(points["known_at"], trigger_time)
        assert np.all(np.diff(points["time"]) >= 0)


def test_fake_alert_times_of_recent_versions(decoder: AlertDecoder) -> None:
    alert = decoder.decode(fake_alert_path("11.1").read_bytes())
    np.testing.assert_array_equal(
        alert.points["time"], [60900.993305483615, 60901.993305483615, 60902.993305483615]
    )
    assert alert.points["source_id"][-1] == 281323062375219200


@pytest.mark.parametrize("version", RUBIN_VERSIONS)
def test_synthetic_alerts_round_trip(decoder: AlertDecoder, version: str) -> None:
    curve = make_light_curve(60, seed=7, first_source_id=5_000_000_000)
    record = make_lsst_alert_from_light_curve(
        curve, object_id=123456789012, alert_id=42, cutout_bytes=45_000, schema_version=version
    )

    alert = decoder.decode(encode_confluent(record, version))

    assert alert.object_id == "123456789012"
    assert alert.alert_id == 42
    assert alert.alert_time == curve["time"][-1]
    np.testing.assert_array_equal(alert.points["source_id"], curve["source_id"])
    np.testing.assert_array_equal(alert.points["time"], curve["time"])
    np.testing.assert_array_equal(alert.points["kind"], curve["kind"])
    np.testing.assert_array_equal(alert.points["band"], curve["band"])
    # psfFlux/psfFluxErr are Avro floats: the values come back rounded to float32.
    np.testing.assert_array_equal(alert.points["flux"], curve["flux"].astype(np.float32))
    np.testing.assert_array_equal(alert.points["flux_err"], curve["flux_err"].astype(np.float32))
    np.testing.assert_array_equal(alert.points["known_at"], curve["time"][-1])


def test_detection_beats_forced_point_of_the_same_visit(decoder: AlertDecoder) -> None:
    curve = make_light_curve(6, forced_every=0, seed=3)
    forced = curve[:4].copy()
    forced["kind"] = PointKind.FORCED
    forced["source_id"] += 100  # Rubin numbers forced sources apart
    forced["flux"] += 1.0
    forced["time"][1] += 0.5e-6  # still the same visit
    forced["time"][3] += 0.1  # another visit: kept
    record = make_lsst_alert(9, 10, curve[-1], curve[:-1], forced)

    points = decoder.decode(encode_confluent(record)).points

    assert len(points) == 7
    assert list(points["kind"]).count(PointKind.FORCED) == 1
    assert points["source_id"][points["kind"] == PointKind.FORCED][0] == forced["source_id"][3]
    np.testing.assert_array_equal(points["source_id"][points["kind"] == 0], curve["source_id"])


def test_the_trigger_repeated_in_the_history_appears_once(decoder: AlertDecoder) -> None:
    curve = make_light_curve(5, forced_every=0)
    record = make_lsst_alert(1, 2, curve[-1], curve)  # history includes the trigger itself

    points = decoder.decode(encode_confluent(record)).points

    np.testing.assert_array_equal(points["source_id"], curve["source_id"])


def test_bad_history_rows_are_dropped_and_counted(decoder: AlertDecoder) -> None:
    curve = make_light_curve(10, seed=5)
    record = make_lsst_alert_from_light_curve(curve, 1, 2)
    record["prvDiaSources"][0]["psfFlux"] = float("nan")
    record["prvDiaSources"][1]["band"] = None
    record["prvDiaForcedSources"][0]["psfFluxErr"] = -3.0
    record["prvDiaForcedSources"][1]["psfFlux"] = None
    record["prvDiaForcedSources"][2]["band"] = "w"

    alert = decoder.decode(encode_confluent(record))

    assert len(alert.points) == 10 - 5
    assert decoder.dropped_rows == {"non_finite_flux": 2, "unknown_band": 2, "negative_error": 1}


def test_elasticc_builtin_schema_is_the_reference(decoder: AlertDecoder) -> None:
    def without_docs(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: without_docs(v) for k, v in node.items() if k != "doc" and not k.startswith("__")}
        if isinstance(node, list):
            return [without_docs(v) for v in node]
        return node

    assert without_docs(elasticc_v0_9_schema()) == without_docs(load_schema_file(ELASTICC_SCHEMA))


def test_elasticc_sample_container(decoder: AlertDecoder, elasticc_sample: bytes) -> None:
    first, second, third = decoder.iter_container(elasticc_sample)

    assert {a.object_id for a in (first, second, third)} == {"11290844"}
    assert {a.survey for a in (first, second, third)} == {"elasticc"}
    assert [a.alert_id for a in (first, second, third)] == [22581688068, 22581688070, 22581688069]
    assert [a.alert_time for a in (first, second, third)] == [60960.1303, 60966.176, 60966.1521]
    assert first.schema == "elasticc.v0_9"
    np.testing.assert_allclose(first.points["flux"], [2630.122314453125])
    assert first.points["band"][0] == BAND_INDEX["r"]

    # 3 detections and 18 forced points, two of which (ids ...068 and ...069) repeat
    # detections of the same visits: the detections stay.
    assert np.bincount(second.points["kind"]).tolist() == [3, 16]
    forced = second.points[second.points["kind"] == PointKind.FORCED]
    assert 22581688068 not in forced["source_id"] and 22581688069 not in forced["source_id"]
    y_band = forced[forced["source_id"] == 22581688057][0]
    assert y_band["band"] == BAND_INDEX["y"]
    negative = forced[forced["source_id"] == 22581688052][0]
    assert negative["flux"] == pytest.approx(-304.5367126464844) and math.isnan(negative["mag"])

    # The visit at 60966.1521 is the trigger of the third alert and a history detection
    # of the second: the same point either way, whatever order the alerts arrive in.
    shared = 22581688069
    row_in_second = second.points[second.points["source_id"] == shared]
    row_in_third = third.points[third.points["source_id"] == shared]
    assert row_in_second[["kind", "flux", "time"]].tolist() == row_in_third[["kind", "flux", "time"]].tolist()


def test_elasticc_schemaless_messages(elasticc_sample: bytes) -> None:
    writer, records = read_container(elasticc_sample)
    from_container = list(AlertDecoder().iter_container(elasticc_sample))
    decoders = [
        AlertDecoder(),
        AlertDecoder(framing="schemaless"),
        AlertDecoder(framing="schemaless", schemaless_schema=ELASTICC_SCHEMA),
        AlertDecoder(schemaless_schema=str(ELASTICC_SCHEMA)),
    ]
    for decoder in decoders:
        for record, expected in zip(records, from_container, strict=True):
            alert = decoder.decode(encode_schemaless(record, writer))
            assert alert.object_id == expected.object_id
            assert alert.alert_id == expected.alert_id
            assert_points_equal(alert.points, expected.points)


def test_synthetic_elasticc_alert(decoder: AlertDecoder) -> None:
    curve = make_light_curve(12, seed=11)
    detections = curve[curve["kind"] == PointKind.DETECTION]
    forced = curve[curve["kind"] == PointKind.FORCED]
    record = make_elasticc_alert(77, 88, detections[-1], detections[:-1], forced, cutout_bytes=1000)

    alert = decoder.decode(encode_schemaless(record, elasticc_v0_9_schema()))

    assert alert.survey == "elasticc"
    np.testing.assert_array_equal(alert.points["source_id"], curve["source_id"])
    np.testing.assert_array_equal(alert.points["band"], curve["band"])
