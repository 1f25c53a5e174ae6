"""The history changelog without a broker: its values, and restoring stores from a
partition's records (a consumer stand-in that serves a list of records per partition)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError
from fastavro.schema import to_parsing_canonical_form

from streamer.alerts import photometry_codec
from streamer.history import MemoryHistoryStore, PartitionedHistory, SQLiteHistoryStore
from streamer.history import changelog as cl
from streamer.history.changelog import Checkpoint
from streamer.metrics import Health
from streamer.photometry import DecodedAlert

MakeSurvey = Callable[..., list[DecodedAlert]]
Record = tuple[bytes, bytes | None]


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()  # bit for bit, NaN included


def _histories(store: MemoryHistoryStore | SQLiteHistoryStore) -> dict[str, np.ndarray]:
    return store.export_objects(store.iter_object_ids())


@dataclass
class _Message:
    _partition: int
    _offset: int
    _key: bytes | None = None
    _value: bytes | None = None
    _error: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self._error

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class _Changelog:
    """A read_committed consumer of changelog partitions held in lists (offset = index)."""

    def __init__(self, partitions: dict[int, list[Record]]) -> None:
        self.partitions = partitions
        self.assignments: list[list[tuple[int, int]]] = []
        self._queue: list[_Message] = []

    def assign(self, tps: list) -> None:
        self.assignments.append([(tp.partition, tp.offset) for tp in tps])
        self._queue = []
        for tp in tps:
            records = self.partitions.get(tp.partition, [])
            start = 0 if tp.offset == OFFSET_BEGINNING else tp.offset
            for offset in range(start, len(records)):
                self._queue.append(_Message(tp.partition, offset, *records[offset]))
            self._queue.append(
                _Message(tp.partition, len(records), _error=KafkaError(KafkaError._PARTITION_EOF))
            )

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        return 0, len(self.partitions.get(tp.partition, []))  # type: ignore[attr-defined]

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        out, self._queue = self._queue[:num_messages], self._queue[num_messages:]
        return out

    def unassign(self) -> None:
        self._queue = []


def _records(curves: dict[str, np.ndarray]) -> list[Record]:
    return [(oid.encode(), cl.encode_curve(oid, points)) for oid, points in curves.items()]


def _position(next_offset: int) -> Record:
    return (cl.POSITION_KEY, cl.encode_position("alerts", 0, next_offset))


def test_values_round_trip_every_stored_row_bit_for_bit(make_survey: MakeSurvey) -> None:
    store = MemoryHistoryStore()
    store.merge(make_survey(3, n_objects=3))
    for object_id, points in _histories(store).items():
        assert np.isnan(points["flux"]).any(), "upper limits (NaN flux) are part of the test"
        decoded_id, decoded = cl.decode_curve(cl.encode_curve(object_id, points))
        assert decoded_id == object_id
        _same(decoded, points)
    with pytest.raises(ValueError, match="history record"):
        cl.decode_curve(photometry_codec.encode(make_survey(3, n_objects=1)[0]))


def test_schema_points_are_the_photometry_schemas() -> None:
    def points(schema: dict) -> str:  # the canonical form: docs aside
        return to_parsing_canonical_form(next(f for f in schema["fields"] if f["name"] == "points")["type"])

    assert points(cl.history_schema()) == points(photometry_codec.photometry_schema())


def test_import_objects_equals_importing_one_by_one(make_survey: MakeSurvey) -> None:
    source = MemoryHistoryStore()
    source.merge(make_survey(4, n_objects=4))
    curves = _histories(source)
    one_by_one, at_once = MemoryHistoryStore(), MemoryHistoryStore()
    for object_id, points in curves.items():
        one_by_one.import_points(object_id, points)
    assert at_once.import_objects(curves) == set(curves)
    assert at_once.import_objects(curves) == frozenset()
    for object_id, points in _histories(one_by_one).items():
        _same(at_once.light_curve(object_id, include_upper_limits=True), points)


def test_restore_applies_each_keys_latest_value_and_tombstones(
    make_survey: MakeSurvey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cl, "RESTORE_CHUNK_OBJECTS", 2)  # several store transactions
    alerts = make_survey(5, n_objects=5)
    early, late = MemoryHistoryStore(), MemoryHistoryStore()
    middle = sorted(a.alert_time for a in alerts)[len(alerts) // 2]
    early.merge([a for a in alerts if a.alert_time <= middle])
    late.merge(alerts)
    gone = sorted(_histories(late))[0]
    log = [*_records(_histories(early)), _position(7), *_records(_histories(late)), (gone.encode(), None)]
    log.append(_position(12))
    consumer = _Changelog({0: log})
    store = MemoryHistoryStore()

    stats = cl.restore(consumer, "changelog", {0: (store, Checkpoint())}, {0: 12}, timeout_s=5, settle_s=1)

    assert consumer.assignments == [[(0, OFFSET_BEGINNING)]]
    assert stats[0].records == len(log)
    assert stats[0].checkpoint == Checkpoint(len(log), 12)
    expected = _histories(late)
    del expected[gone]
    restored = _histories(store)
    assert restored.keys() == expected.keys()
    for object_id, points in expected.items():
        _same(restored[object_id], points)


def test_restore_from_a_checkpoint_reads_only_what_came_after(make_survey: MakeSurvey) -> None:
    alerts = make_survey(6, n_objects=3)
    full = MemoryHistoryStore()
    full.merge(alerts)
    log = [*_records(_histories(full)), _position(3)]
    consumer = _Changelog({0: log})
    store = MemoryHistoryStore()
    stats = cl.restore(consumer, "changelog", {0: (store, Checkpoint(2, 1))}, {0: 3}, timeout_s=5, settle_s=1)
    assert consumer.assignments == [[(0, 2)]]
    assert stats[0].records == len(log) - 2
    assert stats[0].checkpoint == Checkpoint(len(log), 3)


def test_restore_waits_for_the_changelog_to_reach_the_committed_offset() -> None:
    log: list[Record] = [_position(5)]

    class Trailing(_Changelog):
        def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
            if self.assignments:  # the previous owner's last commit becomes visible
                log[1:] = [_position(9)]
            return super().get_watermark_offsets(tp, timeout)

    consumer = Trailing({0: log})
    stats = cl.restore(
        consumer, "changelog", {0: (MemoryHistoryStore(), Checkpoint())}, {0: 9}, timeout_s=5, settle_s=5
    )
    assert consumer.assignments == [[(0, OFFSET_BEGINNING)], [(0, 1)]]
    assert stats[0].checkpoint == Checkpoint(2, 9)


def test_restore_goes_on_with_a_warning_when_the_changelog_never_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _Changelog({0: [_position(5)]})
    stats = cl.restore(
        consumer, "changelog", {0: (MemoryHistoryStore(), Checkpoint())}, {0: 9}, timeout_s=5, settle_s=0.5
    )
    assert stats[0].checkpoint == Checkpoint(1, 5)
    assert "reflects input up to offset 5 but offset 9 is committed" in caplog.text


def test_a_restore_longer_than_the_liveness_bound_keeps_the_service_alive_while_it_reads(
    make_survey: MakeSurvey,
) -> None:
    """A big changelog read slowly (here 100 s a record) takes longer than ``/healthz``
    allows one Kafka call (300 s); the restore reports each record read, so the pod is
    restarted only when reading stops, not because the read is long."""
    store = MemoryHistoryStore()
    store.merge(make_survey(4, n_objects=4))
    log = [*_records(_histories(store)), _position(4)]
    now = [0.0]
    health = Health(clock=lambda: now[0], max_call_s=300.0)
    health.model_ready()
    answers = []

    class Slow(_Changelog):
        def consume(self, num_messages: int, timeout: float) -> list[_Message]:
            now[0] += 100.0
            answers.append(health.alive())
            return super().consume(1, timeout)

    with health.kafka_call():
        cl.restore(
            Slow({0: log}),
            "changelog",
            {0: (MemoryHistoryStore(), Checkpoint())},
            {0: 4},
            timeout_s=240,
            settle_s=1,
            clock=lambda: now[0],
            on_progress=health.progress,
        )
        assert now[0] > 500.0
        assert answers == [(True, "ok")] * len(answers)
        now[0] += 301.0  # then reading stops: the restore is stuck
        assert health.alive() == (False, "a Kafka call has blocked for 301 s")


def test_partitioned_stores_keep_their_checkpoint_in_their_file(
    tmp_path: Path, make_survey: MakeSurvey
) -> None:
    source = MemoryHistoryStore()
    source.merge(make_survey(7, n_objects=4))
    curves = _histories(source)
    ids = sorted(curves)
    log = {
        1: [*_records({i: curves[i] for i in ids[:2]}), _position(4)],
        3: _records({ids[2]: curves[ids[2]]}),
    }

    history = PartitionedHistory("alerts", "changelog", tmp_path / "h")
    history.assign([1, 3], _Changelog(log), {1: 4, 3: -1001}, timeout_s=5, settle_s=1)
    assert history.partitions == [1, 3]
    assert sorted(history.store(1).iter_object_ids()) == ids[:2]
    history.committed(3, 5, 17)  # a batch of ours, its changelog records up to offset 4
    history.revoke([1, 3])
    with pytest.raises(KeyError, match=r"alerts\[1\] is not assigned"):
        history.store(1)
    history.close()
    assert sorted(p.name for p in (tmp_path / "h").iterdir() if p.suffix == ".sqlite") == [
        "alerts-1.sqlite",
        "alerts-3.sqlite",
    ]

    again = PartitionedHistory("alerts", "changelog", tmp_path / "h")
    consumer = _Changelog(log)
    stats = again.assign([1, 3], consumer, {1: 4, 3: 17}, timeout_s=5, settle_s=1)
    assert consumer.assignments == [], "both stores are up to date: nothing to read"
    assert stats[1].records == stats[3].records == 0
    assert stats[1].checkpoint == Checkpoint(3, 4) and stats[3].checkpoint == Checkpoint(5, 17)
    assert again.object_count() == 3
    again.close()


def test_a_revoked_partitions_store_is_kept_until_the_next_assignment(make_survey: MakeSurvey) -> None:
    source = MemoryHistoryStore()
    source.merge(make_survey(8, n_objects=3))
    curves = _histories(source)
    ids = sorted(curves)
    log = {0: [*_records({ids[0]: curves[ids[0]]}), _position(2)], 1: [_position(1)]}
    history = PartitionedHistory("alerts", "changelog")  # stores in memory
    history.assign([0, 1], _Changelog(log), {0: 2, 1: 1}, timeout_s=5, settle_s=1)
    kept = history.store(0)
    history.revoke([0, 1])
    log[0] += [*_records({ids[1]: curves[ids[1]]}), _position(5)]  # another owner's batch meanwhile

    consumer = _Changelog(log)
    stats = history.assign([0], consumer, {0: 5}, timeout_s=5, settle_s=1)

    assert history.store(0) is kept and history.partitions == [0]
    assert consumer.assignments == [[(0, 2)]] and stats[0].records == 2
    assert sorted(kept.iter_object_ids()) == ids[:2]
    history.close()
