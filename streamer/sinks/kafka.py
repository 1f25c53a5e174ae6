"""Kafka sink: embedding records to the output topic, rejections to the dead-letter topic.

Value encoding, chosen so consumers never guess:

* with a schema registry: the Confluent wire format (``0x00``, 4-byte schema id, Avro),
  registering ``schemas/embedding.avsc`` under ``<topic>-value``;
* without one: Avro *single-object encoding* from the Avro specification (``0xC3 0x01``,
  the schema's 8-byte little-endian CRC-64-AVRO fingerprint, then the Avro binary), with
  the header ``content-type: application/vnd.apache.avro+binary; schema=...``. Readers
  check the fingerprint against ``schemas/embedding.avsc`` (see
  :func:`decode_record_value`).

Keys are the object id (UTF-8), so all records of an object land in one partition, in
order. The same sink writes ``streamer repartition``'s photometry records
(:class:`PhotometryEncoder`, ``schemas/photometry.avsc``, always single-object encoded).
Dead-letter records carry the original message bytes and the headers
``streamer.reason``, ``streamer.detail``, ``streamer.source.topic``,
``streamer.source.partition`` and ``streamer.source.offset``. A dead letter keeps at most
``dead_letter_max_bytes`` of key and value together (so an oversized message still fits
the dead-letter topic): a longer value keeps its first bytes and gains the header
``streamer.original.size``, its full length.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streamer.alerts import photometry_codec
from streamer.photometry import DecodedAlert
from streamer.pipeline import Rejection
from streamer.records import EmbeddingRecord, record_schema

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONTENT_TYPE = "application/vnd.apache.avro+binary; schema=org.streamer.v1.EmbeddingRecord"
#: Default cap on a dead letter's key plus value: under librdkafka's default
#: ``message.max.bytes`` (1,000,000) and the broker's (1,048,588), with room for headers.
DEAD_LETTER_MAX_BYTES = 900_000


def schema_fingerprint() -> bytes:
    """CRC-64-AVRO fingerprint of the record schema, little-endian, as single-object encoding wants."""
    value = int(fingerprint(to_parsing_canonical_form(record_schema()), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", value)


def encode_record_value(record: EmbeddingRecord, prefix: bytes) -> bytes:
    buffer = io.BytesIO()
    buffer.write(prefix)
    fastavro.schemaless_writer(buffer, record_schema(), record.to_avro())
    return buffer.getvalue()


def decode_record_value(value: bytes) -> EmbeddingRecord:
    """Decode an output-topic value written without a registry (single-object encoding).

    Raises
    ------
    ValueError
        If the value is not single-object encoded with this schema's fingerprint.
    """
    if value[:2] != SINGLE_OBJECT_MAGIC:
        raise ValueError("not an Avro single-object encoded value")
    if value[2:10] != schema_fingerprint():
        raise ValueError("written with another schema (fingerprint differs from schemas/embedding.avsc)")
    data = fastavro.schemaless_reader(io.BytesIO(value[10:]), record_schema(), None)
    return EmbeddingRecord.from_avro(data)  # type: ignore[arg-type]


class RecordEncoder:
    """Turns records into Kafka values: Confluent framing with a registry, else single-object."""

    def __init__(self, topic: str, registry_url: str | None = None) -> None:
        if registry_url:
            from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

            from streamer.records import SCHEMA_PATH

            client = SchemaRegistryClient({"url": registry_url})
            registered = client.register_schema(f"{topic}-value", Schema(SCHEMA_PATH.read_text(), "AVRO"))
            schema_id = registered if isinstance(registered, int) else registered.schema_id
            self.prefix = b"\x00" + struct.pack(">I", schema_id)
            self.headers: list[tuple[str, bytes]] = []
        else:
            self.prefix = SINGLE_OBJECT_MAGIC + schema_fingerprint()
            self.headers = [("content-type", CONTENT_TYPE.encode())]

    def encode(self, record: EmbeddingRecord) -> bytes:
        return encode_record_value(record, self.prefix)


class PhotometryEncoder:
    """Turns decoded alerts into photometry values (:mod:`streamer.alerts.photometry_codec`)."""

    def __init__(self) -> None:
        self.headers = [("content-type", photometry_codec.CONTENT_TYPE.encode())]

    def encode(self, alert: DecodedAlert) -> bytes:
        return photometry_codec.encode(alert)


class KeyedRecord(Protocol):
    """A record the sink can key: embedding records and decoded alerts both are."""

    @property
    def object_id(self) -> str: ...


RecordT = TypeVar("RecordT", bound=KeyedRecord)
RecordT_contra = TypeVar("RecordT_contra", contravariant=True)


class ValueEncoder(Protocol[RecordT_contra]):
    """:class:`RecordEncoder` or :class:`PhotometryEncoder`: values and their headers."""

    headers: list[tuple[str, bytes]]

    def encode(self, record: RecordT_contra) -> bytes: ...


class KafkaRecordSink(Generic[RecordT]):
    """Produces a micro-batch's records and rejections on a (transactional) producer.

    Parameters
    ----------
    producer : confluent_kafka.Producer
    output_topic, dead_letter_topic : str
    encoder : RecordEncoder or PhotometryEncoder
    on_delivery_error : callable
        Called with the error of any message the broker did not accept.
    dead_letter_max_bytes : int
        Most bytes of a dead letter's key and value together; keep it below the
        dead-letter topic's ``max.message.bytes`` and the producer's ``message.max.bytes``.
    """

    def __init__(
        self,
        producer: Any,
        output_topic: str,
        dead_letter_topic: str,
        encoder: ValueEncoder[RecordT],
        on_delivery_error: Callable[[Any], None],
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> None:
        self.producer = producer
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.encoder = encoder
        self._on_error = on_delivery_error
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self._queued = 0
        self._offsets: dict[tuple[str, int], list[int]] | None = None
        self._topics: set[str] = set()

    def begin(self) -> None:
        """Start noting where the records queued from now on land (see :meth:`written`,
        :meth:`topics`, :meth:`last_delivered`)."""
        self._queued = 0
        self._offsets = {}
        self._topics = set()

    def topics(self) -> set[str]:
        """The topics of the records queued since :meth:`begin`."""
        return self._topics

    def written(self) -> dict[tuple[str, int], list[int]] | None:
        """The offsets of the records queued since :meth:`begin`, by topic and partition;
        ``None`` while some are not reported delivered (or :meth:`begin` was not called)."""
        if self._offsets is None or sum(map(len, self._offsets.values())) != self._queued:
            return None
        return self._offsets

    def last_delivered(self, topic: str) -> dict[int, int]:
        """The highest offset on each partition of ``topic`` among the records queued since
        :meth:`begin` that are reported delivered so far."""
        if self._offsets is None:
            return {}
        return {p: max(offsets) for (t, p), offsets in self._offsets.items() if t == topic}

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._on_error(err)
        elif self._offsets is not None:
            self._offsets.setdefault((msg.topic(), msg.partition()), []).append(msg.offset())

    def produce(self, **kwargs: Any) -> None:
        """Queue one message (``Producer.produce`` arguments), waiting while the local queue
        is full; errors go to ``on_delivery_error``."""
        while True:
            try:
                self.producer.produce(on_delivery=self._delivered, **kwargs)
                self._queued += 1
                self._topics.add(kwargs["topic"])
                return
            except BufferError:
                # Local queue full: let librdkafka send, then retry.
                self.producer.poll(0.1)

    def write(self, records: Sequence[RecordT], rejections: Sequence[tuple[Rejection, Any]]) -> None:
        """Queue every record and rejection; ``rejections`` pairs each with its source message."""
        for record in records:
            self.produce(
                topic=self.output_topic,
                key=record.object_id.encode(),
                value=self.encoder.encode(record),
                headers=self.encoder.headers,
            )
        for rejection, message in rejections:
            headers = [
                ("streamer.reason", rejection.reason.encode()),
                ("streamer.detail", rejection.detail.encode(errors="replace")[:4000]),
            ]
            if message is not None:
                headers += [
                    ("streamer.source.topic", str(message.topic()).encode()),
                    ("streamer.source.partition", str(message.partition()).encode()),
                    ("streamer.source.offset", str(message.offset()).encode()),
                ]
            key = message.key() if message is not None else None
            # A dead letter over the topic's size limit would fail the whole batch, and the
            # same batch again after every restart: cut it to fit instead.
            key = key[: self.dead_letter_max_bytes] if key else key
            value = rejection.data
            room = self.dead_letter_max_bytes - len(key or b"")
            if len(value) > room:
                headers.append(("streamer.original.size", str(len(value)).encode()))
                value = value[:room]
            self.produce(topic=self.dead_letter_topic, key=key, value=value, headers=headers)
        self.producer.poll(0)
