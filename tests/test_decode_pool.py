"""Decoding in worker processes (``STREAMER_DECODE_PROCESSES``) gives what decoding in the
main process gives, for good and bad input alike, and survives a worker being killed."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from streamer.alerts import AlertDecoder
from streamer.decode_pool import DecodePool
from streamer.pipeline import Decoded, Message, decode_messages
from tests.alert_factory import make_alerts
from tests.alerts.conftest import ELASTICC_SAMPLE, ZTF_SAMPLE


def _mixed_batch() -> list[Message]:
    """Rubin alerts, a ZTF file, a three-alert ELAsTiCC archive, and bad messages among them."""
    rubin = [a.data for a in make_alerts(n_objects=5, every=3)]
    values = [
        *rubin[:10],
        ZTF_SAMPLE.read_bytes(),
        rubin[10][:40],  # cut short
        ELASTICC_SAMPLE.read_bytes(),
        b"",
        os.urandom(300),
        b"\x00\x00\x00\x99\x99" + rubin[11][5:],  # unknown schema id
        *rubin[12:],
    ]
    return [Message(value, f"alerts[0]@{offset}") for offset, value in enumerate(values)]


def _comparable(decoded: Decoded) -> tuple[list[tuple], list[tuple], list[tuple]]:
    alerts, origins, rejections = decoded
    return (
        [(a.survey, a.object_id, a.alert_id, a.alert_time, a.schema, a.points.tobytes()) for a in alerts],
        [(m.source, m.data) for m in origins],
        [(r.reason, r.detail, r.source, r.data) for r in rejections],
    )


@pytest.fixture(scope="module")
def pool() -> DecodePool:
    with DecodePool(2, {}) as pool:
        yield pool


def test_workers_decode_exactly_like_the_main_process(pool: DecodePool) -> None:
    batch = _mixed_batch()
    expected = decode_messages(AlertDecoder(), batch)
    alerts, origins, rejections = expected
    assert {a.survey for a in alerts} == {"lsst", "ztf", "elasticc"}
    assert len(rejections) == 4 and any(m.source.endswith("#2") for m in origins)  # archive alerts
    assert _comparable(pool.decode(batch)) == _comparable(expected)
    # Batches smaller than one chunk per worker, and empty ones, too.
    assert _comparable(pool.decode(batch[:1])) == _comparable(decode_messages(AlertDecoder(), batch[:1]))
    assert pool.decode([]) == ([], [], [])
    assert pool.worker_cpu_seconds > 0


def test_a_killed_worker_loses_no_alert(pool: DecodePool) -> None:
    batch = _mixed_batch()
    expected = _comparable(decode_messages(AlertDecoder(), batch))
    pool.decode(batch)
    before = pool.pids()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)  # as the kernel's OOM killer would
    time.sleep(0.5)
    assert _comparable(pool.decode(batch)) == expected  # decoded in the main process
    assert pool.restarts == 1
    assert _comparable(pool.decode(batch)) == expected  # by a new pool
    assert not set(pool.pids()) & set(before)


def test_when_no_new_pool_starts_decoding_goes_on_in_the_main_process(monkeypatch) -> None:
    batch = _mixed_batch()
    expected = _comparable(decode_messages(AlertDecoder(), batch))
    with DecodePool(1, {}) as pool:
        (pid,) = pool.pids()

        def cannot_start(self: DecodePool) -> None:  # e.g. the pod's memory is full
            raise BrokenProcessPool("no worker could be started")

        monkeypatch.setattr(DecodePool, "_new_pool", cannot_start)
        os.kill(pid, signal.SIGKILL)
        assert _comparable(pool.decode(batch)) == expected
        assert _comparable(pool.decode(batch)) == expected
        assert pool.pids() == [] and pool.restarts == 1


def test_settings_reach_the_workers() -> None:
    # A limit on message size set for the pool is applied by its workers.
    batch = _mixed_batch()
    with DecodePool(1, {"max_message_bytes": 1000}) as small:
        _, _, rejections = small.decode(batch)
    assert "oversized" in {r.reason for r in rejections}
    expected = decode_messages(AlertDecoder(max_message_bytes=1000), batch)
    assert _comparable(([], [], rejections)) == _comparable(([], [], expected[2]))


def test_bad_settings_fail_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match="framing"):
        DecodePool(2, {"framing": "carrier-pigeon"})
    with pytest.raises(ValueError, match="processes"):
        DecodePool(0, {})
