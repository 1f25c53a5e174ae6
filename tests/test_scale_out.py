"""Several replicas of ``streamer run`` with the history changelog give the records of one.

Alerts here carry only their last few points (``history_window``), as real alerts carry a
window of the past, so a record equals the embedding of the whole light curve only when
the object's earlier alerts are in the history the replica reads: a replica that took an
object over without its history would embed a shorter curve.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer import kafka_local
from streamer.config import Config
from streamer.history import SQLiteHistoryStore
from streamer.history import changelog as history_changelog
from streamer.records import EmbeddingRecord
from streamer.service import Service
from streamer.sinks.kafka import decode_record_value
from tests.alert_factory import GeneratedAlert, expected_embedding, make_alerts
from tests.test_outage import _counter, _wait
from tests.test_service import _env, _free_port, _read_all, _run_service, committed_reader, read_changelog

pytestmark = pytest.mark.kafka

PARTITIONS = 4
WINDOW = 4
COMPACTED = {"cleanup.policy": "compact"}
PRODUCED = "streamer_embeddings_produced_total"


def _publish_keyed(bootstrap: str, topic: str, alerts: list[GeneratedAlert]) -> dict[str, int]:
    """Keyed by object id, as ``streamer repartition`` publishes; returns each object's partition."""
    partition_of: dict[str, int] = {}

    def delivered(err: KafkaError | None, msg: object) -> None:
        assert err is None, err
        partition_of[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": bootstrap})
    for a in alerts:
        producer.produce(topic, key=a.object_id.encode(), value=a.data, on_delivery=delivered)
    assert producer.flush(30) == 0
    return partition_of


def _records(bootstrap: str, topic: str, expected: int) -> dict[int, EmbeddingRecord]:
    out: dict[int, EmbeddingRecord] = {}
    for msg in _read_all(bootstrap, topic, expected, timeout=60):
        record = decode_record_value(msg.value())
        assert msg.key() == record.object_id.encode()
        assert record.alert_id not in out, f"duplicate record for alert {record.alert_id}"
        out[record.alert_id] = record
    return out


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset (after the last record or transaction marker)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in range(partitions)}
    finally:
        consumer.close()


def _assert_same_records(got: dict[int, EmbeddingRecord], want: dict[int, EmbeddingRecord]) -> None:
    assert sorted(got) == sorted(want)
    for alert_id, record in want.items():
        other = got[alert_id]
        for name in EmbeddingRecord.__dataclass_fields__:
            if name == "embedding":
                np.testing.assert_allclose(other.embedding, record.embedding, rtol=0, atol=1e-6)
            elif name != "produced_at_ms":
                assert getattr(other, name) == getattr(record, name), (alert_id, name)


def _env_of(bootstrap: str, source: str, model: Path, **extra: str) -> dict[str, str]:
    """Settings of a run on ``source`` writing to an output topic of its own."""
    run = uuid.uuid4().hex[:8]
    topics = {"input": source, "output": f"out-{run}", "dlq": f"dlq-{run}"}
    kafka_local.create_topics(bootstrap, {topics["output"]: 2, topics["dlq"]: 1})
    return _env(bootstrap, topics, model, STREAMER_GROUP_ID=f"g-{run}", **extra)


