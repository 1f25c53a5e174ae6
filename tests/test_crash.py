"""Crash test: the service killed with SIGKILL at random moments, again and again, loses
and duplicates nothing, and ends with the same records and history as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamer.history import SQLiteHistoryStore
from streamer.sinks.kafka import decode_record_value
from tests.alert_factory import make_alerts
from tests.test_service import _env, _publish, _read_all, _run_service

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KILLS = 10


def _topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics(
        [NewTopic(n, num_partitions=3, replication_factor=1) for n in names]
    ).values():
        f.result(30)


def _records(bootstrap: str, topic: str, expected: int) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for msg in _read_all(bootstrap, topic, expected, timeout=60):
        record = decode_record_value(msg.value())
        assert record.alert_id not in out, f"duplicate record for alert {record.alert_id}"
        out[record.alert_id] = record.embedding
    return out


def _history(path: Path) -> dict[str, np.ndarray]:
    with SQLiteHistoryStore(path) as store:
        return store.export_objects(list(store.iter_object_ids()))


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    kafka_bootstrap, atcat_file, tmp_path
) -> None:
    alerts = make_alerts(n_objects=40, every=1, cutout_bytes=500)
    assert len(alerts) >= 1000
    run = uuid.uuid4().hex[:8]
    source, calm_out, crash_out, dlq = (f"{k}-{run}" for k in ("in", "calm", "crash", "dlq"))
    _topics(kafka_bootstrap, source, calm_out, crash_out, dlq)
    _publish(kafka_bootstrap, source, [a.data for a in alerts])

    # The uninterrupted run.
    calm_topics = {"input": source, "output": calm_out, "dlq": dlq}
    _run_service(
        _env(kafka_bootstrap, calm_topics, atcat_file, STREAMER_HISTORY_PATH=str(tmp_path / "calm.sqlite"))
        | {"STREAMER_GROUP_ID": f"calm-{run}", "STREAMER_BATCH_MAX_MESSAGES": "40"}
    )

    # The same input, killed at random moments.
    crash_topics = {"input": source, "output": crash_out, "dlq": dlq}
    env = {
        **os.environ,
        **_env(
            kafka_bootstrap, crash_topics, atcat_file, STREAMER_HISTORY_PATH=str(tmp_path / "crash.sqlite")
        ),
        "STREAMER_GROUP_ID": f"crash-{run}",
        "STREAMER_INSTANCE_ID": "crash-0",
        "STREAMER_BATCH_MAX_MESSAGES": "40",
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "false",
    }
    rng = np.random.default_rng(2026)
    kills = 0
    while kills < KILLS:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(float(rng.uniform(1.5, 6.0)))
        if proc.poll() is not None:
            pytest.fail(f"the service exited by itself with status {proc.returncode}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
    final = {**env, "STREAMER_EXIT_WHEN_CAUGHT_UP": "true"}
    finished = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run"], env=final, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    # The killed runs did real work: the last one only had the rest left.
    done_last = int(finished.stderr.rsplit("stopped: ", 1)[1].split(" messages", 1)[0])
    assert done_last < len(alerts)

    calm = _records(kafka_bootstrap, calm_out, len(alerts))
    crashed = _records(kafka_bootstrap, crash_out, len(alerts))
    assert set(calm) == {a.alert_id for a in alerts}
    assert set(crashed) == set(calm), "alerts lost"
    for alert_id, embedding in calm.items():
        np.testing.assert_allclose(crashed[alert_id], embedding, rtol=0, atol=1e-5)
    calm_history, crash_history = _history(tmp_path / "calm.sqlite"), _history(tmp_path / "crash.sqlite")
    assert calm_history.keys() == crash_history.keys()
    for object_id, points in calm_history.items():
        for field in points.dtype.names or ():  # field by field: NaN magnitudes compare equal
            np.testing.assert_array_equal(crash_history[object_id][field], points[field], err_msg=field)
