"""Where writer schemas come from: lsst-alert-packet, a schema registry, files, ELAsTiCC.

Every function here returns schemas parsed by :func:`fastavro.parse_schema` (named types
fully qualified), the form :class:`~streamer.alerts.projection.Projection` takes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import load_schema

from streamer.alerts.errors import RejectedAlert, SchemaRegistryUnavailable

#: Seconds an id the registry does not know stays unknown before it is asked again, so a
#: burst of messages with a not-yet-registered id costs one request, not one each.
UNKNOWN_ID_RETRY_S = 60.0


def rubin_schema_id(major: int, minor: int) -> int:
    """Confluent schema id of Rubin alert schema ``major.minor`` (7.4 -> 704, 11.1 -> 1101)."""
    return major * 100 + minor


def rubin_versions() -> dict[int, tuple[int, int]]:
    """Every Rubin alert schema version shipped by lsst-alert-packet, by schema id."""
    from lsst.alert.packet.schema import get_schema_root

    versions = {}
    for major_dir in get_schema_root().iterdir():
        if not major_dir.name.isdigit():
            continue
        for minor_dir in major_dir.iterdir():
            major, minor = int(major_dir.name), minor_dir.name
            if minor.isdigit() and minor_dir.joinpath(f"lsst.v{major}_{minor}.alert.avsc").is_file():
                versions[rubin_schema_id(major, int(minor))] = (major, int(minor))
    return dict(sorted(versions.items()))


def rubin_schema(major: int, minor: int) -> dict[str, Any]:
    """Parsed Rubin alert schema ``major.minor`` from lsst-alert-packet.

    Raises
    ------
    KeyError
        When the package does not ship that version.
    """
    from lsst.alert.packet.schema import get_schema_path

    path = Path(get_schema_path(major, minor)) / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.is_file():
        raise KeyError(f"lsst-alert-packet ships no alert schema {major}.{minor}")
    return load_schema_file(path)


def load_schema_file(path: str | PathLike[str]) -> dict[str, Any]:
    """Parse an ``.avsc`` file, resolving named types defined in sibling files.

    Rubin schemas split one alert over files named after their types
    (``lsst.v7_4.diaSource.avsc``); fastavro finds them next to the main file.
    """
    schema = load_schema(str(path))
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: the top-level schema must be a record")
    return schema


def parse_record_schema(schema: Any) -> dict[str, Any]:
    """:func:`fastavro.parse_schema` for a schema whose top level must be a record."""
    parsed = fastavro.parse_schema(schema)
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise ValueError("the top-level schema must be a record")
    return parsed


def parse_schema_json(text: str | bytes) -> dict[str, Any]:
    """Parse a self-contained schema given as JSON text (container header, registry)."""
    return parse_record_schema(json.loads(text))


#: Avro types a numeric photometry field may have.
NUMERIC = frozenset({"int", "long", "float", "double"})
#: Avro types of an identifier.
INTEGER = frozenset({"int", "long"})


def record_schema(schema: Any, named: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record inside a field type, through nullable unions, arrays and name references."""
    if isinstance(schema, list):
        records = [found for branch in schema if (found := record_schema(branch, named)) is not None]
        return records[0] if len(records) == 1 else None
    if isinstance(schema, str):
        return record_schema(named[schema], named) if schema in named else None
    if schema.get("type") == "array":
        return record_schema(schema["items"], named)
    return schema if schema.get("type") == "record" else None


def _value_types(schema: Any) -> set[str]:
    branches = schema if isinstance(schema, list) else [schema]
    # A logical type makes fastavro return datetime, date or UUID objects, not numbers or
    # text: report it with its type ("long/timestamp-millis"), so no expected set allows it.
    return {
        "/".join(filter(None, (branch.get("type", "?"), branch.get("logicalType"))))
        if isinstance(branch, dict)
        else branch
        for branch in branches
    }


