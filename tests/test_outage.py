"""Broker outage: the broker stops for 30 s mid-run; ``streamer run`` (and ``streamer
repartition``) stays up, reports not ready meanwhile, then resumes, and no alert is lost or
duplicated."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamer import kafka_local
from streamer.alerts import photometry_codec
from streamer.history import SQLiteHistoryStore
from streamer.history import changelog as history_changelog
from streamer.service import Service
from streamer.sinks.kafka import KafkaRecordSink, decode_record_value
from streamer.sources.kafka import FENCE_KEY, ConsumerLoop, Rewind, first_offsets, records_unread
from tests.alert_factory import make_alerts
from tests.test_repartition import _repartition, _repartition_env
from tests.test_service import (
    _env,
    _get,
    _publish,
    _read_all,
    _run_service,
    read_changelog,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_S = 30.0


def _counter(port: int, name: str) -> float:
    """A counter's total over its labels, from the process's /metrics (-1 before it serves)."""
    try:
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
    except OSError:  # not serving yet
        return -1.0
    if status != 200:
        return -1.0
    found = re.findall(rb"^" + name.encode() + rb"(?:\{[^}]*\})? (\S+)", body, re.M)
    return sum(float(v) for v in found) if found else -1.0


def _committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Messages of ``topic`` the group has committed (its offsets start at 0, no gaps)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    except KafkaException:  # the coordinator is still loading
        return -1
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in committed)


def _lost_and_duplicated(ids: list[int], alerts: list) -> tuple[list[int], list[int]]:
    """The input alerts missing from the output ids, and the ids the output holds twice."""
    counts = collections.Counter(ids)
    lost = sorted(a.alert_id for a in alerts if a.alert_id not in counts)
    return lost, sorted(i for i, n in counts.items() if n > 1)


def _positions(messages: list, alert_id_of, alert_ids: list[int]) -> str:
    """``alert_id@partition:offset`` of the given alerts among ``messages`` (``alert_id_of``:
    a message value's alert id, or None), ``alert_id@absent`` for those not there: for a
    failure's message."""
    ids = set(alert_ids)
    found: dict[int, list[str]] = {}
    for m in messages:
        alert_id = alert_id_of(m.value())
        if alert_id in ids:
            found.setdefault(alert_id, []).append(f"{m.partition()}:{m.offset()}")
    return ", ".join(f"{i}@{'/'.join(found.get(i, ['absent']))}" for i in sorted(ids))


@contextlib.contextmanager
def _streamer(command: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``streamer <command>`` as a process logging to ``log_path``. On a failure in the block
    every thread's stack goes to its log, it is killed and the log's end printed; else it is
    stopped (SIGTERM) and must exit with status 0."""
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", command], env=env, stderr=log)
    try:
        yield proc
    except BaseException:
        proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log, then stop it
        time.sleep(1)
        proc.kill()
        print(log_path.read_text()[-6000:])
        raise
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert code == 0, log_path.read_text()[-3000:]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _half_published(
    bootstrap: str, model_file: Path, tmp_path: Path, command: str, alerts: list, batch: int
) -> tuple[dict[str, str], dict[str, str], Callable[[bytes], Any]]:
    """Topics of 3 partitions for a long-running ``command`` (``run``, ``run-changelog``:
    per-partition history with a changelog, or ``repartition``), the first half of
    ``alerts`` published: the topics, the service's environment (batches of ``batch``
    messages) and the decoder of its output records."""
    run = uuid.uuid4().hex[:8]
    topics = {"input": f"in-{run}", "output": f"out-{run}", "dlq": f"dlq-{run}"}
    kafka_local.create_topics(bootstrap, {name: 3 for name in topics.values()})
    _publish(bootstrap, topics["input"], [a.data for a in alerts[: len(alerts) // 2]])
    if command == "repartition":
        env = _repartition_env(bootstrap, topics["input"], topics["output"], topics["dlq"])
        decode: Callable[[bytes], Any] = photometry_codec.decode
    else:
        env = _env(bootstrap, topics, model_file, STREAMER_HISTORY_PATH=str(tmp_path / "h.sqlite"))
        decode = decode_record_value
    if command == "run-changelog":  # per-partition history, its changelog in the transaction
        topics["changelog"] = f"history-{run}"
        kafka_local.create_topics(bootstrap, {topics["changelog"]: 3}, config={"cleanup.policy": "compact"})
        env["STREAMER_HISTORY_CHANGELOG_TOPIC"] = topics["changelog"]
    env = {
        **os.environ,
        **env,
        "STREAMER_BATCH_MAX_MESSAGES": str(batch),
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "false",
    }
    return topics, env, decode


@pytest.mark.parametrize("command", ["run", "run-changelog", "repartition"])
def test_broker_outage_of_30_s_mid_run_loses_and_duplicates_nothing(
    local_kafka, atcat_file, tmp_path, command
) -> None:
    bootstrap = local_kafka.bootstrap_servers
    alerts = make_alerts(n_objects=24, every=1, cutout_bytes=500)
    half = len(alerts) // 2
    topics, env, decode = _half_published(bootstrap, atcat_file, tmp_path, command, alerts, batch=20)
    port = int(env["STREAMER_METRICS_PORT"])
    # run: counted once the batch's transaction is committed; repartition: a batch's
    # alerts are decoded before its commit.
    progress = (
        "streamer_alerts_decoded_total" if command == "repartition" else "streamer_embeddings_produced_total"
    )
    log_path = tmp_path / f"{command}.log"
    with _streamer(command.split("-")[0], env, log_path) as proc:
        _wait(lambda: _counter(port, progress) > 0, 90, "the first alerts")
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200

        local_kafka.pause()  # mid-run: the first half is still being processed
        stopped = time.monotonic()
        not_ready_seen = False
        while time.monotonic() - stopped < OUTAGE_S:
            assert proc.poll() is None, f"streamer {command} exited during the outage"
            not_ready_seen |= _get(f"http://127.0.0.1:{port}/readyz")[0] == 503
            assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
            time.sleep(0.5)
        assert not_ready_seen, "/readyz never reported the broker outage"
        local_kafka.resume()

        _publish(bootstrap, topics["input"], [a.data for a in alerts[half:]])
        # Every input offset committed (a counter would count the batches processed
        # again after the outage twice).
        _wait(
            lambda: _committed_total(bootstrap, env["STREAMER_GROUP_ID"], topics["input"], 3) == len(alerts),
            150,
            "every alert committed after the outage",
        )
        _wait(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "ready again")
        assert proc.poll() is None

    records = [decode(m.value()) for m in _read_all(bootstrap, topics["output"], len(alerts), 60)]
    ids = [r.alert_id for r in records]
    lost, duplicated = _lost_and_duplicated(ids, alerts)
    if lost or duplicated:
        # Where the lost alerts sat in the input, and whether their records are in the
        # output at all; the broker's files are kept in tmp_path/broker for a closer look.
        try:
            shutil.copytree(local_kafka.work_dir, tmp_path / "broker", dirs_exist_ok=True)
        except OSError as exc:  # a file the live broker removed meanwhile
            print(f"broker files partly copied: {exc}")
        by_data = {a.data: a.alert_id for a in alerts}
        inputs = _read_all(bootstrap, topics["input"], len(alerts), 30)
        # Read uncommitted, aborted and open transactions too: tells a record hidden by its
        # transaction from one never written.
        outputs = _read_all(bootstrap, topics["output"], 10**9, 15, **{"isolation.level": "read_uncommitted"})
        where = (
            f"lost, by input position: {_positions(inputs, by_data.get, lost)}\n"
            f"lost, in the output read uncommitted: "
            f"{_positions(outputs, lambda value: decode(value).alert_id, lost)}\n"
        )
        pytest.fail(f"lost {lost}, duplicated {duplicated}\n{where}{log_path.read_text()[-6000:]}")
    assert not _read_all(bootstrap, topics["dlq"], 0, 3)
    if command == "run-changelog":
        # The changelog holds exactly each partition's stored histories: the batches whose
        # transactions the outage aborted were written again with their re-processing.
        latest = read_changelog(bootstrap, topics["changelog"], 3)
        objects = set()
        for p in range(3):
            values = latest.get(p, {})
            values.pop(history_changelog.POSITION_KEY, None)
            with SQLiteHistoryStore(tmp_path / "h.sqlite" / f"{topics['input']}-{p}.sqlite") as store:
                stored = store.export_objects(store.iter_object_ids())
            assert {k.decode() for k in values} == set(stored)
            for value in values.values():
                object_id, points = history_changelog.decode_curve(value)
                assert points.tobytes() == stored[object_id].tobytes()
            objects |= set(stored)
        assert objects == {a.object_id for a in alerts}


def test_the_records_of_a_transaction_read_back_only_once_it_is_committed(
    kafka_bootstrap, kafka_topic_factory
) -> None:
    """What decides whether an offset commit left pending by a confirmed transaction is
    committed or aborted: its records, noted by the sink from their delivery reports, read
    back with read_committed once committed, and not when aborted (passed over, at once,
    also at the partition's end)
    or still open (the partition ends before them, till the timeout), even among another
    producer's records and before an open transaction; each partition is told apart."""
    topic = kafka_topic_factory(2)
    errors: list = []
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"t-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    other = Producer({"bootstrap.servers": kafka_bootstrap})
    sink = KafkaRecordSink(producer, topic, topic, None, errors.append)  # type: ignore[var-annotated]

    def transaction(end: str, keys: list[bytes]) -> dict[tuple[str, int], list[int]]:
        producer.begin_transaction()
        sink.begin()
        for key in keys:
            sink.produce(topic=topic, key=key, value=b"x")
            other.produce(topic, key=key, value=b"y")  # not transactional: visible at once
        other.flush(10)
        assert sink.written() is None, "noted before its delivery was reported"
        producer.flush(10)
        if end != "open":
            (producer.commit_transaction if end == "commit" else producer.abort_transaction)(30)
        written = sink.written()
        assert written is not None and sum(map(len, written.values())) == len(keys)
        return written

    def unread(written: dict[tuple[str, int], list[int]]) -> set[tuple[str, int]]:
        reader = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": "check",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            return records_unread(reader, written, 5)
        finally:
            reader.close()

    keys = [f"object-{i}".encode() for i in range(6)]  # both partitions
    committed = transaction("commit", keys)
    assert len(committed) == 2
    aborted = transaction("abort", keys)
    for _ in range(2):  # at the partitions' end, then before other committed records
        started = time.monotonic()
        assert unread(aborted) == set(aborted)
        assert time.monotonic() - started < 5, "passed over, yet waited out the timeout"
        after = transaction("commit", keys)
    assert (unread(committed), unread(after)) == (set(), set())
    assert unread({**committed, (topic, 0): committed[(topic, 0)] + aborted[(topic, 0)]}) == {(topic, 0)}
    opened = transaction("open", keys)
    assert (unread(opened), unread(committed)) == (set(opened), set())
    producer.abort_transaction(30)
    assert errors == []


@pytest.mark.parametrize("command", ["run", "repartition"])
def test_a_broker_restarted_between_transactions_does_not_stall_the_next_one(
    local_kafka, atcat_file, tmp_path, command
) -> None:
    """A broker that restarts within seconds while the service waits for input closes the
    producer's idle connections, which librdkafka logs at level info only (no error
    callback, so no outage is seen): the alerts published after the restart are all
    committed, within a minute, and written exactly once."""
    bootstrap = local_kafka.bootstrap_servers
    alerts = make_alerts(n_objects=6, every=2, cutout_bytes=500)
    half = len(alerts) // 2
    topics, env, decode = _half_published(bootstrap, atcat_file, tmp_path, command, alerts, batch=10)
    group = env["STREAMER_GROUP_ID"]
    with _streamer(command, env, tmp_path / f"{command}.log") as proc:
        _wait(lambda: _committed_total(bootstrap, group, topics["input"], 3) == half, 90, "the first half")
        time.sleep(1.0)  # idle: no request of the producer outstanding
        local_kafka.restart()
        _publish(bootstrap, topics["input"], [a.data for a in alerts[half:]])
        _wait(
            lambda: _committed_total(bootstrap, group, topics["input"], 3) == len(alerts),
            60,
            "every alert committed after the restart",
        )
        assert proc.poll() is None
    ids = [decode(m.value()).alert_id for m in _read_all(bootstrap, topics["output"], len(alerts), 60)]
    assert _lost_and_duplicated(ids, alerts) == ([], [])


def test_a_failed_commit_consumes_again_the_batch_started_since_on_other_partitions(
    kafka_bootstrap, topics, atcat_file, monkeypatch
) -> None:
    """When a commit fails (the broker away), the next batch has been consumed and started
    already, and may hold other partitions: here each partition is exactly one batch. Both
    are consumed again; no alert of either is lost."""
    per_partition = 6
    alerts = make_alerts(n_objects=6, every=2)[: 3 * per_partition]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, a in enumerate(alerts):
        producer.produce(topics["input"], value=a.data, partition=i // per_partition)
    assert producer.flush(30) == 0
    commit = Service._commit_batch
    failed: list[set[int]] = []

    def fail_once(self, batch, write):  # as _commit_batch does when the broker is away
        if not failed:
            failed.append({m.partition() for m in batch})
            raise Rewind(first_offsets(batch))
        return commit(self, batch, write)

    monkeypatch.setattr(Service, "_commit_batch", fail_once)
    env = _env(kafka_bootstrap, topics, atcat_file, STREAMER_BATCH_MAX_MESSAGES=str(per_partition))
    service = _run_service(env)
    assert len(failed) == 1 and len(failed[0]) == 1, "the failed batch held one partition"
    ids = [decode_record_value(m.value()).alert_id for m in _read_all(kafka_bootstrap, topics["output"], 18)]
    assert _lost_and_duplicated(ids, alerts) == ([], [])
    assert service.stats["alerts"] == len(alerts)


class _CutCommit:
    """A transactional producer whose first commit a broker outage cuts, in one of these ways:

    - ``timed-out``: ``commit_transaction`` times out before the broker confirms it;
    - ``fatal-applied``: the broker applied the commit, then the producer failed for good
      (fenced) before learning it;
    - ``not-applied``: the offsets never reached the broker;
    - ``lost``: the broker confirmed the commit, then lost the transaction (its markers
      never written: seen with a single broker stopped just as it confirmed), which the
      next abort of the producer id aborts, records and offsets; the next transaction's
      offsets then never reach the broker;
    - ``forgotten``: the offsets of a transaction after the first one never reach the
      broker, and its abort fails with ``INVALID_TXN_STATE``, as with a restarted broker
      whose coordinator forgot the transaction;
    - ``blocked``: ``send_offsets_to_transaction`` blocks for good, past its timeout (seen
      with librdkafka 2.16 in a producer whose idle connections a restarting broker closed
      just after a commit), until a new producer starts (``state["release"]``; noted in
      ``state["left_behind"]``) or for two minutes.

    Records the offsets of every ``send_offsets_to_transaction``, ``[offsets, succeeded]``."""

    def __init__(self, producer: Producer, cut: str, state: dict) -> None:
        self._producer = producer
        self._mode = cut
        self._state = state

    def __getattr__(self, name: str):
        return getattr(self._producer, name)

    def _cut(self, mode: str) -> bool:
        if self._mode != mode or self._state["cut"]:
            return False
        self._state["cut"] = True
        return True

    def send_offsets_to_transaction(self, offsets, *args) -> None:
        sent = [{(tp.topic, tp.partition): tp.offset for tp in offsets}, False]
        self._state["sent"].append(sent)
        forgotten = self._state["sent"][1:] and self._cut("forgotten")
        if self._cut("not-applied") or forgotten or self._state.pop("lost", False):
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "connection cut", retriable=True))
        if self._cut("blocked"):
            self._state["left_behind"] = self._state["release"].wait(120)
            return
        self._producer.send_offsets_to_transaction(offsets, *args)
        sent[1] = True

    def commit_transaction(self, *args) -> None:
        if self._cut("timed-out"):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "not confirmed in time", retriable=True))
        if self._state["sent"][1:] and self._cut("lost"):  # a transaction after the first one
            self._producer.abort_transaction(*args)
            self._state["lost"] = True
            return
        self._producer.commit_transaction(*args)
        if self._cut("fatal-applied"):
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    def abort_transaction(self, *args) -> None:
        if self._mode == "forgotten" and self._state["cut"] and not self._state.get("refused"):
            self._state["refused"] = True
            raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "no transaction", fatal=True))
        self._producer.abort_transaction(*args)


