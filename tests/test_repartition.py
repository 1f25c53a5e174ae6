"""``streamer repartition`` against a real Kafka broker: an unkeyed alert topic re-keyed by
object id into a photometry topic that ``streamer run`` embeds to the same records."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from prometheus_client import generate_latest

from streamer import kafka_local
from streamer.alerts import AlertDecoder, photometry_codec
from streamer.cli import main
from streamer.config import Config
from streamer.repartition import Repartitioner
from streamer.service import Service
from streamer.sinks.kafka import decode_record_value
from tests.alert_factory import GeneratedAlert, make_alerts
from tests.test_service import _free_port, _read_all

INPUT_PARTITIONS = 3
OUTPUT_PARTITIONS = 4


def _topics(bootstrap: str, **partitions: int) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    names = {role: f"{role}-{run}" for role in partitions}
    kafka_local.create_topics(bootstrap, {names[role]: n for role, n in partitions.items()})
    return names


def _publish_round_robin(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Unkeyed, partition after partition, as an upstream broker of alerts publishes them."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % INPUT_PARTITIONS)
    assert producer.flush(30) == 0


def _repartition_env(bootstrap: str, source: str, target: str, dlq: str, **extra: str) -> dict[str, str]:
    return {
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_INPUT_TOPICS": source,
        "STREAMER_OUTPUT_TOPIC": target,
        "STREAMER_DEAD_LETTER_TOPIC": dlq,
        "STREAMER_GROUP_ID": f"repartition-{source}",
        "STREAMER_METRICS_PORT": str(_free_port()),
        "STREAMER_BATCH_MAX_WAIT_S": "0.5",
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "true",
        **extra,
    }


def _repartition(env: dict[str, str]) -> Repartitioner:
    repartitioner = Repartitioner(Config.load(env))
    assert repartitioner.run(install_signals=False) == 0
    return repartitioner


@dataclass
class Repartitioned:
    alerts: list[GeneratedAlert]
    poison: bytes
    topics: dict[str, str]
    repartitioner: Repartitioner
    processes: str


@pytest.fixture(scope="module", params=["0", "2"], ids=["main-process", "decode-processes"])
def repartitioned(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Repartitioned:
    """Alerts of six objects and one cut-off message, unkeyed over three partitions, repartitioned
    (decoded in the main process, or by two worker processes)."""
    topics = _topics(kafka_bootstrap, alerts=INPUT_PARTITIONS, photometry=OUTPUT_PARTITIONS, dlq=1)
    alerts = make_alerts(n_objects=6, every=6)
    poison = alerts[0].data[:30]
    values = [a.data for a in alerts]
    values.insert(len(values) // 2, poison)
    _publish_round_robin(kafka_bootstrap, topics["alerts"], values)
    env = _repartition_env(
        kafka_bootstrap,
        topics["alerts"],
        topics["photometry"],
        topics["dlq"],
        STREAMER_BATCH_MAX_MESSAGES="9",
        STREAMER_DECODE_PROCESSES=request.param,
    )
    return Repartitioned(alerts, poison, topics, _repartition(env), request.param)


@pytest.mark.kafka
def test_every_object_lands_in_one_partition_keyed_by_object_id_exactly_once(
    kafka_bootstrap: str, repartitioned: Repartitioned
) -> None:
    alerts = repartitioned.alerts
    out = _read_all(kafka_bootstrap, repartitioned.topics["photometry"], len(alerts))
    partitions_of: dict[str, set[int]] = defaultdict(set)
    decoded = {}
    for msg in out:
        alert = photometry_codec.decode(msg.value())
        assert msg.key() == alert.object_id.encode()
        assert dict(msg.headers())["content-type"] == photometry_codec.CONTENT_TYPE.encode()
        assert alert.alert_id not in decoded, "duplicate record"
        decoded[alert.alert_id] = alert
        partitions_of[alert.object_id].add(msg.partition())
    assert sorted(decoded) == sorted(a.alert_id for a in alerts)
    assert all(len(p) == 1 for p in partitions_of.values()), dict(partitions_of)
    assert len(set().union(*partitions_of.values())) > 1, "the objects are spread over the partitions"
    # Each record holds exactly what decoding the original alert gives.
    decoder = AlertDecoder()
    for a in alerts:
        original = decoder.decode(a.data)
        copy = decoded[a.alert_id]
        assert (copy.survey, copy.object_id, copy.alert_time, copy.schema) == (
            original.survey,
            original.object_id,
            original.alert_time,
            original.schema,
        )
        assert copy.points.tobytes() == original.points.tobytes()


@pytest.mark.kafka
def test_poison_message_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, repartitioned: Repartitioned
) -> None:
    dead = _read_all(kafka_bootstrap, repartitioned.topics["dlq"], 1)
    assert [m.value() for m in dead] == [repartitioned.poison]
    headers = dict(dead[0].headers())
    assert headers["streamer.reason"] == b"truncated"
    assert headers["streamer.source.topic"].decode() == repartitioned.topics["alerts"]
    assert 0 <= int(headers["streamer.source.partition"]) < INPUT_PARTITIONS
    stats = repartitioned.repartitioner.stats
    assert (stats["alerts"], stats["rejected"]) == (len(repartitioned.alerts), 1)
    text = generate_latest(repartitioned.repartitioner.metrics.registry).decode()
    assert 'streamer_alerts_rejected_total{reason="truncated"} 1.0' in text
    assert f'streamer_alerts_decoded_total{{survey="lsst"}} {float(len(repartitioned.alerts))}' in text
    # With decoding workers, they decoded.
    workers = repartitioned.repartitioner._busy_seconds()["decode_worker_cpu_seconds"]
    assert workers > 0 if repartitioned.processes != "0" else workers == 0


def _embed(bootstrap: str, source: str, model_file: Path, **extra: str) -> dict[int, object]:
    out = f"embeddings-{uuid.uuid4().hex[:8]}"
    kafka_local.create_topics(bootstrap, {out: 2, f"{out}-dlq": 1})
    env = {
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_INPUT_TOPICS": source,
        "STREAMER_OUTPUT_TOPIC": out,
        "STREAMER_DEAD_LETTER_TOPIC": f"{out}-dlq",
        "STREAMER_GROUP_ID": f"g-{out}",
        "STREAMER_MODEL_FILE": str(model_file),
        "STREAMER_METRICS_PORT": str(_free_port()),
        "STREAMER_BATCH_MAX_WAIT_S": "0.5",
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "true",
        **extra,
    }
    service = Service(Config.load(env))
    assert service.run(install_signals=False) == 0
    records = [decode_record_value(m.value()) for m in _read_all(bootstrap, out, service.stats["embeddings"])]
    return {r.alert_id: r for r in records}


@pytest.mark.kafka
def test_service_on_the_photometry_topic_gives_the_records_of_the_alert_topic(
    kafka_bootstrap: str, repartitioned: Repartitioned, atcat_file: Path
) -> None:
    direct = _embed(kafka_bootstrap, repartitioned.topics["alerts"], atcat_file)
    via = _embed(
        kafka_bootstrap, repartitioned.topics["photometry"], atcat_file, STREAMER_FRAMING="photometry"
    )
    assert sorted(via) == sorted(direct) == sorted(a.alert_id for a in repartitioned.alerts)
    for alert_id, record in direct.items():
        other = via[alert_id]
        assert (other.object_id, other.alert_time, other.points_per_band) == (
            record.object_id,
            record.alert_time,
            record.points_per_band,
        )
        np.testing.assert_allclose(other.embedding, record.embedding, atol=1e-5)


@pytest.mark.kafka
def test_at_least_once_restart_resumes_from_committed_offsets(kafka_bootstrap: str) -> None:
    topics = _topics(kafka_bootstrap, alerts=INPUT_PARTITIONS, photometry=2, dlq=1)
    alerts = make_alerts(n_objects=2, every=6, cutout_bytes=100)
    half = len(alerts) // 2
    env = _repartition_env(
        kafka_bootstrap,
        topics["alerts"],
        topics["photometry"],
        topics["dlq"],
        STREAMER_DELIVERY="at-least-once",
    )
    _publish_round_robin(kafka_bootstrap, topics["alerts"], [a.data for a in alerts[:half]])
    first = _repartition(env)
    _publish_round_robin(kafka_bootstrap, topics["alerts"], [a.data for a in alerts[half:]])
    second = _repartition({**env, "STREAMER_METRICS_PORT": str(_free_port())})
    assert (first.stats["alerts"], second.stats["alerts"]) == (half, len(alerts) - half)
    out = _read_all(kafka_bootstrap, topics["photometry"], len(alerts))
    assert sorted(photometry_codec.decode(m.value()).alert_id for m in out) == sorted(
        a.alert_id for a in alerts
    )


@pytest.mark.kafka
def test_sigterm_drains_the_batch_then_a_restart_completes_exactly_once(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topics = _topics(kafka_bootstrap, alerts=INPUT_PARTITIONS, photometry=2, dlq=1)
    alerts = make_alerts(n_objects=2, every=6, cutout_bytes=100)
    _publish_round_robin(kafka_bootstrap, topics["alerts"], [a.data for a in alerts])
    env = _repartition_env(
        kafka_bootstrap,
        topics["alerts"],
        topics["photometry"],
        topics["dlq"],
        STREAMER_BATCH_MAX_MESSAGES="2",
        STREAMER_EXIT_WHEN_CAUGHT_UP="false",
    )
    caplog.set_level(logging.INFO, logger="streamer")
    repartitioner = Repartitioner(Config.load(env))
    process = repartitioner._process

    def signalled_mid_batch(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, while this batch is in flight
        process(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(repartitioner, "_process", signalled_mid_batch)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert repartitioner.run() == 0
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert "stop requested: draining the current batch" in caplog.text
    assert repartitioner.stats["batches"] == 1
    first = _read_all(kafka_bootstrap, topics["photometry"], 1, timeout=3)
    assert 0 < len(first) == repartitioner.stats["alerts"] < len(alerts)
    # The stop line carries the totals and the busy span (what benchmarks/e2e.py reads).
    (summary,) = [r.fields for r in caplog.records if r.getMessage().startswith("stopped:")]
    assert summary["alerts"] == len(first) and summary["batches"] == 1
    assert summary["busy_seconds"] > 0 and summary["cpu_seconds"] > 0
    # The command line picks up from the committed offsets.
    env.update(STREAMER_METRICS_PORT=str(_free_port()))
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "repartition", "--exit-when-caught-up"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = _read_all(kafka_bootstrap, topics["photometry"], len(alerts))
    assert sorted(photometry_codec.decode(m.value()).alert_id for m in out) == sorted(
        a.alert_id for a in alerts
    )


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("STREAMER_OUTPUT_TOPIC", "alert-embeddings", "STREAMER_OUTPUT_TOPIC: name the photometry topic"),
        ("STREAMER_OUTPUT_TOPIC", "alerts", "STREAMER_OUTPUT_TOPIC: 'alerts' is also an input topic"),
        ("STREAMER_GROUP_ID", "streamer", "STREAMER_GROUP_ID: give streamer repartition its own"),
        ("STREAMER_FRAMING", "kafka", "STREAMER_FRAMING: expected one of auto, confluent"),
    ],
)
def test_configuration_errors_exit_2_naming_the_setting(setting: str, value: str, message: str) -> None:
    env = {
        "STREAMER_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "STREAMER_INPUT_TOPICS": "alerts",
        "STREAMER_OUTPUT_TOPIC": "photometry",
        "STREAMER_GROUP_ID": "repartition",
        setting: value,
    }
    result = CliRunner().invoke(main, ["repartition"], env=env)
    assert result.exit_code == 2
    assert message in result.output
