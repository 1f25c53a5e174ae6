"""Behaviour of both history stores: every test using ``store``/``make_store`` runs once per kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from streamer.history import EPOCH_TOLERANCE_DAYS, HistoryStore
from streamer.photometry import POINT_DTYPE, DecodedAlert, PointKind

DET, FORCED, LIMIT = PointKind.DETECTION, PointKind.FORCED, PointKind.UPPER_LIMIT

MakeAlert = Callable[..., DecodedAlert]
MakeSurvey = Callable[..., list[DecodedAlert]]
MakePoints = Callable[[Sequence[tuple[PointKind, int, float, int]]], np.ndarray]
StoreFactory = Callable[..., HistoryStore]


def assert_same_curve(actual: np.ndarray, expected: np.ndarray) -> None:
    # Byte comparison: NaN fields (upper limits) compare equal, and any field difference counts.
    assert actual.dtype == POINT_DTYPE
    assert len(actual) == len(expected)
    assert actual.tobytes() == expected.tobytes()


def keys(curve: np.ndarray) -> list[tuple[int, int]]:
    return list(zip(curve["kind"].tolist(), curve["source_id"].tolist(), strict=True))


def expected_curve(alerts: Sequence[DecodedAlert], object_id: str, as_of: float) -> np.ndarray:
    """What the store should return as of a time, computed the slow obvious way."""
    first_known: dict[tuple[int, int], float] = {}
    row_of: dict[tuple[int, int], np.void] = {}
    for alert in alerts:
        if alert.object_id != object_id:
            continue
        for row in alert.points:
            key = (int(row["kind"]), int(row["source_id"]))
            row_of[key] = row
            first_known[key] = min(first_known.get(key, np.inf), alert.alert_time)
    detections = [row for (kind, _), row in row_of.items() if kind == DET]
    kept = []
    for key, row in row_of.items():
        if key[0] == LIMIT or row["time"] > as_of or first_known[key] > as_of:
            continue
        if key[0] == FORCED and any(
            d["band"] == row["band"] and abs(d["time"] - row["time"]) <= EPOCH_TOLERANCE_DAYS
            for d in detections
        ):
            continue
        kept.append((float(row["time"]), int(row["band"]), *key, row, first_known[key]))
    kept.sort(key=lambda item: item[:4])
    curve = np.zeros(len(kept), dtype=POINT_DTYPE)
    for i, (*_, row, known_at) in enumerate(kept):
        curve[i] = row
        curve[i]["known_at"] = known_at
    return curve


def micro_batches(alerts: Sequence[DecodedAlert], seed: int) -> Iterator[list[DecodedAlert]]:
    """The alerts shuffled and cut into batches of random sizes."""
    rng = np.random.default_rng(seed)
    shuffled = [alerts[i] for i in rng.permutation(len(alerts))]
    while shuffled:
        size = int(rng.integers(1, 8))
        yield shuffled[:size]
        shuffled = shuffled[size:]


# -- deduplication -------------------------------------------------------------------------


def test_same_alert_twice_changes_nothing(store: HistoryStore, make_alert: MakeAlert) -> None:
    alert = make_alert("a", 10.0, [(DET, 1, 10.0, 1), (DET, 2, 8.0, 2), (LIMIT, 3, 9.0, 1)])
    first = store.merge([alert])
    before = store.export_objects(["a"])["a"]

    again = store.merge([alert])
    twice_in_batch = store.merge([alert, alert])

    assert first.changed_objects == {"a"}
    assert again.changed_objects == frozenset()
    assert twice_in_batch.changed_objects == frozenset()
    assert again.stored_points_delta == 0
    assert store.point_count() == 3
    assert_same_curve(store.export_objects(["a"])["a"], before)


def test_overlapping_history_windows_keep_each_point_once(store: HistoryStore, make_alert: MakeAlert) -> None:
    first = make_alert("a", 3.0, [(DET, 3, 3.0, 1), (DET, 2, 2.0, 1), (DET, 1, 1.0, 1)])
    second = make_alert("a", 4.0, [(DET, 4, 4.0, 1), (DET, 3, 3.0, 1), (DET, 2, 2.0, 1)])
    store.merge([first])

    result = store.merge([second])

    assert result.changed_objects == {"a"}
    assert result.stored_points_delta == 1
    curve = store.light_curve("a")
    assert curve["source_id"].tolist() == [1, 2, 3, 4]
    # Points first seen in the earlier alert stay known from it.
    assert curve["known_at"].tolist() == [3.0, 3.0, 3.0, 4.0]


def test_known_at_is_earliest_carrying_alert_in_any_order(store: HistoryStore, make_alert: MakeAlert) -> None:
    late = make_alert("a", 20.0, [(DET, 2, 20.0, 1), (DET, 1, 10.0, 1)])
    early = make_alert("a", 10.0, [(DET, 1, 10.0, 1)])
    store.merge([late])

    result = store.merge([early])

    # A lowered known_at changes what earlier alerts see, so the object must be re-embedded.
    assert result.changed_objects == {"a"}
    assert store.light_curve("a")["known_at"].tolist() == [10.0, 20.0]
    assert store.merge([late, early]).changed_objects == frozenset()


def test_same_source_id_of_different_kinds_are_different_points(
    store: HistoryStore, make_alert: MakeAlert
) -> None:
    # diaSourceId and diaForcedSourceId come from separate sequences and may collide.
    store.merge([make_alert("a", 5.0, [(DET, 7, 5.0, 1), (FORCED, 7, 3.0, 1), (LIMIT, 7, 2.0, 1)])])

    assert keys(store.light_curve("a", include_upper_limits=True)) == [(LIMIT, 7), (FORCED, 7), (DET, 7)]


# -- detection versus forced photometry -------------------------------------------------------


@pytest.mark.parametrize("order", ["detection first", "forced first", "one batch", "one batch reversed"])
def test_detection_wins_over_forced_point_of_same_epoch(
    store: HistoryStore, make_alert: MakeAlert, order: str
) -> None:
    epoch = 60_000.25
    detection = make_alert("a", epoch, [(DET, 11, epoch, 2)])
    forced = make_alert(
        "a",
        epoch + 1,
        [
            (FORCED, 900, epoch + 0.5 * EPOCH_TOLERANCE_DAYS, 2),  # same epoch: dropped
            (FORCED, 901, epoch, 3),  # same time, other band: kept
            (FORCED, 902, epoch + 2 * EPOCH_TOLERANCE_DAYS, 2),  # another epoch: kept
            (FORCED, 903, epoch + 1, 2),
        ],
    )
    batches = {
        "detection first": [[detection], [forced]],
        "forced first": [[forced], [detection]],
        "one batch": [[detection, forced]],
        "one batch reversed": [[forced, detection]],
    }[order]

    for batch in batches:
        store.merge(batch)

    assert keys(store.light_curve("a")) == [(DET, 11), (FORCED, 901), (FORCED, 902), (FORCED, 903)]
    assert store.light_curve("a")["known_at"].tolist() == [epoch, epoch + 1, epoch + 1, epoch + 1]
    assert store.point_count() == 4


def test_forced_point_at_known_detection_epoch_changes_nothing(
    store: HistoryStore, make_alert: MakeAlert
) -> None:
    store.merge([make_alert("a", 10.0, [(DET, 1, 10.0, 1)])])

    result = store.merge([make_alert("a", 11.0, [(FORCED, 50, 10.0, 1)])])

    assert result.changed_objects == frozenset()


# -- as-of reads -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_replay_in_any_order_gives_identical_light_curves(
    make_store: StoreFactory, make_survey: MakeSurvey, seed: int
) -> None:
    alerts = make_survey(1234)
    requests: list[tuple[str, float | None]] = [(alert.object_id, alert.alert_time) for alert in alerts]
    live = make_store()
    for alert in sorted(alerts, key=lambda alert: alert.alert_time):
        live.merge([alert])
    replay = make_store()

    for batch in micro_batches(alerts, seed):
        replay.merge(batch)

    for (object_id, as_of), replayed, streamed in zip(
        requests, replay.light_curves(requests), live.light_curves(requests), strict=True
    ):
        assert as_of is not None
        assert_same_curve(replayed, streamed)
        assert_same_curve(replayed, expected_curve(alerts, object_id, as_of))


def test_live_curve_is_final_once_the_carrying_alerts_are_merged(
    store: HistoryStore, make_survey: MakeSurvey
) -> None:
    alerts = sorted(make_survey(99, n_objects=3), key=lambda alert: alert.alert_time)
    embedded_live = []
    for alert in alerts:
        store.merge([alert])
        embedded_live.append(store.light_curve(alert.object_id, alert.alert_time))

    # Merging everything else afterwards must not change what each alert saw.
    for alert, curve in zip(alerts, embedded_live, strict=True):
        assert_same_curve(store.light_curve(alert.object_id, alert.alert_time), curve)


def test_as_of_hides_points_observed_or_learned_later(store: HistoryStore, make_alert: MakeAlert) -> None:
    store.merge(
        [
            make_alert("a", 10.0, [(DET, 1, 10.0, 1)]),
            # Observed at 9 but first reported by the alert at 12.
            make_alert("a", 12.0, [(DET, 2, 12.0, 1), (FORCED, 3, 9.0, 1)]),
        ]
    )

    assert keys(store.light_curve("a", as_of=10.0)) == [(DET, 1)]
    assert keys(store.light_curve("a", as_of=11.9)) == [(DET, 1)]
    assert keys(store.light_curve("a", as_of=12.0)) == [(FORCED, 3), (DET, 1), (DET, 2)]
    assert keys(store.light_curve("a")) == [(FORCED, 3), (DET, 1), (DET, 2)]
    assert len(store.light_curve("a", as_of=9.99)) == 0


def test_ties_in_time_are_ordered_by_band_then_kind_then_source(
    store: HistoryStore, make_alert: MakeAlert
) -> None:
    rows = [(DET, 9, 5.0, 4), (LIMIT, 3, 5.0, 1), (DET, 8, 5.0, 1), (DET, 2, 5.0, 1), (FORCED, 1, 4.0, 5)]
    store.merge([make_alert("a", 5.0, rows)])

    curve = store.light_curve("a", include_upper_limits=True)
    assert keys(curve) == [(FORCED, 1), (DET, 2), (DET, 8), (LIMIT, 3), (DET, 9)]


def test_upper_limits_are_kept_but_left_out_by_default(store: HistoryStore, make_alert: MakeAlert) -> None:
    store.merge([make_alert("a", 5.0, [(DET, 1, 5.0, 1), (LIMIT, 2, 4.0, 1), (LIMIT, 3, 6.0, 1)])])

    assert keys(store.light_curve("a")) == [(DET, 1)]
    assert keys(store.light_curve("a", include_upper_limits=True)) == [(LIMIT, 2), (DET, 1), (LIMIT, 3)]
    assert keys(store.light_curve("a", 5.0, include_upper_limits=True)) == [(LIMIT, 2), (DET, 1)]
    assert np.isnan(store.light_curve("a", include_upper_limits=True)["flux"][0])


def test_bulk_read_matches_single_reads(store: HistoryStore, make_survey: MakeSurvey) -> None:
    alerts = make_survey(7, n_objects=3)
    store.merge(alerts)
    requests: list[tuple[str, float | None]] = [(a.object_id, a.alert_time) for a in alerts]
    requests += [("unknown", None), (alerts[0].object_id, None), (alerts[0].object_id, 0.0)]

    bulk = store.light_curves(requests)

    assert len(bulk) == len(requests)
    for (object_id, as_of), curve in zip(requests, bulk, strict=True):
        assert_same_curve(curve, store.light_curve(object_id, as_of))
    assert len(bulk[-3]) == 0
    assert len(bulk[-2]) > 0
    assert len(bulk[-1]) == 0
    assert store.light_curves([]) == []


def test_returned_curves_are_independent_copies(store: HistoryStore, make_alert: MakeAlert) -> None:
    store.merge([make_alert("a", 5.0, [(DET, 1, 5.0, 1)])])

    curve = store.light_curve("a")
    curve["flux"] = -1.0

    assert store.light_curve("a")["flux"][0] != -1.0


# -- what a merge reports ---------------------------------------------------------------------


def test_merge_reports_only_objects_that_changed(store: HistoryStore, make_alert: MakeAlert) -> None:
    store.merge([make_alert("a", 1.0, [(DET, 1, 1.0, 1)]), make_alert("b", 1.0, [(DET, 2, 1.0, 1)])])

    result = store.merge(
        [
            make_alert("a", 2.0, [(DET, 3, 2.0, 1), (DET, 1, 1.0, 1)]),  # one new point
            make_alert("b", 2.0, [(DET, 2, 1.0, 1)]),  # nothing new
            make_alert("c", 2.0, [(LIMIT, 4, 1.5, 1)]),  # new object, upper limit only
        ]
    )

    assert result.changed_objects == {"a", "c"}
    assert result.points_received == 4
    assert result.stored_points_delta == 2
    assert store.merge([]).changed_objects == frozenset()


def test_alert_without_points_stores_nothing(store: HistoryStore, make_alert: MakeAlert) -> None:
    result = store.merge([make_alert("a", 1.0, [])])

    assert result.changed_objects == frozenset()
    assert store.object_count() == 0


def _wrong_dtype(make_points: MakePoints) -> np.ndarray:
    return np.zeros(2, dtype=[("time", "f8")])


def _nan_time(make_points: MakePoints) -> np.ndarray:
    return make_points([(DET, 1, float("nan"), 1)])


def _unknown_kind(make_points: MakePoints) -> np.ndarray:
    points = make_points([(DET, 1, 1.0, 1)])
    points["kind"] = 7
    return points


@pytest.mark.parametrize(
    ("bad_points", "error"), [(_wrong_dtype, TypeError), (_nan_time, ValueError), (_unknown_kind, ValueError)]
)
def test_malformed_alert_rejects_whole_batch(
    store: HistoryStore,
    make_alert: MakeAlert,
    make_points: MakePoints,
    bad_points: Callable[[MakePoints], np.ndarray],
    error: type[Exception],
) -> None:
    good = make_alert("good", 1.0, [(DET, 1, 1.0, 1)])
    bad = DecodedAlert("lsst", "bad", 5, 1.0, bad_points(make_points), "lsst.v7_4")

    with pytest.raises(error, match="alert 5 of object bad"):
        store.merge([good, bad])

    assert store.object_count() == 0


# -- the cap ----------------------------------------------------------------------------------


def test_cap_keeps_most_recent_points(make_store: StoreFactory, make_alert: MakeAlert) -> None:
    store = make_store(max_points_per_object=5)
    rows = [(DET, i, float(i), 1) for i in range(12)]

    store.merge([make_alert("a", 11.0, rows)])

    assert store.light_curve("a")["source_id"].tolist() == [7, 8, 9, 10, 11]
    assert store.point_count() == 5
    # Replaying an old alert cannot bring trimmed points back, and reports no change.
    assert store.merge([make_alert("a", 3.0, rows[:4])]).changed_objects == frozenset()
    # Trimmed points are gone for early as-of reads too.
    assert len(store.light_curve("a", as_of=6.0)) == 0
    assert store.merge([make_alert("a", 12.0, [(DET, 12, 12.0, 1)])]).changed_objects == {"a"}
    assert store.light_curve("a")["source_id"].tolist() == [8, 9, 10, 11, 12]


def test_cap_does_not_depend_on_batching(make_store: StoreFactory, make_survey: MakeSurvey) -> None:
    alerts = make_survey(3)
    at_once = make_store(max_points_per_object=7)
    at_once.merge(alerts)
    in_batches = make_store(max_points_per_object=7)

    for batch in micro_batches(alerts, 11):
        in_batches.merge(batch)

    object_ids = sorted({alert.object_id for alert in alerts})
    exported, expected = in_batches.export_objects(object_ids), at_once.export_objects(object_ids)
    assert exported.keys() == expected.keys() == set(object_ids)
    for object_id in object_ids:
        assert len(expected[object_id]) == 7
        assert_same_curve(exported[object_id], expected[object_id])


def test_cap_must_be_positive(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError, match="max_points_per_object"):
        make_store(max_points_per_object=0)


# -- atomicity --------------------------------------------------------------------------------


def test_failure_mid_merge_leaves_previous_state(
    store: HistoryStore, make_alert: MakeAlert, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.merge([make_alert("a", 1.0, [(DET, 1, 1.0, 1)]), make_alert("b", 1.0, [(DET, 2, 1.0, 1)])])
    before = store.export_objects(["a", "b", "c"])
    save = store._save

    def save_two_then_fail(curves: Iterator[tuple[str, np.ndarray]]) -> None:
        def two_then_fail() -> Iterator[tuple[str, np.ndarray]]:
            for count, item in enumerate(curves):
                if count == 2:
                    raise OSError("disk gone")
                yield item

        save(two_then_fail())

    monkeypatch.setattr(store, "_save", save_two_then_fail)
    batch = [make_alert(oid, 2.0, [(DET, 10 + i, 2.0, 1)]) for i, oid in enumerate(["a", "b", "c"])]

    with pytest.raises(OSError, match="disk gone"):
        store.merge(batch)

    after = store.export_objects(["a", "b", "c"])
    assert after.keys() == before.keys() == {"a", "b"}
    for object_id in after:
        assert_same_curve(after[object_id], before[object_id])
    assert store.object_count() == 2
    monkeypatch.undo()
    assert store.merge(batch).changed_objects == {"a", "b", "c"}


# -- moving objects between stores -----------------------------------------------------------


def test_export_import_and_delete_move_objects(make_store: StoreFactory, make_survey: MakeSurvey) -> None:
    source, target = make_store(), make_store()
    alerts = make_survey(5, n_objects=4)
    source.merge(alerts)
    moving = sorted({alert.object_id for alert in alerts})[:2]

    for object_id, points in source.export_objects([*moving, "unknown"]).items():
        assert target.import_points(object_id, points)
        assert not target.import_points(object_id, points)
    deleted = source.delete_objects([*moving, "unknown"])

    assert deleted == 2
    assert sorted(target.iter_object_ids()) == moving
    assert len(list(source.iter_object_ids())) == 2
    for alert in alerts:
        holder = target if alert.object_id in moving else source
        expected = expected_curve(alerts, alert.object_id, alert.alert_time)
        assert_same_curve(holder.light_curve(alert.object_id, alert.alert_time), expected)
        if alert.object_id in moving:
            assert len(source.light_curve(alert.object_id)) == 0


def test_import_rejects_points_without_known_at(store: HistoryStore, make_points: MakePoints) -> None:
    with pytest.raises(ValueError, match="known_at"):
        store.import_points("a", make_points([(DET, 1, 1.0, 1)]))


# -- metrics and lifecycle --------------------------------------------------------------------


def test_counts_and_size_follow_the_content(store: HistoryStore, make_alert: MakeAlert) -> None:
    empty_size = store.size_bytes()
    rows = [(DET, i, float(i), 1) for i in range(300)]

    store.merge([make_alert("a", 300.0, [*rows, (LIMIT, 1, 0.5, 1)]), make_alert("b", 1.0, rows[:1])])

    assert store.object_count() == 2
    assert store.point_count() == 302
    assert store.size_bytes() > empty_size
    assert store.size_bytes() >= 302 * POINT_DTYPE.itemsize


def test_context_manager_closes(make_store: StoreFactory, make_alert: MakeAlert) -> None:
    with make_store() as store:
        store.merge([make_alert("a", 1.0, [(DET, 1, 1.0, 1)])])
        assert store.object_count() == 1
    store.close()  # a second close is harmless
