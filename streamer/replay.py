"""Replay archived alerts through the pipeline into a file: the job that needs no broker."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from streamer.pipeline import BatchOutcome, Message, Pipeline
from streamer.sinks import RecordSink, RejectsFile


@dataclass
class ReplaySummary:
    """Totals of a replay, printed at the end and used for the exit status."""

    messages: int = 0
    alerts: int = 0
    embeddings: int = 0
    objects: set[str] = field(default_factory=set)
    rejects: Counter[str] = field(default_factory=Counter)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def lines(self) -> list[str]:
        rate = self.alerts / self.seconds if self.seconds else 0.0
        out = [
            f"messages   {self.messages}",
            f"alerts     {self.alerts}",
            f"objects    {len(self.objects)}",
            f"embeddings {self.embeddings}",
            f"rejected   {self.rejected}"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.rejects.items()))})"
                if self.rejects
                else ""
            ),
            f"time       {self.seconds:.2f} s, {rate:,.1f} alerts/s",
        ]
        total = sum(self.stage_seconds.values())
        if total:
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in self.stage_seconds.items())
            out.append(f"stages     {shares}")
        return out


def _batches(messages: Iterable[Message], size: int) -> Iterator[list[Message]]:
    """Batches of ``size`` messages. When reading fails (a corrupt archive file), the
    messages read before it still make a batch; the error is raised after it."""
    it = iter(messages)
    while True:
        batch: list[Message] = []
        try:
            for message in it:
                batch.append(message)
                if len(batch) == size:
                    break
        except Exception:
            if batch:
                yield batch
            raise
        if not batch:
            return
        yield batch


def replay(
    messages: Iterable[Message],
    pipeline: Pipeline,
    sink: RecordSink,
    *,
    rejects: RejectsFile | None = None,
    batch_size: int = 500,
    on_batch: Callable[[list[Message], BatchOutcome], None] | None = None,
) -> ReplaySummary:
    """Run every message through ``pipeline`` in micro-batches, writing records and rejects.

    Parameters
    ----------
    messages : iterable of Message
    pipeline : Pipeline
    sink : RecordSink
    rejects : RejectsFile, optional
        Receives every rejected message with its original bytes and reason.
    batch_size : int
        Messages per micro-batch.
    on_batch : callable, optional
        Called after each batch (progress bars).
    """
    summary = ReplaySummary()
    start = time.perf_counter()
    for batch in _batches(messages, batch_size):
        outcome = pipeline.process(batch)
        sink.write(outcome.records)
        now_ms = int(time.time() * 1000)
        for r in outcome.rejections:
            summary.rejects[r.reason] += 1
            if rejects is not None:
                rejects.write(r.reason, r.detail, r.source, r.data, now_ms)
        summary.messages += len(batch)
        summary.alerts += outcome.alerts
        summary.embeddings += len(outcome.records)
        summary.objects.update(rec.object_id for rec in outcome.records)
        for stage, seconds in outcome.stage_seconds.items():
            summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
        if on_batch is not None:
            on_batch(batch, outcome)
    summary.seconds = time.perf_counter() - start
    return summary
