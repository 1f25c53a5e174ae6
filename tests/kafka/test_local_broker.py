"""The Kafka broker the integration tests run against: plain and transactional
produce/consume, and the local broker's own life cycle (restart, freeze, cached jars)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer import kafka_local
from streamer.kafka_local import LocalKafka, random_cluster_id


def _consumer(bootstrap: str, *, isolation: str = "read_committed", group: str | None = None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )


def _read(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    isolation: str = "read_committed",
    timeout: float = 30.0,
) -> list[Message]:
    consumer = _consumer(bootstrap, isolation=isolation)
    consumer.subscribe([topic])
    seen: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(seen):
            assert time.monotonic() < deadline, f"read {len(seen)} messages of {topic} in {timeout} s"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            seen.append(msg)
    finally:
        consumer.close()
    return seen


def _values(messages: list[Message]) -> list[bytes]:
    return [m.value() or b"" for m in messages]


def _transactional(bootstrap: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    return producer


# ----------------------------------------------------------------------------- no broker


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)


def test_server_properties_run_broker_and_controller_on_loopback(tmp_path) -> None:
    broker = LocalKafka(
        port=19092, controller_port=19093, work_dir=tmp_path, properties={"num.partitions": 3}
    )
    props = broker.server_properties()
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "3"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert broker.bootstrap_servers == "127.0.0.1:19092"


def test_cached_classpath_does_not_run_maven(tmp_path, monkeypatch) -> None:
    version_dir = tmp_path / "9.9.9"
    (version_dir / "libs").mkdir(parents=True)
    jar = version_dir / "libs" / "kafka_2.13-9.9.9.jar"
    jar.write_bytes(b"")
    (version_dir / "classpath.txt").write_text("libs/kafka_2.13-9.9.9.jar\n")

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("Maven ran although the jars are cached")

    monkeypatch.setattr(subprocess, "run", no_maven)
    assert kafka_local.ensure_kafka_classpath("9.9.9", tmp_path) == [jar]
    jar.unlink()  # an incomplete cache is resolved again
    with pytest.raises(AssertionError, match="Maven ran"):
        kafka_local.ensure_kafka_classpath("9.9.9", tmp_path, mvn="mvn")


# ----------------------------------------------------------------------------- the broker


@pytest.mark.kafka
def test_produce_and_consume(kafka_bootstrap: str, kafka_topic_factory) -> None:
    topic = kafka_topic_factory(3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(12)}
    for key, value in sent.items():
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0

    got = _read(kafka_bootstrap, topic, until=lambda seen: len(seen) >= len(sent))
    assert {m.key(): m.value() for m in got} == sent
    assert len({m.partition() for m in got}) > 1  # keys spread over the partitions
    for m in got:  # the same key always lands in the same partition
        assert [x.partition() for x in got if x.key() == m.key()] == [m.partition()]


@pytest.mark.kafka
def test_read_committed_sees_committed_not_aborted_transactions(kafka_bootstrap, kafka_topic_factory) -> None:
    topic = kafka_topic_factory(1)
    producer = _transactional(kafka_bootstrap)
    for batch, commit in ((b"a", True), (b"b", False), (b"c", True)):
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, batch + str(i).encode())
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)  # the aborted records are written to the log, then aborted
            producer.abort_transaction(30)

    # read_committed delivers in offset order: once c2 arrived, nothing of b was skipped silently.
    committed = _read(kafka_bootstrap, topic, until=lambda seen: b"c2" in _values(seen))
    assert _values(committed) == [b"a0", b"a1", b"a2", b"c0", b"c1", b"c2"]
    uncommitted = _read(
        kafka_bootstrap, topic, isolation="read_uncommitted", until=lambda seen: b"c2" in _values(seen)
    )
    assert _values(uncommitted) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2", b"c0", b"c1", b"c2"]


@pytest.mark.kafka
def test_send_offsets_to_transaction_commits_the_input_offsets(kafka_bootstrap, kafka_topic_factory) -> None:
    source, sink = kafka_topic_factory(2, prefix="in"), kafka_topic_factory(1, prefix="out")
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        plain.produce(source, str(i).encode(), key=str(i).encode())
    assert plain.flush(30) == 0

    group = f"g-{uuid.uuid4().hex[:8]}"
    producer = _transactional(kafka_bootstrap)

    def process_all(commit: bool) -> list[TopicPartition]:
        """Consume-transform-produce every input message in one transaction."""
        consumer = _consumer(kafka_bootstrap, group=group)
        consumer.subscribe([source])
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while len(got) < 10:
            assert time.monotonic() < deadline, f"consumed {len(got)} of 10"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        producer.begin_transaction()
        for msg in got:
            producer.produce(sink, (msg.value() or b"") * 2)
        positions = consumer.position(consumer.assignment())
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        consumer.close()
        return positions

    process_all(commit=False)
    checker = _consumer(kafka_bootstrap, group=group)
    committed = checker.committed([TopicPartition(source, p) for p in (0, 1)], timeout=30)
    assert all(tp.offset < 0 for tp in committed)  # aborted: no offsets for the group

    positions = process_all(commit=True)  # the group starts again from the beginning
    committed = checker.committed([TopicPartition(source, p) for p in (0, 1)], timeout=30)
    checker.close()
    assert {(tp.partition, tp.offset) for tp in committed} == {(tp.partition, tp.offset) for tp in positions}
    assert sum(tp.offset for tp in committed) == 10

    out = _read(kafka_bootstrap, sink, until=lambda seen: len(seen) >= 10)
    assert sorted(_values(out)) == sorted(str(i).encode() * 2 for i in range(10))


@pytest.mark.kafka
def test_local_broker_survives_a_crash_and_a_freeze(local_kafka: LocalKafka, kafka_topic_factory) -> None:
    bootstrap = local_kafka.bootstrap_servers
    topic = kafka_topic_factory(1, bootstrap=bootstrap)
    producer = _transactional(bootstrap)
    producer.begin_transaction()
    producer.produce(topic, b"before")
    producer.commit_transaction(30)

    local_kafka.pause(kill=True)  # SIGKILL: a crash
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", local_kafka.port), timeout=1).close()
    local_kafka.resume()
    assert local_kafka.bootstrap_servers == bootstrap  # same port, same data
    producer.begin_transaction()
    producer.produce(topic, b"after")
    producer.commit_transaction(60)
    assert _values(_read(bootstrap, topic, until=lambda seen: len(seen) >= 2)) == [b"before", b"after"]

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    local_kafka.freeze()
    try:
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1)
    finally:
        local_kafka.thaw()
    assert topic in admin.list_topics(timeout=10).topics