def _assert_embeds_whole_curves(
    records: dict[int, EmbeddingRecord], alerts: list[GeneratedAlert], model: Path
) -> None:
    """Each record embeds its object's whole curve, which the alert alone does not give."""
    for a in alerts:
        whole = expected_embedding(model, a.curve)
        np.testing.assert_allclose(records[a.alert_id].embedding, whole, rtol=0, atol=1e-5)
        if len(a.curve) > WINDOW + 2:
            assert not np.allclose(expected_embedding(model, a.curve[-WINDOW:]), whole, atol=1e-3)


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
def test_changelog_run_gives_the_records_of_one_store_and_holds_each_objects_history(
    kafka_bootstrap: str,
    kafka_topic_factory: Callable[..., str],
    atcat_file: Path,
    tmp_path: Path,
    delivery: str,
) -> None:
    alerts = make_alerts(n_objects=8, every=1, base_points=20, cutout_bytes=100, history_window=WINDOW)
    source = kafka_topic_factory(PARTITIONS, prefix="alerts")
    partition_of = _publish_keyed(kafka_bootstrap, source, alerts)
    assert len(set(partition_of.values())) > 1
    changelog = kafka_topic_factory(PARTITIONS, prefix="history", config=COMPACTED)

    plain_env = _env_of(kafka_bootstrap, source, atcat_file, STREAMER_BATCH_MAX_MESSAGES="25")
    _run_service(plain_env)
    plain = _records(kafka_bootstrap, plain_env["STREAMER_OUTPUT_TOPIC"], len(alerts))
    env = _env_of(
        kafka_bootstrap,
        source,
        atcat_file,
        STREAMER_BATCH_MAX_MESSAGES="25",
        STREAMER_HISTORY_CHANGELOG_TOPIC=changelog,
        STREAMER_HISTORY_PATH=str(tmp_path / "history"),
        STREAMER_DELIVERY=delivery,
    )
    service = _run_service(env)
    partitioned = _records(kafka_bootstrap, env["STREAMER_OUTPUT_TOPIC"], len(alerts))

    _assert_same_records(partitioned, plain)
    _assert_embeds_whole_curves(partitioned, alerts, atcat_file)
    assert service.stats["alerts"] == len(alerts)
    # The changelog: each object's whole stored history, in its input partition's number,
    # and where each partition's history stands in the input.
    latest = read_changelog(kafka_bootstrap, changelog, PARTITIONS)
    ends = _end_offsets(kafka_bootstrap, changelog, PARTITIONS)
    per_partition: dict[int, int] = defaultdict(int)
    for a in alerts:
        per_partition[partition_of[a.object_id]] += 1
    for p in range(PARTITIONS):
        values = latest.get(p, {})
        position = values.pop(history_changelog.POSITION_KEY, None)
        assert (history_changelog.decode_position(position) if position else 0) == per_partition[p]
        with SQLiteHistoryStore(tmp_path / "history" / f"{source}-{p}.sqlite") as store:
            stored = store.export_objects(store.iter_object_ids())
            checkpoint = store.checkpoint(f"changelog:{changelog}:{p}")
        assert {k.decode() for k in values} == set(stored) == {o for o, q in partition_of.items() if q == p}
        # The store's checkpoint: the next restore reads the changelog from just after the
        # last record of this run (exactly-once: its commit marker follows it).
        marker = 1 if delivery == "exactly-once" else 0
        assert checkpoint == ends[p] - marker, (p, checkpoint, ends[p])
        for key, value in values.items():
            object_id, points = history_changelog.decode_curve(value)
            assert object_id == key.decode()
            assert points.tobytes() == stored[object_id].tobytes()


