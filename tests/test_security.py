"""``streamer run`` against a broker that requires SASL_SSL with SCRAM-SHA-512, as Rubin's
community brokers do: configured as a user would (``STREAMER_KAFKA_*`` properties, the
password from a file), it embeds alerts; with a wrong password it exits at once naming the
authentication failure; the password shows nowhere, not even at debug level."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Message, Producer

from streamer.kafka_local import LocalKafka, create_topics, free_port
from streamer.sinks.kafka import decode_record_value
from tests.alert_factory import expected_embedding, make_alerts
from tests.conftest import _require_local_kafka
from tests.test_service import committed_reader

pytestmark = pytest.mark.kafka

USER = "alert-consumer"
#: Distinctive, so that any leak into logs, metrics or errors is found by a substring search.
PASSWORD = "Qz7-streamer-pw-8c1e94fd"
WRONG_PASSWORD = "Wx4-wrong-pw-51be2d77"


@pytest.fixture(scope="module")
def secured_kafka() -> Iterator[LocalKafka]:
    """A broker of this module's own serving SASL_SSL + SCRAM-SHA-512 to ``USER`` only."""
    _require_local_kafka()
    with LocalKafka(sasl_users={USER: PASSWORD}) as broker:
        yield broker


@pytest.fixture
def topics(secured_kafka: LocalKafka) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    names = {"input": f"in-{run}", "output": f"out-{run}", "dlq": f"dlq-{run}"}
    create_topics(
        secured_kafka.bootstrap_servers,
        {name: 2 for name in names.values()},
        client_config=secured_kafka.client_config(USER),
    )
    return names


def _service_env(broker: LocalKafka, topics: dict[str, str], model_file: Path, password_file: Path) -> dict:
    """The environment of a user's ``streamer run``, with debug logging everywhere."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    return {
        **inherited,
        "STREAMER_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "STREAMER_INPUT_TOPICS": topics["input"],
        "STREAMER_OUTPUT_TOPIC": topics["output"],
        "STREAMER_DEAD_LETTER_TOPIC": topics["dlq"],
        "STREAMER_GROUP_ID": f"g-{topics['input']}",
        "STREAMER_MODEL_FILE": str(model_file),
        "STREAMER_METRICS_PORT": str(free_port()),
        "STREAMER_BATCH_MAX_WAIT_S": "0.5",
        "STREAMER_LOG_LEVEL": "DEBUG",
        "STREAMER_KAFKA_DEBUG": "conf,security",
        "STREAMER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMER_KAFKA_SASL_MECHANISMS": "SCRAM-SHA-512",
        "STREAMER_KAFKA_SASL_USERNAME": USER,
        "STREAMER_KAFKA_SASL_PASSWORD_FILE": str(password_file),
        "STREAMER_KAFKA_SSL_CA_LOCATION": str(broker.ca_location),
    }


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read(broker: LocalKafka, topic: str, expected: int, timeout: float = 60.0) -> list[Message]:
    consumer = committed_reader(broker.client_config(USER))
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, 0.5) if m.error() is None)
    finally:
        consumer.close()
    return out


def test_service_embeds_alerts_over_sasl_ssl_and_never_shows_the_password(
    secured_kafka, topics, atcat_file, tmp_path
) -> None:
    alerts = make_alerts(n_objects=2, every=4)
    producer = Producer(secured_kafka.client_config(USER))
    for alert in alerts:
        producer.produce(topics["input"], alert.data)
    assert producer.flush(30) == 0
    password_file = tmp_path / "sasl-password"
    password_file.write_text(PASSWORD + "\n")  # as a mounted Kubernetes secret may end
    env = _service_env(secured_kafka, topics, atcat_file, password_file)

    proc = _start(env)
    try:
        out = _read(secured_kafka, topics["output"], len(alerts))
        with urllib.request.urlopen(
            f"http://127.0.0.1:{env['STREAMER_METRICS_PORT']}/metrics", timeout=10
        ) as r:
            metrics = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    own_lines = "\n".join(line for line in stderr.splitlines() if not line.startswith("%"))[-3000:]
    assert proc.returncode == 0, own_lines
    assert len(out) == len(alerts), own_lines

    records = {decode_record_value(m.value()).alert_id: decode_record_value(m.value()) for m in out}
    assert set(records) == {a.alert_id for a in alerts}
    for a in alerts:
        np.testing.assert_allclose(
            records[a.alert_id].embedding, expected_embedding(atcat_file, a.curve), atol=1e-5
        )
    assert f"streamer_embeddings_produced_total {float(len(alerts))}" in metrics
    # The startup line and the debug dump of the Kafka properties name the secret, masked.
    assert "starting: Config(" in stderr and "'sasl.password': '***'" in stderr
    assert "kafka properties:" in stderr
    for text in (stdout, stderr, metrics):
        assert PASSWORD not in text


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
def test_wrong_password_exits_promptly_naming_the_authentication_failure(
    secured_kafka, topics, atcat_file, tmp_path, delivery
) -> None:
    password_file = tmp_path / "sasl-password"
    password_file.write_text(WRONG_PASSWORD)
    env = {**_service_env(secured_kafka, topics, atcat_file, password_file), "STREAMER_DELIVERY": delivery}

    started = time.monotonic()
    proc = _start(env)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"streamer run kept running with a wrong password:\n{stderr[-3000:]}")
    elapsed = time.monotonic() - started

    assert proc.returncode == 1, stderr[-3000:]
    fatal = [line for line in stderr.splitlines() if line.startswith("streamer: fatal:")]
    assert fatal and "authentication failed" in fatal[-1].lower(), stderr[-3000:]
    assert "SCRAM-SHA-512" in fatal[-1] and "Traceback" not in stderr
    # Not after the 30 s start-up timeout of the transactional producer: at once.
    assert elapsed < 15, f"took {elapsed:.0f} s to give up"
    for text in (stdout, stderr):
        assert WRONG_PASSWORD not in text and PASSWORD not in text
