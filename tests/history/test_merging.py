"""Properties of the merge rules: the stored state depends on which alerts were merged, not how."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.history import EPOCH_TOLERANCE_DAYS, HistoryStore, MemoryHistoryStore, SQLiteHistoryStore
from streamer.photometry import POINT_DTYPE, DecodedAlert, PointKind

# A small pool of rows per object, so that alerts overlap often. A row's values depend
# only on its key, as for real surveys; a forced row shares its epoch with the detection
# of the same number (jittered below the tolerance), and epochs are 0.05 day apart.
_POOL = [(kind, number) for kind in PointKind for number in range(6)]


_EPOCH_OFFSET = {
    PointKind.DETECTION: 0.0,
    PointKind.FORCED: 0.3 * EPOCH_TOLERANCE_DAYS,
    PointKind.UPPER_LIMIT: 0.05,
}


def _row(kind: PointKind, number: int) -> tuple[int, float, int, float]:
    """``(source_id, time, band, flux)`` of a pool row."""
    return 100 + number, 60_000.0 + 0.1 * number + _EPOCH_OFFSET[kind], number % 2, 500.0 + 10 * number + kind


def _alert(object_id: str, alert_time: float, members: list[int]) -> DecodedAlert:
    points = np.zeros(len(members), dtype=POINT_DTYPE)
    for i, member in enumerate(members):
        kind, number = _POOL[member]
        source_id, time, band, flux = _row(kind, number)
        points[i] = (source_id, time, flux, 1.0, np.nan, np.nan, band, kind, alert_time)
    return DecodedAlert("lsst", object_id, 0, alert_time, points, "lsst.v7_4")


alerts_strategy = st.lists(
    st.builds(
        _alert,
        st.sampled_from(["a", "b"]),
        st.sampled_from([60_000.0, 60_000.5, 60_001.0, 60_002.0]),
        st.lists(st.integers(0, len(_POOL) - 1), max_size=8),
    ),
    min_size=1,
    max_size=12,
)


def _state(store: HistoryStore) -> dict[str, bytes]:
    return {oid: curve.tobytes() for oid, curve in store.export_objects(["a", "b"]).items()}


@settings(max_examples=150, deadline=None)
@given(
    alerts=alerts_strategy,
    permutation_seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(1, 11), max_size=4),
    cap=st.one_of(st.none(), st.integers(1, 8)),
)
def test_state_is_independent_of_order_batching_and_repeats(
    alerts: list[DecodedAlert], permutation_seed: int, cuts: list[int], cap: int | None
) -> None:
    order = np.random.default_rng(permutation_seed).permutation(len(alerts))
    shuffled = [alerts[i] for i in order]
    bounds = sorted({0, len(alerts), *(c for c in cuts if c < len(alerts))})
    with (
        MemoryHistoryStore(max_points_per_object=cap) as at_once,
        MemoryHistoryStore(max_points_per_object=cap) as in_batches,
        SQLiteHistoryStore(":memory:", max_points_per_object=cap) as on_disk,
    ):
        at_once.merge(alerts)
        for start, end in itertools.pairwise(bounds):
            in_batches.merge(shuffled[start:end])
            on_disk.merge(shuffled[start:end])

        assert _state(in_batches) == _state(at_once)
        assert _state(on_disk) == _state(at_once)
        # Merging everything again is a no-op.
        assert at_once.merge(shuffled).changed_objects == frozenset()
        assert on_disk.merge(alerts).changed_objects == frozenset()
