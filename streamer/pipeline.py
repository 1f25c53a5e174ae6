"""One micro-batch through the pipeline: decode -> history -> embed -> records.

The runner (file replay or Kafka service) reads a batch of messages from its source,
calls :meth:`Pipeline.process`, writes the records and rejections to its sink, and only
then acknowledges the input (commits offsets). This module knows nothing of where the
messages come from or where the records go.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from streamer.alerts import AlertDecoder, RejectedAlert
from streamer.embedder import LightCurveEmbedder
from streamer.history import HistoryStore
from streamer.photometry import DecodedAlert
from streamer.records import EmbeddingRecord

CONTAINER_MAGIC = b"Obj\x01"


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


class Pipeline:
    """Decode, merge into history, and embed one micro-batch at a time.

    Every accepted alert yields exactly one embedding record: the embedding of its
    object's light curve as of the alert (points observed and known at or before the
    alert's time), so the output does not depend on the order alerts are processed in.

    Parameters
    ----------
    decoder : AlertDecoder
    history : HistoryStore
    embedder : LightCurveEmbedder
    """

    def __init__(self, decoder: AlertDecoder, history: HistoryStore, embedder: LightCurveEmbedder) -> None:
        self.decoder = decoder
        self.history = history
        self.embedder = embedder

    def decode(
        self, messages: Iterable[Message]
    ) -> tuple[list[DecodedAlert], list[Message], list[Rejection]]:
        """Decode messages; a container file with several alerts yields each of them.

        Returns the alerts, the message each came from, and the rejections.
        """
        alerts: list[DecodedAlert] = []
        origins: list[Message] = []
        rejections: list[Rejection] = []
        for message in messages:
            if message.data[:4] == CONTAINER_MAGIC:
                self._decode_container(message, alerts, origins, rejections)
                continue
            try:
                alerts.append(self.decoder.decode(message.data))
                origins.append(message)
            except RejectedAlert as r:
                rejections.append(Rejection(r.reason, r.detail, message.source, message.data))
        return alerts, origins, rejections

    def _decode_container(
        self,
        message: Message,
        alerts: list[DecodedAlert],
        origins: list[Message],
        rejections: list[Rejection],
    ) -> None:
        """Every alert of an Avro container file (a ZTF message, or an archive file)."""
        found: list[DecodedAlert | RejectedAlert] = []
        for alert in self.decoder.iter_container(message.data, on_reject=found.append):
            found.append(alert)
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

    def process(
        self, messages: Sequence[Message], clock: Callable[[], float] = time.perf_counter
    ) -> BatchOutcome:
        """Run one micro-batch; the history store's write is committed before returning."""
        outcome = BatchOutcome()
        t0 = clock()
        alerts, origins, outcome.rejections = self.decode(messages)
        t1 = clock()
        outcome.stage_seconds["decode"] = t1 - t0
        outcome.alerts = len(alerts)
        outcome.decoded_by_survey.update(a.survey for a in alerts)
        if not alerts:
            return outcome
        merged = self.history.merge(alerts)
        curves = self.history.light_curves([(a.object_id, a.alert_time) for a in alerts])
        t2 = clock()
        outcome.stage_seconds["history"] = t2 - t1
        outcome.changed_objects = len(merged.changed_objects)
        outcome.records, failures = self.embedder.embed(alerts, curves)
        outcome.stage_seconds["embed"] = clock() - t2
        source_of = {id(a): m for a, m in zip(alerts, origins, strict=True)}
        for f in failures:
            origin = source_of[id(f.alert)]
            outcome.rejections.append(Rejection(f.reason, f.detail, origin.source, origin.data))
        return outcome