def test_a_changelog_topic_missing_or_of_another_partition_count_is_refused_at_start_up(
    kafka_bootstrap: str,
    kafka_topic_factory: Callable[..., str],
    atcat_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = kafka_topic_factory(PARTITIONS, prefix="alerts")
    changelog = kafka_topic_factory(2, prefix="history", config=COMPACTED)
    for topic, message in [
        (changelog, f"{changelog!r} has 2 partitions but the input topic {source!r} has {PARTITIONS};"),
        (f"{changelog}-x", f"topic '{changelog}-x' does not exist; create it with cleanup.policy=compact"),
    ]:
        env = _env_of(kafka_bootstrap, source, atcat_file, STREAMER_HISTORY_CHANGELOG_TOPIC=topic)
        assert Service(Config.load(env)).run(install_signals=False) == 2
        assert (
            f"streamer: configuration error: STREAMER_HISTORY_CHANGELOG_TOPIC: {message}"
            in capsys.readouterr().err
        )


def _wait_group_empty(bootstrap: str, group: str, timeout: float = 30.0) -> None:
    """Until a static member that left (it stays until its session times out) is gone."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        description = admin.describe_consumer_groups([group])[group].result(10)
        if not description.members:
            return
        assert time.monotonic() < deadline, f"group {group} still has members"
        time.sleep(0.5)


def test_a_replica_with_an_empty_store_restores_the_history_from_the_changelog(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], atcat_file: Path, tmp_path: Path
) -> None:
    alerts = make_alerts(n_objects=6, every=1, base_points=20, cutout_bytes=100, history_window=WINDOW)
    by_object: dict[str, list[GeneratedAlert]] = defaultdict(list)
    for a in alerts:
        by_object[a.object_id].append(a)
    early = [a for object_alerts in by_object.values() for a in object_alerts[: len(object_alerts) // 2]]
    late = [a for object_alerts in by_object.values() for a in object_alerts[len(object_alerts) // 2 :]]
    source = kafka_topic_factory(PARTITIONS, prefix="alerts")
    changelog = kafka_topic_factory(PARTITIONS, prefix="history", config=COMPACTED)
    _publish_keyed(kafka_bootstrap, source, early)

    env = _env_of(
        kafka_bootstrap,
        source,
        atcat_file,
        STREAMER_HISTORY_CHANGELOG_TOPIC=changelog,
        STREAMER_KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    first = _run_service(
        {**env, "STREAMER_INSTANCE_ID": "replica-a", "STREAMER_HISTORY_PATH": str(tmp_path / "a")}
    )
    assert first.stats["alerts"] == len(early)
    _wait_group_empty(kafka_bootstrap, env["STREAMER_GROUP_ID"])
    _publish_keyed(kafka_bootstrap, source, late)
    second = _run_service(
        {
            **env,
            "STREAMER_INSTANCE_ID": "replica-b",
            "STREAMER_HISTORY_PATH": str(tmp_path / "b"),
            "STREAMER_METRICS_PORT": str(_free_port()),
        }
    )
    assert second.stats["alerts"] == len(late)
    restored = second.metrics.history_restored_records._value.get()
    assert restored >= len(by_object), "the histories came from the changelog"

    records = _records(kafka_bootstrap, env["STREAMER_OUTPUT_TOPIC"], len(alerts))
    reference_env = _env_of(kafka_bootstrap, source, atcat_file)
    _run_service(reference_env)
    reference = _records(kafka_bootstrap, reference_env["STREAMER_OUTPUT_TOPIC"], len(alerts))
    _assert_same_records(records, reference)
    _assert_embeds_whole_curves({a.alert_id: records[a.alert_id] for a in late}, late, atcat_file)


def _wait_for_every_record(bootstrap: str, topic: str, alerts: list[GeneratedAlert], timeout: float) -> None:
    consumer = committed_reader({"bootstrap.servers": bootstrap})
    consumer.subscribe([topic])
    missing = {a.alert_id for a in alerts}
    deadline = time.monotonic() + timeout
    try:
        while missing:
            assert time.monotonic() < deadline, f"{len(missing)} alerts have no record"
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    missing.discard(decode_record_value(msg.value()).alert_id)
    finally:
        consumer.close()


#: ``streamer run`` whose transactions stay open 0.3 s after their offsets are sent, so that
#: a SIGKILL most likely lands in one: the survivor then waits for the broker to abort it
#: (``transaction.timeout.ms``) before the dead replica's committed offsets are final.
SLOW_TRANSACTIONS = """
import sys, time
from streamer.cli import main
from streamer.service import Service

class SlowCommits:
    def __init__(self, producer):
        self.producer = producer
    def __getattr__(self, name):
        return getattr(self.producer, name)
    def send_offsets_to_transaction(self, *args):
        self.producer.send_offsets_to_transaction(*args)
        time.sleep(0.3)

new_producer = Service._new_producer
Service._new_producer = lambda self: SlowCommits(new_producer(self))
sys.argv[0] = "streamer"
main()
"""


@pytest.mark.slow
def test_two_replicas_one_killed_mid_run_give_the_records_of_one(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], atcat_file: Path, tmp_path: Path
) -> None:
    alerts = make_alerts(n_objects=24, every=1, base_points=30, cutout_bytes=100, history_window=WINDOW)
    alerts.sort(key=lambda a: float(a.curve["time"][-1]))  # a live stream: objects interleaved
    assert 700 < len(alerts) < 1500
    source = kafka_topic_factory(PARTITIONS, prefix="alerts")
    changelog = kafka_topic_factory(PARTITIONS, prefix="history", config=COMPACTED)
    head = len(alerts) // 5
    _publish_keyed(kafka_bootstrap, source, alerts[:head])

    env = _env_of(
        kafka_bootstrap,
        source,
        atcat_file,
        STREAMER_BATCH_MAX_MESSAGES="20",
        STREAMER_HISTORY_CHANGELOG_TOPIC=changelog,
        STREAMER_EXIT_WHEN_CAUGHT_UP="false",
        # Static membership keeps a dead replica's partitions for the session timeout
        # (the service's default is 120 s), and its open transaction holds the committed
        # offsets back until it times out.
        STREAMER_KAFKA_SESSION_TIMEOUT_MS="6000",
        STREAMER_KAFKA_TRANSACTION_TIMEOUT_MS="10000",
    )
    ports = {"a": _free_port(), "b": _free_port()}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, command: list[str]) -> None:
        replica_env = {
            **os.environ,
            **env,
            "STREAMER_INSTANCE_ID": f"replica-{name}",
            "STREAMER_HISTORY_PATH": str(tmp_path / name),
            "STREAMER_METRICS_PORT": str(ports[name]),
        }
        with (tmp_path / f"{name}.log").open("w") as log:
            procs[name] = subprocess.Popen([sys.executable, *command, "run"], env=replica_env, stderr=log)

    def feed() -> None:  # the rest of the stream, over about 20 s
        rest = alerts[head:]
        for i in range(0, len(rest), 25):
            _publish_keyed(kafka_bootstrap, source, rest[i : i + 25])
            time.sleep(20 * 25 / len(rest))

    feeder = threading.Thread(target=feed)
    try:
        start("a", ["-c", SLOW_TRANSACTIONS])
        _wait(lambda: _counter(ports["a"], PRODUCED) > 0, 90, "replica a's first records")
        feeder.start()
        start("b", ["-m", "streamer.cli"])
        _wait(lambda: _counter(ports["b"], PRODUCED) > 0, 90, "replica b's first records")
        assert feeder.is_alive(), "the stream ended before replica a could be killed mid-run"
        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait(30)
        # Replica b takes replica a's partitions over, with their history from the changelog.
        feeder.join()
        _wait_for_every_record(kafka_bootstrap, env["STREAMER_OUTPUT_TOPIC"], alerts, timeout=120)
        procs["b"].send_signal(signal.SIGTERM)
        assert procs["b"].wait(60) == 0
    finally:
        if feeder.is_alive():
            feeder.join()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    # After the takeover (its last rebalance), replica b read replica a's partitions' histories.
    running = (tmp_path / "b.log").read_text().split("stop requested", 1)[0]
    takeover = running.rsplit(" revoked ", 1)[1]
    restored = re.findall(r"restored the history of \S+: (\d+) changelog records", takeover)
    assert len(restored) == PARTITIONS and sum(map(int, restored)) > 0, takeover[-3000:]

    reference_env = _env_of(kafka_bootstrap, source, atcat_file, STREAMER_BATCH_MAX_MESSAGES="20")
    _run_service(reference_env)
    reference = _records(kafka_bootstrap, reference_env["STREAMER_OUTPUT_TOPIC"], len(alerts))
    combined = _records(kafka_bootstrap, env["STREAMER_OUTPUT_TOPIC"], len(alerts))
    _assert_same_records(combined, reference)
    _assert_embeds_whole_curves(combined, alerts, atcat_file)
