"""Shared inputs of the alert decoding tests: the real sample files and Rubin versions."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from streamer.alerts import AlertDecoder
from streamer.alerts.schemas import rubin_versions
from tests.registry import FakeRegistry

#: Real alerts from the streams (copied from the project's shared samples).
ALERT_DATA = Path(__file__).parent.parent / "data" / "alerts"
ZTF_SAMPLE = ALERT_DATA / "ztf_v3.3_472263571115115000.avro"
ELASTICC_SAMPLE = ALERT_DATA / "elasticc_v0.9_object11290844_3alerts.avro"
ELASTICC_SCHEMA = ALERT_DATA / "elasticc.v0_9.alert.avsc"

#: Every Rubin schema version lsst-alert-packet ships, as "major.minor".
RUBIN_VERSIONS = [f"{major}.{minor}" for major, minor in rubin_versions().values()]


def fake_alert_path(version: str) -> Path:
    """The ``fakeAlert.avro`` container file lsst-alert-packet ships for ``version``."""
    from lsst.alert.packet.schema import get_schema_path

    major, minor = version.split(".")
    return Path(get_schema_path(int(major), int(minor))) / "sample_data" / "fakeAlert.avro"


def read_container(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Writer schema and every record of a container file, the plain fastavro way."""
    reader = fastavro.reader(io.BytesIO(data))
    records = [record for record in reader if isinstance(record, dict)]
    assert isinstance(reader.writer_schema, dict)
    return reader.writer_schema, records


@pytest.fixture
def decoder() -> AlertDecoder:
    return AlertDecoder()


@pytest.fixture(scope="session")
def ztf_sample() -> bytes:
    return ZTF_SAMPLE.read_bytes()


@pytest.fixture(scope="session")
def elasticc_sample() -> bytes:
    return ELASTICC_SAMPLE.read_bytes()


def assert_points_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Column-wise equality of point arrays, NaN equal to NaN."""
    assert actual.dtype == expected.dtype
    for name in expected.dtype.names or ():
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.fixture
def schema_registry() -> Iterator[tuple[str, dict[int, str], list[int]]]:
    """A local HTTP schema registry: (URL, schemas it serves by id, ids asked for)."""
    with FakeRegistry() as registry:
        yield registry.url, registry.schemas, registry.requests
