"""``streamer run`` against a real Kafka broker: exactly-once outputs, dead letters,
restarts, SIGTERM drain, metrics and health, configuration errors."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from prometheus_client import generate_latest

from streamer.config import Config
from streamer.service import Service
from streamer.sinks.kafka import decode_record_value
from tests.alert_factory import expected_embedding, make_alerts

pytestmark = pytest.mark.kafka


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        producer.produce(topic, value=v)
    assert producer.flush(30) == 0


def committed_reader(client: dict[str, Any], **extra: Any) -> Consumer:
    """A consumer in a group of its own that reads from the start what is committed."""
    return Consumer(
        {
            **client,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **extra,
        }
    )


def read_changelog(bootstrap: str, topic: str, partitions: int) -> dict[int, dict[bytes, bytes]]:
    """Each partition's latest committed value per key (what compaction keeps)."""
    consumer = committed_reader({"bootstrap.servers": bootstrap}, **{"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    latest: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    reading, deadline = set(range(partitions)), time.monotonic() + 30
    while reading and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                latest[msg.partition()][msg.key()] = msg.value()
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                reading.discard(msg.partition())
    consumer.close()
    assert not reading, f"partitions {sorted(reading)} not read to their end"
    return latest


def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0, **extra: Any) -> list:
    """``topic``'s committed messages (``extra``: other consumer settings), read until
    ``expected`` are in and then a quiet second, or ``timeout``."""
    consumer = committed_reader({"bootstrap.servers": bootstrap}, **extra)
    consumer.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + timeout
    # Read until the expected count and then a quiet second, to catch duplicates.
    quiet_until = None
    while time.monotonic() < deadline:
        batch = [m for m in consumer.consume(500, 0.5) if m.error() is None]
        out.extend(batch)
        if len(out) >= expected:
            quiet_until = quiet_until or time.monotonic() + 1.0
            if time.monotonic() > quiet_until:
                break
    consumer.close()
    return out


def _env(bootstrap: str, topics: dict[str, str], model_file: Path, **extra: str) -> dict[str, str]:
    return {
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_INPUT_TOPICS": topics["input"],
        "STREAMER_OUTPUT_TOPIC": topics["output"],
        "STREAMER_DEAD_LETTER_TOPIC": topics["dlq"],
        "STREAMER_GROUP_ID": f"g-{topics['input']}",
        "STREAMER_MODEL_FILE": str(model_file),
        "STREAMER_METRICS_PORT": str(_free_port()),
        "STREAMER_BATCH_MAX_WAIT_S": "0.5",
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "true",
        **extra,
    }


def _run_service(env: dict[str, str]) -> Service:
    service = Service(Config.load(env))
    assert service.run(install_signals=False) == 0
    return service


@pytest.mark.parametrize(
    "delivery, decode_processes",
    [("exactly-once", "0"), ("at-least-once", "0"), ("exactly-once", "2")],
    ids=["exactly-once", "at-least-once", "decode-processes"],
)
def test_outputs_equal_direct_embedding_of_expected_curves(
    kafka_bootstrap, topics, atcat_file, delivery, decode_processes, caplog
) -> None:
    alerts = make_alerts(n_objects=4, every=3)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts])
    with caplog.at_level(logging.INFO, logger="streamer"):
        env = _env(
            kafka_bootstrap,
            topics,
            atcat_file,
            STREAMER_DELIVERY=delivery,
            STREAMER_DECODE_PROCESSES=decode_processes,
        )
        service = _run_service({**env, "STREAMER_BATCH_MAX_MESSAGES": "7"})
    assert service.stats["alerts"] == len(alerts)
    # The stop line is what benchmarks/e2e.py reads: counts, busy wall time and CPU time.
    (summary,) = [r.fields for r in caplog.records if r.getMessage().startswith("stopped:")]
    assert summary["alerts"] == len(alerts) and summary["batches"] >= len(alerts) // 7
    assert 0 < summary["cpu_seconds"] and 0 < summary["busy_seconds"]
    # With decoding workers, they decoded (their CPU time is counted in cpu_seconds).
    workers = summary["decode_worker_cpu_seconds"]
    assert (0 < workers < summary["cpu_seconds"]) if decode_processes != "0" else workers == 0
    assert {"decode", "embed", "produce", "commit"} <= set(summary["stage_seconds"])
    out = _read_all(kafka_bootstrap, topics["output"], len(alerts))
    records = {}
    for msg in out:
        record = decode_record_value(msg.value())
        assert msg.key() == record.object_id.encode()
        assert record.alert_id not in records, "duplicate record"
        records[record.alert_id] = record
    assert set(records) == {a.alert_id for a in alerts}
    for a in alerts:
        np.testing.assert_allclose(
            records[a.alert_id].embedding, expected_embedding(atcat_file, a.curve), atol=1e-5
        )


@pytest.mark.parametrize("decode_processes", ["0", "2"])
def test_rejected_alerts_go_to_the_dead_letter_topic(
    kafka_bootstrap, topics, atcat_file, decode_processes
) -> None:
    alerts = make_alerts(n_objects=1, every=6)
    bad = [alerts[0].data[:30], b"\x00\x00\x00\x99\x99" + alerts[0].data[5:], os.urandom(200)]
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts] + bad)
    env = _env(kafka_bootstrap, topics, atcat_file, STREAMER_DECODE_PROCESSES=decode_processes)
    service = _run_service(env)
    assert service.stats["rejected"] == 3
    dead = _read_all(kafka_bootstrap, topics["dlq"], 3)
    assert sorted(m.value() for m in dead) == sorted(bad)
    for m in dead:
        headers = dict(m.headers())
        assert headers["streamer.reason"].decode() in {
            "truncated",
            "unknown_schema",
            "not_avro",
            "schema_mismatch",
        }
        assert headers["streamer.source.topic"].decode() == topics["input"]
        assert int(headers["streamer.source.offset"]) >= 0
    assert len(_read_all(kafka_bootstrap, topics["output"], len(alerts))) == len(alerts)
    text = generate_latest(service.metrics.registry).decode()
    assert 'streamer_alerts_rejected_total{reason="truncated"} 1.0' in text


