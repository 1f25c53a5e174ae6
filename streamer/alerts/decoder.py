"""One decoder for every alert stream: framing, writer schema, projection, photometry.

The framing is read from the first bytes unless configuration forces one:

* ``0x00`` + 4-byte big-endian schema id: Confluent wire format (Rubin);
* ``Obj\\x01``: an Avro object container file (ZTF; Rubin and ELAsTiCC sample files);
* ``0xC3 0x01`` + the fingerprint of ``schemas/photometry.avsc``: a compact photometry
  record written by ``streamer repartition`` (:mod:`streamer.alerts.photometry_codec`);
* anything else: schemaless Avro written with the configured schema (ELAsTiCC).

Schemaless ELAsTiCC payloads cannot be mistaken for the others: they open with the
varint of a positive ``alertId``, whose first byte is even and non-zero for any id but
0, while ``O`` (0x4F) and 0xC3 are odd.

A message longer than ``max_message_bytes`` (when set) is rejected as ``oversized``
before any of it is parsed, whatever its framing.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from os import PathLike
from typing import Any

import numpy as np

from streamer.alerts import photometry_codec
from streamer.alerts.container import (
    CONTAINER_MAGIC,
    ContainerHeader,
    iter_container_blocks,
    read_container_header,
)
from streamer.alerts.dia import DIA_FIELDS, dia_alert, dia_layout
from streamer.alerts.errors import RejectedAlert
from streamer.alerts.projection import Projection
from streamer.alerts.schemas import (
    RegistryClient,
    RubinSchemas,
    elasticc_v0_9_schema,
    load_schema_file,
    parse_record_schema,
    parse_schema_json,
)
from streamer.alerts.ztf import ZTF_FIELDS, check_ztf_schema, ztf_alert
from streamer.photometry import DecodedAlert

#: Confluent wire format: magic byte 0, then a 4-byte big-endian schema id.
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5
#: Schemas that ``schemaless_schema`` may name instead of giving a path.
BUILTIN_SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {"elasticc.v0_9": elasticc_v0_9_schema}

SchemaSource = str | PathLike[str] | Mapping[str, Any]


class Framing(StrEnum):
    """How alert bytes are wrapped on the wire."""

    AUTO = "auto"
    CONFLUENT = "confluent"
    CONTAINER = "container"
    SCHEMALESS = "schemaless"
    PHOTOMETRY = "photometry"


@dataclass(frozen=True, slots=True)
class _DecodingPlan:
    """Everything derived from one writer schema: built once, reused for every alert.

    ``projection`` holds the parsed writer schema and the pruned reader schema that
    cavro and fastavro decode with, so neither is parsed again for the next alert.
    """

    projection: Projection
    to_alert: Callable[[dict[str, Any], Counter[str]], DecodedAlert]


def _plan(schema: dict[str, Any]) -> _DecodingPlan:
    """Pick the survey mapping from the writer schema's name and prune its reader schema."""
    try:
        return _survey_plan(schema)
    except RecursionError:
        # The schema walks recurse once per nesting level; fastavro parses deeper schemas.
        raise RejectedAlert("unknown_schema", "the writer schema nests too deeply") from None


def _survey_plan(schema: dict[str, Any]) -> _DecodingPlan:
    name = schema.get("name", "")
    if name.startswith(("lsst.", "elasticc.")):
        layout = dia_layout(schema)
        return _DecodingPlan(
            Projection(schema, DIA_FIELDS), lambda record, dropped: dia_alert(record, layout, dropped)
        )
    if name == "ztf.alert":
        check_ztf_schema(schema)
        return _DecodingPlan(Projection(schema, ZTF_FIELDS), ztf_alert)
    raise RejectedAlert("unknown_schema", f"{name!r} is not a Rubin, ELAsTiCC or ZTF alert schema")


def _checked_photometry(alert: DecodedAlert) -> DecodedAlert:
    """A photometry record's alert, if the history can take it (the codec keeps any floats)."""
    if not alert.object_id:
        raise RejectedAlert("null_object_id", f"alert {alert.alert_id}: object_id is empty")
    if not np.isfinite(alert.alert_time) or not np.isfinite(alert.points["time"]).all():
        raise RejectedAlert(
            "non_finite_time", f"alert {alert.alert_id}: alert_time or a point time is not finite"
        )
    return alert


def _load_schemaless_schema(source: SchemaSource) -> dict[str, Any]:
    if isinstance(source, Mapping):
        try:
            return parse_record_schema(dict(source))
        except Exception as exc:
            raise ValueError(f"schemaless_schema does not parse: {exc}") from None
    if isinstance(source, str) and source in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[source]()
    return load_schema_file(source)