def check_fields(
    record: Mapping[str, Any] | None, expected: Mapping[str, frozenset[str]], where: str
) -> None:
    """Check that ``record`` (a record schema) has each field with a type in ``expected``.

    A field's type may be a union of allowed types; ``"null"`` is allowed only where
    ``expected`` lists it. Checked once per writer schema, this lets the survey mappings
    trust the shape of every decoded value.

    Raises
    ------
    RejectedAlert
        ``unknown_schema`` naming the first field that is missing or of another type.
    """
    if record is None:
        raise RejectedAlert("unknown_schema", f"{where} is not a record")
    types = {field["name"]: field["type"] for field in record["fields"]}
    for name, allowed in expected.items():
        if name not in types:
            raise RejectedAlert("unknown_schema", f"{where} has no field {name}")
        found = _value_types(types[name])
        if not found <= allowed or found == {"null"}:
            raise RejectedAlert(
                "unknown_schema", f"{where}.{name} is {sorted(found)}, expected {sorted(allowed)}"
            )


def _hostgal_fields(prefix: str) -> Iterator[str]:
    yield from (f"{prefix}_{name}" for name in ("ellipticity", "sqradius", "zspec", "zspec_err"))
    yield from (f"{prefix}_{name}" for name in ("zphot", "zphot_err"))
    yield from (f"{prefix}_zphot_q{q:03d}" for q in range(0, 101, 10))
    yield f"{prefix}_zphot_p50"
    yield from (f"{prefix}_mag_{band}" for band in "ugrizY")
    yield from (f"{prefix}_{name}" for name in ("ra", "dec", "snsep"))
    yield from (f"{prefix}_magerr_{band}" for band in "ugrizY")


def elasticc_v0_9_schema() -> dict[str, Any]:
    """The ELAsTiCC ``elasticc.v0_9.alert`` writer schema, the default for schemaless messages.

    Written out here (documentation strings left out; they do not change the encoding)
    because no installable package ships it; a test checks it against the reference file.
    """
    ns = "elasticc.v0_9"

    def field(name: str, kind: Any, nullable: bool = False) -> dict[str, Any]:
        if nullable:
            return {"name": name, "type": ["null", kind], "default": None}
        return {"name": name, "type": kind}

    dia_source = {
        "type": "record",
        "name": f"{ns}.diaSource",
        "fields": [
            field("diaSourceId", "long"),
            field("ccdVisitId", "long"),
            field("diaObjectId", "long", nullable=True),
            field("parentDiaSourceId", "long", nullable=True),
            field("midPointTai", "double"),
            field("filterName", "string"),
            field("ra", "double"),
            field("decl", "double"),
            field("psFlux", "float"),
            field("psFluxErr", "float"),
            field("snr", "float"),
            field("nobs", "float", nullable=True),
        ],
    }
    forced_source = {
        "type": "record",
        "name": f"{ns}.diaForcedSource",
        "fields": [
            field("diaForcedSourceId", "long"),
            field("ccdVisitId", "long"),
            field("diaObjectId", "long"),
            field("midPointTai", "double"),
            field("filterName", "string"),
            *(field(name, "float") for name in ("psFlux", "psFluxErr", "totFlux", "totFluxErr")),
        ],
    }
    nondetection = {
        "type": "record",
        "name": f"{ns}.diaNondetectionLimit",
        "fields": [
            field("ccdVisitId", "long"),
            field("midPointTai", "double"),
            field("filterName", "string"),
            field("diaNoise", "float"),
        ],
    }
    dia_object = {
        "type": "record",
        "name": f"{ns}.diaObject",
        "fields": [
            field("diaObjectId", "long"),
            {"name": "simVersion", "type": ["null", "string"]},
            field("ra", "double"),
            field("decl", "double"),
            *(
                field(name, "float", nullable=True)
                for name in ("mwebv", "mwebv_err", "z_final", "z_final_err")
            ),
            *(field(name, "float", nullable=True) for name in _hostgal_fields("hostgal")),
            *(field(name, "float", nullable=True) for name in _hostgal_fields("hostgal2")),
        ],
    }
    return parse_record_schema(
        {
            "type": "record",
            "name": f"{ns}.alert",
            "fields": [
                field("alertId", "long"),
                field("diaSource", dia_source),
                field("prvDiaSources", {"type": "array", "items": f"{ns}.diaSource"}, nullable=True),
                field("prvDiaForcedSources", {"type": "array", "items": forced_source}, nullable=True),
                field("prvDiaNondetectionLimits", {"type": "array", "items": nondetection}, nullable=True),
                field("diaObject", dia_object, nullable=True),
                field("cutoutDifference", "bytes", nullable=True),
                field("cutoutTemplate", "bytes", nullable=True),
            ],
        }
    )


