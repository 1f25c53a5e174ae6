"""Fixtures shared by the whole suite: model files built with the published signatures."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamer import kafka_local
from streamer.embed import synthetic


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def astromer_file(model_dir: Path) -> Path:
    """Small Astromer-signature ONNX file (inputs/outputs named and shaped as astromer1.onnx)."""
    return synthetic.build_astromer(model_dir / "astromer1.onnx", seed=1)


@pytest.fixture(scope="session")
def atcat_file(model_dir: Path) -> Path:
    """Small ATCAT-signature ONNX file (as atcat_f32.onnx)."""
    return synthetic.build_atcat(model_dir / "atcat_f32.onnx", seed=2)


@pytest.fixture(scope="session")
def atcat_fp16_file(model_dir: Path) -> Path:
    """Small ATCAT-signature float16 ONNX file (as atcat_fp16.onnx)."""
    return synthetic.build_atcat(model_dir / "atcat_fp16.onnx", fp16=True, seed=3)


@pytest.fixture(autouse=True)
def _quiet_reference_warnings() -> None:
    # light_curve.embed warns that it is experimental on every model construction.
    warnings.filterwarnings("ignore", message=".*experimental.*")


# ----------------------------------------------------------------------------- Kafka
# A real broker for the tests marked ``kafka``: $KAFKA_BOOTSTRAP_SERVERS if set, else a
# testcontainers Kafka container when a Docker engine answers, else a broker run from
# Apache Kafka's jars on Maven Central (streamer.kafka_local: Java 17 + Maven).

#: Confluent image for testcontainers' KafkaContainer (its start script needs a cp-kafka
#: image); 8.x images run Apache Kafka 4.x in KRaft mode.
KAFKA_IMAGE = os.environ.get("STREAMER_KAFKA_IMAGE", "confluentinc/cp-kafka:8.0.0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kafka: needs a real Kafka broker ($KAFKA_BOOTSTRAP_SERVERS, Docker, or Java 17 + Maven)",
    )


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _local_kafka_missing() -> str | None:
    """Why a broker cannot run from Maven Central jars here, or None."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java (17+) for the local Kafka broker"
    version_dir = kafka_local.default_cache_dir() / kafka_local.DEFAULT_KAFKA_VERSION
    cached = (version_dir / "classpath.txt").is_file()
    if not cached and shutil.which("mvn") is None:
        return "no Maven to fetch the Kafka broker jars"
    return None


def _require_local_kafka() -> None:
    reason = _local_kafka_missing()
    if reason is not None:
        if os.environ.get("CI"):  # never skip the integration tests silently in CI
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``bootstrap.servers`` of a Kafka broker shared by the session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_engine_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        # Single broker: internal topics with replication 1 (transactions need these).
        for key in ("TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
            container.with_env(f"KAFKA_{key}_REPLICATION_FACTOR", "1")
            container.with_env(f"KAFKA_{key}_MIN_ISR", "1")
        with container:
            yield container.get_bootstrap_server()
        return
    _require_local_kafka()
    broker = kafka_local.LocalKafka().start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh input, output and dead-letter topics of 3 partitions each."""
    run = uuid.uuid4().hex[:8]
    names = {"input": f"in-{run}", "output": f"out-{run}", "dlq": f"dlq-{run}"}
    kafka_local.create_topics(kafka_bootstrap, dict.fromkeys(names.values(), 3))
    return names


@pytest.fixture
def local_kafka() -> Iterator[kafka_local.LocalKafka]:
    """A dedicated :class:`streamer.kafka_local.LocalKafka` of this test's own, to pause,
    kill, freeze and restart (outages); stopped and removed afterwards."""
    _require_local_kafka()
    with kafka_local.LocalKafka() as broker:
        yield broker


@contextmanager
def _topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    created: dict[str, list[str]] = {}

    def make(
        partitions: int = 1,
        *,
        prefix: str = "test",
        config: dict[str, str] | None = None,
        bootstrap: str | None = None,
    ) -> str:
        servers = bootstrap or kafka_bootstrap
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_local.create_topics(servers, {name: partitions}, config=config)
        created.setdefault(servers, []).append(name)
        return name

    yield make
    from confluent_kafka.admin import AdminClient

    for servers, names in created.items():
        try:  # best effort: the broker may be gone (a stopped local_kafka)
            admin = AdminClient({"bootstrap.servers": servers, "log_level": 0})
            for future in admin.delete_topics(names, operation_timeout=5, request_timeout=5).values():
                future.result(10)
        except Exception:
            pass


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, *, prefix="test", config=None, bootstrap=None) -> name``:
    creates a uniquely named topic (replication 1) on ``kafka_bootstrap`` (or
    ``bootstrap``), waits until its partitions have leaders, and deletes it afterwards."""
    with _topic_factory(kafka_bootstrap) as make:
        yield make


@pytest.fixture(scope="module")
def module_topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """:func:`kafka_topic_factory` for module-scoped fixtures (one service run shared by
    a module's tests); its topics are deleted after the module."""
    with _topic_factory(kafka_bootstrap) as make:
        yield make