#: Per way a commit is cut, how ``streamer_failed_commits_total`` counts it.
CUT_OUTCOMES = {
    "timed-out": "retried",
    "fatal-applied": "committed",
    "not-applied": "rewound",
    "lost": "rewound",
    "forgotten": "rewound",
    "blocked": "rewound",
}


@pytest.mark.parametrize("cut", list(CUT_OUTCOMES))
@pytest.mark.parametrize("command", ["run", "repartition"])
def test_a_commit_cut_by_an_outage_is_written_exactly_once(
    kafka_bootstrap, topics, atcat_file, monkeypatch, command, cut
) -> None:
    """A commit that timed out is made again on the same producer; one the broker applied
    before the producer failed for good is found committed, by the batch's committed
    offsets, and neither consumed nor written again; one it never got is aborted and
    consumed again, and the next transaction commits every partition of the cut batch too;
    one the broker confirmed and then lost is consumed again from the group's committed
    offsets when the next transaction fails; one whose abort fails is consumed again after
    a transaction that ends every record it may have left open on the output partitions is
    aborted (its records are read uncommitted only); one whose offsets call blocks for good
    is left to a new producer and consumed again."""
    alerts = make_alerts(n_objects=6, every=2)
    _publish(kafka_bootstrap, topics["input"], [a.data for a in alerts])
    new_producer = ConsumerLoop._new_producer
    state: dict = {"cut": False, "sent": [], "release": threading.Event()}

    def cut_producer(self: ConsumerLoop) -> _CutCommit:
        if state["cut"]:  # a producer after the cut one
            state["release"].set()
        return _CutCommit(new_producer(self), cut, state)

    monkeypatch.setattr(ConsumerLoop, "_new_producer", cut_producer)
    extra = {"STREAMER_BATCH_MAX_MESSAGES": "10"}
    if command == "run":
        loop: ConsumerLoop = _run_service(_env(kafka_bootstrap, topics, atcat_file, **extra))
        decode = decode_record_value
    else:
        loop = _repartition(
            _repartition_env(kafka_bootstrap, topics["input"], topics["output"], topics["dlq"], **extra)
        )
        decode = photometry_codec.decode
    assert state["cut"], "no commit was cut"
    if cut == "blocked":
        assert state["left_behind"], "the loop waited for the blocked call"
    ids = [decode(m.value()).alert_id for m in _read_all(kafka_bootstrap, topics["output"], len(alerts))]
    assert _lost_and_duplicated(ids, alerts) == ([], [])
    counted = {
        outcome: loop.metrics.registry.get_sample_value("streamer_failed_commits_total", {"outcome": outcome})
        for outcome in CUT_OUTCOMES.values()
    }
    assert counted == {outcome: 1 if outcome == CUT_OUTCOMES[cut] else None for outcome in counted}
    if cut == "not-applied":
        at = next(i for i, (_, ok) in enumerate(state["sent"]) if not ok)
        after = next(offsets for offsets, ok in state["sent"][at + 1 :] if ok)
        assert set(state["sent"][at][0]) <= set(after), "a partition of the cut batch left out"
    if cut == "forgotten":  # at least every alert and a fencing record per partition
        written = _read_all(
            kafka_bootstrap, topics["output"], len(alerts) + 3, **{"isolation.level": "read_uncommitted"}
        )
        assert sorted(m.partition() for m in written if m.key() == FENCE_KEY) == [0, 1, 2]