def test_restart_resumes_from_committed_offsets_without_duplicates(
    kafka_bootstrap, topics, atcat_file
) -> None:
    alerts = make_alerts(n_objects=3, every=2)
    half = len(alerts) // 2
    env = _env(kafka_bootstrap, topics, atcat_file, STREAMER_BATCH_MAX_MESSAGES="5")
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts[:half]])
    first = _run_service(env)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts[half:]])
    second = _run_service({**env, "STREAMER_METRICS_PORT": str(_free_port())})
    assert first.stats["alerts"] == half and second.stats["alerts"] == len(alerts) - half
    ids = [
        decode_record_value(m.value()).alert_id
        for m in _read_all(kafka_bootstrap, topics["output"], len(alerts))
    ]
    assert sorted(ids) == sorted(a.alert_id for a in alerts)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_metrics_and_health_endpoints_while_running(kafka_bootstrap, topics, atcat_file) -> None:
    alerts = make_alerts(n_objects=2, every=3)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts])
    env = _env(kafka_bootstrap, topics, atcat_file, STREAMER_EXIT_WHEN_CAUGHT_UP="false")
    service = Service(Config.load(env))
    base = f"http://127.0.0.1:{service.config.metrics_port}"
    thread = threading.Thread(target=service.run, kwargs={"install_signals": False})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while service.stats["alerts"] < len(alerts) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _get(base + "/healthz")[0] == 200
        status, body = _get(base + "/readyz")
        assert status == 200, body
        _, metrics = _get(base + "/metrics")
        text = metrics.decode()
        assert f'streamer_alerts_consumed_total{{topic="{topics["input"]}"}} {float(len(alerts))}' in text
        assert f"streamer_embeddings_produced_total {float(len(alerts))}" in text
        assert 'streamer_alerts_decoded_total{survey="lsst"}' in text
        for stage in ("decode", "history", "embed", "produce", "commit"):
            assert f'streamer_stage_seconds_count{{stage="{stage}"}}' in text
        assert 'streamer_windows_total{source="computed"}' in text
        assert "streamer_onnx_batch_windows_count" in text
        assert f'streamer_consumer_lag{{partition="0",topic="{topics["input"]}"}} 0.0' in text
        assert "streamer_history_objects 2.0" in text
        assert 'streamer_model_info{model="atcat:atcat_f32.onnx"' in text
    finally:
        service.request_stop()
        thread.join(60)
    assert not thread.is_alive()


def test_sigterm_drains_the_batch_then_restart_completes_exactly_once(
    kafka_bootstrap, topics, atcat_file
) -> None:
    alerts = make_alerts(n_objects=6, every=1)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts])
    env = {
        **os.environ,
        **_env(kafka_bootstrap, topics, atcat_file, STREAMER_BATCH_MAX_MESSAGES="3"),
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    # Wait until it has produced something, then ask it to stop mid-stream.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not _read_all(kafka_bootstrap, topics["output"], 1, timeout=2):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGUSR1)  # prints every thread's stack, and goes on
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stop requested: draining the current batch" in err
    stacks = err[err.index("(most recent call first)") :]
    assert re.search(r'streamer/service\.py", line \d+ in run\n', stacks), "no stack of the main loop"
    done_first = len(_read_all(kafka_bootstrap, topics["output"], 1, timeout=5))
    assert 0 < done_first < len(alerts)
    _run_service({**_env(kafka_bootstrap, topics, atcat_file)})
    ids = [
        decode_record_value(m.value()).alert_id
        for m in _read_all(kafka_bootstrap, topics["output"], len(alerts))
    ]
    assert sorted(ids) == sorted(a.alert_id for a in alerts)


def test_replay_from_kafka_by_time_window(kafka_bootstrap, topics, atcat_file) -> None:
    alerts = make_alerts(n_objects=2, every=2)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts[:3]])
    time.sleep(1.2)
    middle = int(time.time() * 1000)
    time.sleep(0.2)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts[3:]])
    env = _env(
        kafka_bootstrap, topics, atcat_file, STREAMER_START_FROM="time", STREAMER_START_TIME_MS=str(middle)
    )
    service = _run_service(env)
    assert service.stats["alerts"] == len(alerts) - 3
    replay_until = _env(
        kafka_bootstrap,
        topics,
        atcat_file,
        STREAMER_START_FROM="beginning",
        STREAMER_UNTIL_TIME_MS=str(middle),
        STREAMER_GROUP_ID=f"until-{topics['input']}",
    )
    assert _run_service(replay_until).stats["alerts"] == 3


def test_configuration_error_exits_2_naming_the_setting(tmp_path) -> None:
    env = {**os.environ, "STREAMER_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STREAMER_INPUT_TOPICS": "a"}
    env["STREAMER_BATCH_MAX_MESSAGES"] = "lots"
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "run"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "STREAMER_BATCH_MAX_MESSAGES: expected integer, got 'lots'" in proc.stderr
