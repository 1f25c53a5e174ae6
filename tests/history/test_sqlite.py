"""What only the SQLite store promises: persistence, crash safety, its file layout."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamer.history import HistoryLayoutError, HistoryStore, MemoryHistoryStore, SQLiteHistoryStore
from streamer.photometry import DecodedAlert, PointKind

DET = PointKind.DETECTION
REPO_ROOT = Path(__file__).resolve().parents[2]

MakeAlert = Callable[..., DecodedAlert]
MakeSurvey = Callable[..., list[DecodedAlert]]


def exported(store: HistoryStore) -> dict[str, bytes]:
    object_ids = list(store.iter_object_ids())
    return {oid: curve.tobytes() for oid, curve in store.export_objects(object_ids).items()}


def test_light_curves_survive_reopening(tmp_path: Path, make_survey: MakeSurvey) -> None:
    path = tmp_path / "history.sqlite"
    alerts = make_survey(21)
    with SQLiteHistoryStore(path) as store:
        store.merge(alerts)
        before = exported(store)
        requests: list[tuple[str, float | None]] = [(a.object_id, a.alert_time) for a in alerts]
        curves = [curve.tobytes() for curve in store.light_curves(requests)]

    with SQLiteHistoryStore(path) as reopened:
        assert exported(reopened) == before
        assert [curve.tobytes() for curve in reopened.light_curves(requests)] == curves
        assert reopened.merge(alerts).changed_objects == frozenset()


def test_same_results_as_memory_store(tmp_path: Path, make_survey: MakeSurvey) -> None:
    alerts = make_survey(8, n_objects=10)
    with SQLiteHistoryStore(tmp_path / "h.sqlite") as on_disk, MemoryHistoryStore() as in_memory:
        results = [(on_disk.merge(alerts[i::3]), in_memory.merge(alerts[i::3])) for i in range(3)]

        assert exported(on_disk) == exported(in_memory)
        assert all(a == b for a, b in results)
        assert on_disk.point_count() == in_memory.point_count()


def test_uses_write_ahead_log(tmp_path: Path) -> None:
    with SQLiteHistoryStore(tmp_path / "h.sqlite") as store:
        store.close()
    with sqlite3.connect(tmp_path / "h.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_refuses_a_file_with_another_point_layout(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    SQLiteHistoryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE history_meta SET value = 'something else' WHERE key = 'point_layout'")
    conn.close()

    with pytest.raises(HistoryLayoutError, match="point_layout"):
        SQLiteHistoryStore(path)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.sqlite")
    store.close()

    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.light_curve("a")


def test_many_objects_are_read_and_deleted_in_chunks(tmp_path: Path, make_alert: MakeAlert) -> None:
    # More objects than one query binds, so chunking is exercised.
    alerts = [make_alert(f"obj{i}", 1.0, [(DET, i, 1.0, i % 6)]) for i in range(1_234)]
    with SQLiteHistoryStore(tmp_path / "h.sqlite") as store:
        store.merge(alerts)
        curves = store.light_curves([(alert.object_id, None) for alert in alerts])

        assert [int(curve["source_id"][0]) for curve in curves] == list(range(1_234))
        assert store.delete_objects(alert.object_id for alert in alerts[:1_100]) == 1_100
        assert store.object_count() == 134


_CRASHING_MERGE = textwrap.dedent(
    """
    import os, pickle, sys
    from streamer.history import SQLiteHistoryStore

    store = SQLiteHistoryStore(sys.argv[1])
    # A tiny page cache makes SQLite spill the half-written batch to the WAL before dying.
    store._conn.execute("PRAGMA cache_size=2")
    with open(sys.argv[2], "rb") as file:
        batch = pickle.load(file)
    save = store._save

    def save_one_then_die(curves):
        def one_then_die():
            for count, item in enumerate(curves):
                if count == 2:
                    os._exit(3)
                yield item
        save(one_then_die())

    store._save = save_one_then_die
    store.merge(batch)
    """
)


def test_process_crash_mid_merge_leaves_previous_state(tmp_path: Path, make_alert: MakeAlert) -> None:
    path = tmp_path / "h.sqlite"
    rows = [(DET, i, float(i), i % 6) for i in range(3_000)]
    with SQLiteHistoryStore(path) as store:
        store.merge([make_alert("a", 3_000.0, rows[:1_000])])
        before = exported(store)
    batch = [make_alert(oid, 3_000.0, rows) for oid in ("a", "b", "c")]
    (tmp_path / "batch.pickle").write_bytes(pickle.dumps(batch))

    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_MERGE, str(path), str(tmp_path / "batch.pickle")],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        check=False,
    )

    assert crashed.returncode == 3, crashed.stderr.decode()
    # Uncommitted pages of the dead batch did reach the disk...
    assert (tmp_path / "h.sqlite-wal").stat().st_size > 0
    # ...and are ignored on recovery.
    with SQLiteHistoryStore(path) as recovered:
        assert exported(recovered) == before
        assert recovered.merge(batch).changed_objects == {"a", "b", "c"}
        assert np.array_equal(recovered.light_curve("b")["source_id"], np.arange(3_000))


def test_reopening_with_a_smaller_cap_trims_at_next_merge(tmp_path: Path, make_alert: MakeAlert) -> None:
    path = tmp_path / "h.sqlite"
    alert = make_alert("a", 9.0, [(DET, i, float(i), 1) for i in range(10)])
    with SQLiteHistoryStore(path, max_points_per_object=None) as store:
        store.merge([alert])

    with SQLiteHistoryStore(path, max_points_per_object=4) as smaller:
        assert smaller.point_count() == 10
        assert smaller.merge([alert]).changed_objects == {"a"}
        assert smaller.light_curve("a")["source_id"].tolist() == [6, 7, 8, 9]
