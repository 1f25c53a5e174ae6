"""Whatever the bytes, a decoder returns an alert or raises RejectedAlert, nothing else.

Random bytes go through every framing: detected (with and without a schemaless schema),
each forced framing, behind each framing's valid opening bytes, and through
``iter_container`` (the path of every message that opens like a container file).
"""

from __future__ import annotations

import io

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.alerts import REJECTION_REASONS, AlertDecoder, RejectedAlert
from streamer.alerts.schemas import elasticc_v0_9_schema
from streamer.alerts.synthetic import (
    encode_confluent,
    encode_schemaless,
    encode_ztf_container,
    lsst_schema,
    make_elasticc_alert,
    make_light_curve,
    make_lsst_alert_from_light_curve,
    make_ztf_alert,
)
from streamer.photometry import DecodedAlert

from .conftest import ELASTICC_SAMPLE, ZTF_SAMPLE

DECODERS = [
    AlertDecoder(),
    AlertDecoder(schemaless_schema=None),
    AlertDecoder(framing="confluent"),
    AlertDecoder(framing="container"),
    AlertDecoder(framing="schemaless"),
    AlertDecoder(max_message_bytes=1500),
]


def _valid_messages() -> list[bytes]:
    curve = make_light_curve(12, seed=3)
    ztf_curve = make_light_curve(6, bands="gri", forced_every=0, seed=4)
    forced = make_light_curve(3, bands="gr", start_mjd=59000.0, first_source_id=77)
    rubin_3 = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=200, schema_version="3.0")
    rubin_11 = make_lsst_alert_from_light_curve(curve, 5, 6, cutout_bytes=200, schema_version="11.1")
    deflated = io.BytesIO()
    fastavro.writer(
        deflated, lsst_schema("7.4"), [make_lsst_alert_from_light_curve(curve, 5, 6)], codec="deflate"
    )
    detections = curve[curve["kind"] == 0]
    elasticc = make_elasticc_alert(1, 2, detections[-1], detections[:-1], curve[curve["kind"] == 1])
    ztf = make_ztf_alert("ZTF24aaaaaaa", 9, ztf_curve[-1], ztf_curve[:-1], forced=forced, cutout_bytes=100)
    return [
        encode_confluent(rubin_3, "3.0"),
        encode_confluent(rubin_11, "11.1"),
        deflated.getvalue(),
        encode_schemaless(elasticc, elasticc_v0_9_schema()),
        encode_ztf_container(ztf),
        ZTF_SAMPLE.read_bytes(),
        ELASTICC_SAMPLE.read_bytes(),
    ]


VALID = _valid_messages()


def _decode_or_reject(decoder: AlertDecoder, message: bytes) -> None:
    try:
        assert isinstance(decoder.decode(message), DecodedAlert)
    except RejectedAlert as rejection:
        assert rejection.reason in REJECTION_REASONS and rejection.detail


@settings(max_examples=400, deadline=None)
@given(message=st.binary(max_size=3000), decoder=st.sampled_from(DECODERS))
def test_arbitrary_bytes(message: bytes, decoder: AlertDecoder) -> None:
    _decode_or_reject(decoder, message)


@settings(max_examples=150, deadline=None)
@given(
    prefix=st.sampled_from(
        [
            b"\x00\x00\x00\x02\xbc",
            b"\x00\x00\x00\x04\x4d",
            b"\x00\x00\x00\x27\x0f",
            b"\x01\x00\x00\x02\xc0",
            b"Obj\x01",
        ]
    ),
    body=st.binary(max_size=2000),
    decoder=st.sampled_from(DECODERS),
)
def test_arbitrary_bytes_behind_valid_framing(prefix: bytes, body: bytes, decoder: AlertDecoder) -> None:
    # Schema ids 700, 1101 and 9999 (unknown), id 704 behind a wrong magic byte, and the
    # container magic: the payload parsers get the bytes.
    _decode_or_reject(decoder, prefix + body)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    message = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        if not message:
            break
        position = draw(st.integers(0, len(message) - 1))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if action == "flip":
            message[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            message[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del message[position:]
        elif action == "insert":
            message[position:position] = draw(st.binary(min_size=1, max_size=12))
        else:
            del message[position : position + draw(st.integers(1, 12))]
    return bytes(message)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_mutated(), decoder=st.sampled_from(DECODERS))
def test_mutated_valid_messages(message: bytes, decoder: AlertDecoder) -> None:
    _decode_or_reject(decoder, message)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000))
def test_random_archives_never_raise_with_a_callback(body: bytes) -> None:
    rejected: list[RejectedAlert] = []
    for alert in AlertDecoder().iter_container(b"Obj\x01" + body, on_reject=rejected.append):
        assert isinstance(alert, DecodedAlert)
    assert all(r.reason in REJECTION_REASONS for r in rejected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_mutated())
def test_mutated_archives_never_raise_with_a_callback(message: bytes) -> None:
    rejected: list[RejectedAlert] = []
    for alert in AlertDecoder().iter_container(message, on_reject=rejected.append):
        assert isinstance(alert, DecodedAlert)
