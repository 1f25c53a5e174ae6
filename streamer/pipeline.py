"""One micro-batch through the pipeline: decode -> history -> embed -> records.

The runner (file replay or Kafka service) reads a batch of messages from its source,
calls :meth:`Pipeline.process`, writes the records and rejections to its sink, and only
then acknowledges the input (commits offsets). This module knows nothing of where the
messages come from or where the records go.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamer.alerts import AlertDecoder, RejectedAlert, SchemaRegistryUnavailable
from streamer.embedder import LightCurveEmbedder
from streamer.history import HistoryStore
from streamer.photometry import DecodedAlert
from streamer.records import EmbeddingRecord

if TYPE_CHECKING:
    from streamer.decode_pool import DecodePool

CONTAINER_MAGIC = b"Obj\x01"

log = logging.getLogger("streamer.pipeline")


@dataclass(frozen=True, slots=True)
class Message:
    """One input message: its bytes and where it came from (for rejects and logs)."""

    data: bytes
    source: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message (or one alert of it) that produced no embedding, and why."""

    reason: str
    detail: str
    source: str
    data: bytes


@dataclass
class BatchOutcome:
    """What one micro-batch produced."""

    records: list[EmbeddingRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    alerts: int = 0
    changed_objects: int = 0
    decoded_by_survey: Counter[str] = field(default_factory=Counter)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: Alerts that got no record of their own because a newer alert of the same object
    #: in the batch did (``coalesce``).
    coalesced: int = 0


@dataclass
class PreparedBatch:
    """A decoded and merged batch, waiting for the model: the alerts to embed and their curves."""

    outcome: BatchOutcome
    alerts: list[DecodedAlert]
    origins: list[Message]
    curves: list[np.ndarray]


class Pipeline:
    """Decode, merge into history, and embed one micro-batch at a time.

    Every accepted alert yields exactly one embedding record: the embedding of its
    object's light curve as of the alert (points observed and known at or before the
    alert's time), so the output does not depend on the order alerts are processed in.

    Parameters
    ----------
    decoder : AlertDecoder
    history : HistoryStore or None
        The store alerts are merged into; ``None`` when each :meth:`prepare` call names
        its own (one store per input partition).
    embedder : LightCurveEmbedder
    coalesce : bool
        Emit one record per object per batch, for its newest alert, instead of one per
        alert. That record equals the one the newest alert gets without coalescing; the
        older alerts' records are not produced (their points are in the history, and in
        the newest alert's curve).
    decode_pool : DecodePool or None
        Decode in these worker processes instead of with ``decoder`` here (same result).
    """

    def __init__(
        self,
        decoder: AlertDecoder,
        history: HistoryStore | None,
        embedder: LightCurveEmbedder,
        *,
        coalesce: bool = False,
        decode_pool: DecodePool | None = None,
    ) -> None:
        self.decoder = decoder
        self.decode_pool = decode_pool
        self.history = history
        self.embedder = embedder
        self.coalesce = coalesce

    def decode(self, messages: Iterable[Message]) -> Decoded:
        """:func:`decode_messages` with this pipeline's decoder, or its decoding workers."""
        if self.decode_pool is not None:
            return self.decode_pool.decode(messages)
        return decode_messages(self.decoder, messages)

    def prepare(
        self,
        messages: Sequence[Message],
        clock: Callable[[], float] = time.perf_counter,
        *,
        history: HistoryStore | None = None,
    ) -> PreparedBatch:
        """Decode, merge into the history (committed before returning), read as-of curves.

        This is everything but the model; the service runs it for the next batch while
        the model computes the current one. ``history`` replaces the pipeline's store for
        this call (the service's store of the messages' partition).
        """
        history = history if history is not None else self.history
        if history is None:
            raise ValueError("Pipeline.prepare: no history store (give one to the pipeline or the call)")
        outcome = BatchOutcome()
        t0 = clock()
        alerts, origins, outcome.rejections = self.decode(messages)
        t1 = clock()
        outcome.stage_seconds["decode"] = t1 - t0
        outcome.alerts = len(alerts)
        outcome.decoded_by_survey.update(a.survey for a in alerts)
        if not alerts:
            return PreparedBatch(outcome, [], [], [])
        merged = history.merge(alerts)
        outcome.changed_objects = len(merged.changed_objects)
        if self.coalesce:
            alerts, origins, outcome.coalesced = newest_per_object(alerts, origins)
        curves = history.light_curves([(a.object_id, a.alert_time) for a in alerts])
        outcome.stage_seconds["history"] = clock() - t1
        return PreparedBatch(outcome, alerts, origins, curves)

    def embed(self, prepared: PreparedBatch, clock: Callable[[], float] = time.perf_counter) -> BatchOutcome:
        """Embed a prepared batch: its records, and rejections for curves the model cannot use."""
        outcome = prepared.outcome
        if not prepared.alerts:
            return outcome
        t0 = clock()
        outcome.records, failures = self.embedder.embed(prepared.alerts, prepared.curves)
        outcome.stage_seconds["embed"] = clock() - t0
        source_of = {id(a): m for a, m in zip(prepared.alerts, prepared.origins, strict=True)}
        for f in failures:
            origin = source_of[id(f.alert)]
            outcome.rejections.append(Rejection(f.reason, f.detail, origin.source, origin.data))
        return outcome

    def process(
        self, messages: Sequence[Message], clock: Callable[[], float] = time.perf_counter
    ) -> BatchOutcome:
        """Run one micro-batch: :meth:`prepare`, then :meth:`embed`."""
        return self.embed(self.prepare(messages, clock), clock)


def combine_prepared(parts: Sequence[PreparedBatch]) -> PreparedBatch:
    """One prepared batch of several (e.g. one per input partition), for one model call."""
    outcome = BatchOutcome()
    for part in parts:
        o = part.outcome
        outcome.records.extend(o.records)
        outcome.rejections.extend(o.rejections)
        outcome.alerts += o.alerts
        outcome.changed_objects += o.changed_objects
        outcome.decoded_by_survey.update(o.decoded_by_survey)
        outcome.coalesced += o.coalesced
        for stage, seconds in o.stage_seconds.items():
            outcome.stage_seconds[stage] = outcome.stage_seconds.get(stage, 0.0) + seconds
    return PreparedBatch(
        outcome,
        [a for part in parts for a in part.alerts],
        [m for part in parts for m in part.origins],
        [c for part in parts for c in part.curves],
    )


def newest_per_object(
    alerts: Sequence[DecodedAlert], origins: Sequence[Message]
) -> tuple[list[DecodedAlert], list[Message], int]:
    """Keep each object's newest alert (latest ``alert_time``, then highest ``alert_id``).

    Returns the kept alerts and their messages, in input order, and how many were dropped.
    """
    newest: dict[tuple[str, str], int] = {}
    for i, a in enumerate(alerts):
        key = (a.survey, a.object_id)
        j = newest.get(key)
        if j is None or (a.alert_time, a.alert_id) > (alerts[j].alert_time, alerts[j].alert_id):
            newest[key] = i
    keep = sorted(newest.values())
    return [alerts[i] for i in keep], [origins[i] for i in keep], len(alerts) - len(keep)


#: Decoded messages: the alerts, the message each came from, and the rejections.
Decoded = tuple[list[DecodedAlert], list[Message], list[Rejection]]
#: A batch's decoding: :func:`decode_messages` with a decoder, or a decoding pool's.
DecodeMessages = Callable[[Iterable[Message]], Decoded]


def decode_messages(decoder: AlertDecoder, messages: Iterable[Message]) -> Decoded:
    """Decode messages; a container file with several alerts yields each of them.

    Returns the alerts, the message each came from, and the rejections.
    """
    alerts: list[DecodedAlert] = []
    origins: list[Message] = []
    rejections: list[Rejection] = []
    for message in messages:
        try:
            if message.data[:4] == CONTAINER_MAGIC:
                _decode_container(decoder, message, alerts, origins, rejections)
                continue
            alerts.append(decoder.decode(message.data))
            origins.append(message)
        except RejectedAlert as r:
            rejections.append(Rejection(r.reason, r.detail, message.source, message.data))
        except (SchemaRegistryUnavailable, MemoryError):
            raise  # not the message's fault: the runner retries or stops
        except Exception as exc:
            # A decoding bug met by one message: it is dead-lettered, not the service stopped
            # (a restart would meet it again); the log keeps the traceback for a report.
            log.exception("decoding %s raised an unexpected error; it is rejected", message.source)
            detail = f"{type(exc).__name__}: {exc}"[:1000]
            rejections.append(Rejection("decode_error", detail, message.source, message.data))
    return alerts, origins, rejections


def _decode_container(
    decoder: AlertDecoder,
    message: Message,
    alerts: list[DecodedAlert],
    origins: list[Message],
    rejections: list[Rejection],
) -> None:
    """Every alert of an Avro container file (a ZTF message, or an archive file)."""
    found: list[DecodedAlert | RejectedAlert] = []
    for alert in decoder.iter_container(message.data, on_reject=found.append):
        found.append(alert)
    # Nothing is kept before the whole file is read: an unexpected error rejects all of it.
    if not found:
        rejections.append(
            Rejection("bad_container", "container file holds no alert", message.source, message.data)
        )
    for index, item in enumerate(found):
        # A one-alert file keeps its bytes in a rejection; an archive's record bytes
        # are not separable without a full decode, so its path and index locate it.
        single = len(found) == 1
        origin = message if single else Message(b"", f"{message.source}#{index}")
        if isinstance(item, RejectedAlert):
            rejections.append(Rejection(item.reason, item.detail, origin.source, origin.data))
        else:
            alerts.append(item)
            origins.append(origin)
