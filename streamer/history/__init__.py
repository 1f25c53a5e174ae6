"""History: every object's light curve across alerts.

Alerts carry only a window of an object's past; the history store merges those windows
(deduplicated, idempotent, order-independent) so that the embedding stage can read each
updated object's light curve *as of* the alert that updated it.

- :class:`HistoryStore`: the interface (merge, as-of reads, export/import, metrics).
- :class:`MemoryHistoryStore`: in process memory, for tests.
- :class:`SQLiteHistoryStore`: one SQLite file, one transaction per micro-batch.
- :mod:`streamer.history.merging`: the merge rules both share.
- :class:`PartitionedHistory`: one store per input partition, restored from a compacted
  changelog topic (:mod:`streamer.history.changelog`) when the partition is assigned.
"""

from streamer.history.changelog import ChangelogError
from streamer.history.memory import MemoryHistoryStore
from streamer.history.merging import EPOCH_TOLERANCE_DAYS
from streamer.history.partitioned import PartitionedHistory
from streamer.history.sqlite import HistoryLayoutError, SQLiteHistoryStore
from streamer.history.store import DEFAULT_MAX_POINTS_PER_OBJECT, HistoryStore, MergeResult

__all__ = [
    "DEFAULT_MAX_POINTS_PER_OBJECT",
    "EPOCH_TOLERANCE_DAYS",
    "ChangelogError",
    "HistoryLayoutError",
    "HistoryStore",
    "MemoryHistoryStore",
    "MergeResult",
    "PartitionedHistory",
    "SQLiteHistoryStore",
]