class RegistryClient(Protocol):
    """What :class:`RubinSchemas` needs of ``confluent_kafka.schema_registry.SchemaRegistryClient``."""

    def get_schema(self, schema_id: int) -> Any:
        """Registered schema ``schema_id`` (with ``schema_str`` and ``references``)."""
        ...


class RubinSchemas:
    """Rubin writer schemas by Confluent schema id.

    Ids of versions shipped by lsst-alert-packet resolve locally (parsed on first use);
    other ids go to the schema registry when one is configured. Both are cached per id.

    Parameters
    ----------
    registry_url : str, optional
        URL of a Confluent-compatible schema registry asked for ids the package lacks.
        ``confluent_kafka.schema_registry`` (extra ``confluent-kafka[schemaregistry]``)
        is imported only when one is given.
    registry_client : RegistryClient, optional
        A ready client instead of a URL (authentication, tests).
    """

    def __init__(
        self, registry_url: str | None = None, registry_client: RegistryClient | None = None
    ) -> None:
        if registry_url is not None and registry_client is not None:
            raise ValueError("give registry_url or registry_client, not both")
        if registry_url is not None:
            # Imported only when a registry is configured; building the client does not
            # touch the network, so a missing extra or a malformed URL fails at start-up.
            from confluent_kafka.schema_registry import SchemaRegistryClient

            registry_client = SchemaRegistryClient({"url": registry_url})
        self._registry = registry_client
        self._packaged = rubin_versions()
        self._schemas: dict[int, dict[str, Any]] = {}
        self._unknown_until: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def packaged_ids(self) -> tuple[int, ...]:
        """Schema ids lsst-alert-packet ships, ascending."""
        return tuple(self._packaged)

    def get(self, schema_id: int) -> dict[str, Any]:
        """Parsed writer schema for ``schema_id``.

        Raises
        ------
        RejectedAlert
            ``unknown_schema`` when neither the package nor the registry has it.
        SchemaRegistryUnavailable
            When the registry cannot be reached: the message may be fine, retry later.
        """
        schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        with self._lock:
            schema = self._schemas.get(schema_id)
            if schema is None:
                schema = self._resolve(schema_id)
                self._schemas[schema_id] = schema
        return schema

    def _resolve(self, schema_id: int) -> dict[str, Any]:
        if schema_id in self._packaged:
            return rubin_schema(*self._packaged[schema_id])
        if self._registry is None:
            raise RejectedAlert(
                "unknown_schema", f"schema id {schema_id} is not shipped and no registry is set"
            )
        if time.monotonic() < self._unknown_until.get(schema_id, 0.0):
            raise RejectedAlert("unknown_schema", f"schema id {schema_id} is not in the registry")
        registered = self._ask_registry(schema_id)
        if registered is None:
            now = time.monotonic()
            if len(self._unknown_until) >= 4096:
                # Random ids must not grow this without bound: forget the expired ones.
                self._unknown_until = {i: t for i, t in self._unknown_until.items() if t > now}
            self._unknown_until[schema_id] = now + UNKNOWN_ID_RETRY_S
            raise RejectedAlert("unknown_schema", f"schema id {schema_id} is not in the registry")
        if getattr(registered, "references", None):
            raise RejectedAlert("unknown_schema", f"schema id {schema_id} uses schema references")
        try:
            return parse_schema_json(registered.schema_str)
        except Exception as exc:
            raise RejectedAlert("unknown_schema", f"schema id {schema_id} does not parse: {exc}") from None

    def _ask_registry(self, schema_id: int) -> Any | None:
        assert self._registry is not None
        try:
            return self._registry.get_schema(schema_id)
        except Exception as exc:
            if getattr(exc, "http_status_code", None) == 404:
                return None
            raise SchemaRegistryUnavailable(
                f"schema registry lookup of id {schema_id} failed: {exc}"
            ) from exc
