"""Photometry records (``streamer repartition``'s topic): an exact round trip, read by the
decoder in auto and forced framing, and every bad value rejected with a reason."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.alerts import AlertDecoder, RejectedAlert, photometry_codec
from streamer.alerts.synthetic import encode_confluent, make_light_curve, make_lsst_alert_from_light_curve
from streamer.photometry import BANDS, POINT_DTYPE, DecodedAlert, PointKind
from streamer.records import EmbeddingRecord
from streamer.sinks.kafka import RecordEncoder

from .conftest import ELASTICC_SAMPLE, ZTF_SAMPLE

INT64 = np.iinfo(np.int64)


def _rubin() -> DecodedAlert:
    curve = make_light_curve(20, seed=5)
    record = make_lsst_alert_from_light_curve(curve, 170_000_000_000_001, 3, cutout_bytes=100)
    return AlertDecoder().decode(encode_confluent(record))


def _assert_same(actual: DecodedAlert, expected: DecodedAlert) -> None:
    assert (actual.survey, actual.object_id, actual.alert_id, actual.schema) == (
        expected.survey,
        expected.object_id,
        expected.alert_id,
        expected.schema,
    )
    assert np.float64(actual.alert_time).tobytes() == np.float64(expected.alert_time).tobytes()
    assert actual.points.dtype == POINT_DTYPE
    assert actual.points.tobytes() == expected.points.tobytes(), "points differ in some bit"


def _alerts_of_every_survey() -> list[DecodedAlert]:
    decoder = AlertDecoder()
    return [
        _rubin(),
        decoder.decode(ZTF_SAMPLE.read_bytes()),  # upper limits: NaN fluxes
        *decoder.iter_container(ELASTICC_SAMPLE.read_bytes()),
    ]


@pytest.mark.parametrize("alert", _alerts_of_every_survey(), ids=lambda a: f"{a.survey}-{a.alert_id}")
def test_round_trip_is_exact_and_the_decoder_reads_it_in_any_framing(alert: DecodedAlert) -> None:
    value = photometry_codec.encode(alert)
    assert value.startswith(photometry_codec.header())
    _assert_same(photometry_codec.decode(value), alert)
    _assert_same(AlertDecoder().decode(value), alert)
    _assert_same(AlertDecoder(framing="photometry").decode(value), alert)


def _points(rows: list[tuple[Any, ...]]) -> np.ndarray:
    return np.array(rows, dtype=POINT_DTYPE)


def test_round_trip_of_empty_points_and_extreme_ids_and_floats() -> None:
    empty = DecodedAlert("lsst", "1", 1, 60000.5, np.empty(0, POINT_DTYPE), "lsst.v7_4")
    _assert_same(photometry_codec.decode(photometry_codec.encode(empty)), empty)
    extremes = [0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, np.inf, -np.inf]
    extremes += np.array([0x7FF0000000000001, 0xFFF8DEADBEEF0000], np.uint64).view(np.float64).tolist()
    rows = [(INT64.min, t, t, 0.0, -t, t, 0, 0, 60000.0) for t in extremes]
    rows.append(
        (INT64.max, 60000.0, -1.5, 0.25, np.nan, np.nan, len(BANDS) - 1, PointKind.UPPER_LIMIT, 1e-300)
    )
    longest = DecodedAlert("ztf", "Z" * 100_000 + "é", INT64.max, -0.0, _points(rows), "s" * 1000)
    _assert_same(photometry_codec.decode(photometry_codec.encode(longest)), longest)
    lowest = DecodedAlert("elasticc", str(INT64.max), INT64.min, 5e-324, _points(rows[:1]), "")
    _assert_same(photometry_codec.decode(photometry_codec.encode(lowest)), lowest)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.lists(st.integers(0, 2**64 - 1), max_size=6 * 40).map(
        lambda b: np.array(b[: len(b) // 6 * 6], dtype=np.uint64).view(np.float64).reshape(-1, 6)
    ),
    object_id=st.text(min_size=1, max_size=40),
    alert_id=st.integers(INT64.min, INT64.max),
    data=st.data(),
)
def test_round_trip_keeps_every_float_bit_pattern(
    bits: np.ndarray, object_id: str, alert_id: int, data: st.DataObject
) -> None:
    """Any float64 bits (NaN payloads, subnormals, negative zero) come back unchanged."""
    n = len(bits)
    points = np.empty(n, POINT_DTYPE)
    for column, name in enumerate(("time", "flux", "flux_err", "mag", "mag_err", "known_at")):
        points[name] = bits[:, column]
    points["source_id"] = data.draw(st.lists(st.integers(INT64.min, INT64.max), min_size=n, max_size=n))
    points["band"] = data.draw(st.lists(st.integers(0, len(BANDS) - 1), min_size=n, max_size=n))
    points["kind"] = data.draw(st.lists(st.sampled_from(list(PointKind)), min_size=n, max_size=n))
    alert = DecodedAlert("lsst", object_id, alert_id, float(bits[0, 0]) if n else 0.0, points, "lsst.v7_4")
    _assert_same(photometry_codec.decode(photometry_codec.encode(alert)), alert)


def _written(points: dict[str, list[Any]]) -> bytes:
    """A photometry value with these point columns, written by fastavro with the schema."""
    buffer = io.BytesIO(photometry_codec.header())
    buffer.seek(0, io.SEEK_END)
    record = {"survey": "lsst", "object_id": "1", "alert_id": 1, "alert_time": 1.0, "schema": "x"}
    fastavro.schemaless_writer(buffer, photometry_codec.photometry_schema(), {**record, "points": points})
    return buffer.getvalue()


def _columns(**changes: list[Any]) -> dict[str, list[Any]]:
    one = {name: [0] for name in POINT_DTYPE.names or ()}
    one.update({name: [0.0] for name in ("time", "flux", "flux_err", "mag", "mag_err", "known_at")})
    return {**one, **changes}


def _embedding_value() -> bytes:
    record = EmbeddingRecord(
        "1", "lsst", 1, 1.0, "atcat", None, "last", "end", ("ugrizy",), {}, np.zeros((1, 1, 1, 2)), 0
    )
    return RecordEncoder("embeddings").encode(record)


VALID = photometry_codec.encode(_rubin())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "truncated"),
        (VALID[:7], "truncated"),
        (VALID[:-3], "truncated"),
        (VALID + b"\x00", "schema_mismatch"),
        (encode_confluent(make_lsst_alert_from_light_curve(make_light_curve(3), 1, 2)), "bad_magic"),
        (_embedding_value(), "unknown_schema"),
        (_written(_columns(time=[1.0, 2.0])), "schema_mismatch"),
        (_written(_columns(band=[len(BANDS)])), "unknown_band"),
        (_written(_columns(kind=[7])), "schema_mismatch"),
    ],
    ids=["empty", "header", "cut", "trailing", "rubin", "embedding", "lengths", "band", "kind"],
)
def test_bad_values_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(RejectedAlert) as caught:
        AlertDecoder(framing="photometry").decode(value)
    assert caught.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(0, len(VALID)),
    flips=st.lists(st.tuples(st.integers(10, len(VALID) - 1), st.integers(1, 255))),
)
def test_damaged_values_decode_or_are_rejected_nothing_else(cut: int, flips: list[tuple[int, int]]) -> None:
    damaged = bytearray(VALID[:cut] + VALID[cut + 1 :])
    for at, mask in flips:
        if at < len(damaged):
            damaged[at] ^= mask
    try:
        assert isinstance(AlertDecoder(framing="photometry").decode(bytes(damaged)), DecodedAlert)
    except RejectedAlert:
        pass