class AlertDecoder:
    """Decode alert messages of any supported stream into :class:`DecodedAlert`.

    Only the fields the pipeline needs are decoded, each writer schema resolved against a
    pruned reader schema (cavro, with fastavro for what cavro does not accept: see
    :class:`~streamer.alerts.projection.Projection`); cutouts are skipped unread. Parsed
    writer and reader schemas are cached per Confluent schema id and per fingerprint of a
    container file's embedded schema, so neither is parsed again per message. A decoder is
    meant for one thread.

    Parameters
    ----------
    framing : Framing or str
        ``"auto"`` (default) detects the framing from the bytes; ``"confluent"``,
        ``"container"``, ``"schemaless"`` or ``"photometry"`` (``streamer repartition``'s
        records) force one.
    schemaless_schema : str, path-like, mapping or None
        Writer schema of schemaless messages: a built-in name (default
        ``"elasticc.v0_9"``), an ``.avsc`` path, or a schema dict. ``None`` disables
        schemaless decoding; ``"auto"`` then rejects unrecognised bytes as ``not_avro``.
    registry_url : str, optional
        Confluent schema registry asked for Rubin schema ids lsst-alert-packet lacks.
    registry_client : RegistryClient, optional
        A ready registry client instead of ``registry_url``.
    schema_cache_size : int
        Container-file schemas kept parsed; the least recently used is evicted.
    max_message_bytes : int, optional
        Longest message accepted, by :meth:`decode` and :meth:`iter_container` alike;
        longer ones are rejected as ``oversized`` unread. ``None`` (default) sets no limit.

    Attributes
    ----------
    dropped_rows : collections.Counter
        History rows dropped as unusable, by check (``non_finite_flux``, ``negative_error``,
        ``unknown_band``, ``non_finite_time``, ``non_finite_error``, ``non_finite_limit``,
        ``after_trigger``).
    """

    def __init__(
        self,
        framing: Framing | str = Framing.AUTO,
        *,
        schemaless_schema: SchemaSource | None = "elasticc.v0_9",
        registry_url: str | None = None,
        registry_client: RegistryClient | None = None,
        schema_cache_size: int = 64,
        max_message_bytes: int | None = None,
    ) -> None:
        try:
            self.framing = Framing(framing)
        except ValueError:
            raise ValueError(
                f"framing must be one of {[f.value for f in Framing]}, got {framing!r}"
            ) from None
        if schema_cache_size < 1:
            raise ValueError(f"schema_cache_size must be positive, got {schema_cache_size}")
        if self.framing is Framing.SCHEMALESS and schemaless_schema is None:
            raise ValueError("framing='schemaless' needs a schemaless_schema")
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive or None, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.dropped_rows: Counter[str] = Counter()
        self._rubin = RubinSchemas(registry_url=registry_url, registry_client=registry_client)
        self._confluent_plans: dict[int, _DecodingPlan] = {}
        self._container_plans: OrderedDict[bytes, _DecodingPlan] = OrderedDict()
        self._last_container_schema = b""
        self._last_container_plan: _DecodingPlan | None = None
        self._cache_size = schema_cache_size
        self._schemaless_plan = None
        if schemaless_schema is not None:
            try:
                self._schemaless_plan = _plan(_load_schemaless_schema(schemaless_schema))
            except RejectedAlert as exc:
                raise ValueError(f"schemaless_schema: {exc.detail}") from None

    def decode(self, message: bytes) -> DecodedAlert:
        """Decode one alert message.

        Raises
        ------
        RejectedAlert
            For every kind of bad input; ``reason`` is one of
            :data:`~streamer.alerts.errors.REJECTION_REASONS`.
        SchemaRegistryUnavailable
            Only with a registry, when it cannot be reached (not the message's fault).
        """
        self._check_size(message)
        message = bytes(message)
        framing = self.framing if self.framing is not Framing.AUTO else self._detect(message)
        if framing is Framing.CONFLUENT:
            return self._decode_confluent(message)
        if framing is Framing.CONTAINER:
            return self._decode_container(message)
        if framing is Framing.PHOTOMETRY:
            return _checked_photometry(photometry_codec.decode(message))
        if self.framing is Framing.AUTO:
            try:
                return self._decode_schemaless(message)
            except RejectedAlert as rejection:
                raise self._misframed_confluent(message) or rejection from None
        return self._decode_schemaless(message)

    def iter_container(
        self, data: bytes, on_reject: Callable[[RejectedAlert], None] | None = None
    ) -> Iterator[DecodedAlert]:
        """Decode every alert of a container file (an archive, or a replayed message).

        Parameters
        ----------
        data : bytes
            A whole Avro object container file, any number of records and blocks.
        on_reject : callable, optional
            Called with the rejection of each bad alert, after which iteration goes on
            (with the next block when the bad bytes leave the rest of a block unreadable).
            Without it the first rejection is raised.
        """

        def reject(rejection: RejectedAlert) -> None:
            if on_reject is None:
                raise rejection
            on_reject(rejection)

        try:
            self._check_size(data)
            data = bytes(data)
            header = read_container_header(data)
            plan = self._container_plan(header)
            for count, records, end in iter_container_blocks(data, header):
                try:
                    for _ in range(count):
                        # A one-record block (every ZTF message) is one datum to its end,
                        # which cavro reads (see Projection).
                        record = (
                            plan.projection.read_to_end(records, end)
                            if count == 1
                            else plan.projection.read(records, end)
                        )
                        try:
                            yield plan.to_alert(record, self.dropped_rows)
                        except RejectedAlert as rejection:
                            reject(rejection)
                    if records.tell() != end:
                        raise RejectedAlert(
                            "schema_mismatch", f"{end - records.tell()} bytes left in a block"
                        )
                except RejectedAlert as rejection:
                    reject(rejection)
        except RejectedAlert as rejection:
            # Header and block framing errors end the file: nothing after them can be located.
            reject(rejection)

    def _check_size(self, message: bytes) -> None:
        if self.max_message_bytes is not None and len(message) > self.max_message_bytes:
            raise RejectedAlert(
                "oversized", f"{len(message)} bytes, more than max_message_bytes={self.max_message_bytes}"
            )

    def _misframed_confluent(self, message: bytes) -> RejectedAlert | None:
        """``bad_magic`` for a Confluent header with a wrong magic byte, else None.

        Auto framing reads such bytes as schemaless; only once that fails (so never for a
        valid ELAsTiCC alert) does a known Rubin schema id in bytes 1-4 say what they are.
        """
        if len(message) < CONFLUENT_HEADER_SIZE:
            return None
        schema_id = int.from_bytes(message[1:CONFLUENT_HEADER_SIZE], "big")
        if schema_id not in self._confluent_plans and schema_id not in self._rubin.packaged_ids:
            return None
        return RejectedAlert(
            "bad_magic",
            f"Confluent header of Rubin schema id {schema_id} with magic byte {message[0]:#04x}, not 0x00",
        )

    def _detect(self, message: bytes) -> Framing:
        if not message:
            raise RejectedAlert("truncated", "empty message")
        if message.startswith(CONTAINER_MAGIC):
            return Framing.CONTAINER
        if photometry_codec.is_photometry(message):
            return Framing.PHOTOMETRY
        if message[0] == CONFLUENT_MAGIC:
            return Framing.CONFLUENT
        if len(message) < len(CONTAINER_MAGIC) and CONTAINER_MAGIC.startswith(message):
            raise RejectedAlert("truncated", f"{len(message)} bytes of a container header")
        if self._schemaless_plan is None:
            raise RejectedAlert("not_avro", f"no known framing starts with {message[:5]!r}")
        return Framing.SCHEMALESS

    def _decode_confluent(self, message: bytes) -> DecodedAlert:
        if message[:1] != bytes([CONFLUENT_MAGIC]):
            if not message:
                raise RejectedAlert("truncated", "empty message")
            raise RejectedAlert("bad_magic", f"Confluent framing starts with 0x00, got {message[0]:#04x}")
        if len(message) < CONFLUENT_HEADER_SIZE:
            raise RejectedAlert("truncated", f"{len(message)} bytes cannot hold the Confluent header")
        schema_id = int.from_bytes(message[1:CONFLUENT_HEADER_SIZE], "big")
        plan = self._confluent_plans.get(schema_id)
        if plan is None:
            plan = _plan(self._rubin.get(schema_id))
            self._confluent_plans[schema_id] = plan
        record = plan.projection.read_whole(message, CONFLUENT_HEADER_SIZE)
        return plan.to_alert(record, self.dropped_rows)

    def _decode_container(self, message: bytes) -> DecodedAlert:
        header = read_container_header(message)
        plan = self._container_plan(header)
        alerts: list[dict[str, Any]] = []
        for count, records, end in iter_container_blocks(message, header):
            if count + len(alerts) > 1:
                raise RejectedAlert("bad_container", "holds more than one alert; use iter_container")
            if count:
                alerts.append(plan.projection.read_to_end(records, end))
        if not alerts:
            raise RejectedAlert("bad_container", "holds no alert")
        return plan.to_alert(alerts[0], self.dropped_rows)

    def _decode_schemaless(self, message: bytes) -> DecodedAlert:
        if self._schemaless_plan is None:
            raise RejectedAlert("not_avro", "schemaless decoding is disabled")
        record = self._schemaless_plan.projection.read_whole(message)
        return self._schemaless_plan.to_alert(record, self.dropped_rows)

    def _container_plan(self, header: ContainerHeader) -> _DecodingPlan:
        # A stream repeats one schema: comparing bytes with the last one (a memcmp) is
        # cheaper still than hashing them.
        if header.schema_json == self._last_container_schema and self._last_container_plan is not None:
            return self._last_container_plan
        # Keyed by a digest of the raw schema JSON: one hash instead of a JSON and schema
        # parse per message, the bulk of fastavro.reader's cost on one-alert files.
        key = header.fingerprint
        plan = self._container_plans.get(key)
        if plan is not None:
            self._container_plans.move_to_end(key)
            self._last_container_schema, self._last_container_plan = header.schema_json, plan
            return plan
        try:
            schema = parse_schema_json(header.schema_json)
        except Exception as exc:
            # json and fastavro raise assorted types for a malformed schema; all mean the same.
            raise RejectedAlert("bad_container", f"embedded schema does not parse: {exc}") from None
        plan = _plan(schema)
        self._container_plans[key] = plan
        if len(self._container_plans) > self._cache_size:
            self._container_plans.popitem(last=False)
        self._last_container_schema, self._last_container_plan = header.schema_json, plan
        return plan
