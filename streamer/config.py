"""Service configuration: one typed object from ``STREAMER_*`` variables and a YAML file.

Precedence: environment variables over the YAML file (``STREAMER_CONFIG_FILE`` or
``--config``) over defaults. Every error names the setting, e.g.
``STREAMER_BATCH_MAX_MESSAGES: expected a positive integer, got 'many'``.

librdkafka properties pass through unchanged: ``STREAMER_KAFKA_SECURITY_PROTOCOL=SASL_SSL``
becomes ``security.protocol`` (underscores become dots), or a ``kafka:`` mapping in the
file. Secrets are read from files: ``STREAMER_KAFKA_SASL_PASSWORD_FILE=/run/secrets/pw``
sets ``sasl.password`` to the file's content. Secret values never appear in ``repr``,
logs or error messages.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streamer.alerts import Framing
from streamer.embedder import MODELS
from streamer.sinks.kafka import DEAD_LETTER_MAX_BYTES

#: librdkafka properties whose values are secrets (masked everywhere).
SECRET_KAFKA_KEYS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)
ENV_PREFIX = "STREAMER_"
KAFKA_PREFIX = "STREAMER_KAFKA_"


class ConfigError(ValueError):
    """A bad setting; the message starts with the setting's name."""


@dataclass
class Config:
    """Everything ``streamer run`` needs. See the README's configuration table."""

    bootstrap_servers: str = ""
    input_topics: list[str] = field(default_factory=list)
    input_pattern: str | None = None
    output_topic: str = "alert-embeddings"
    dead_letter_topic: str = "alert-embeddings-dlq"
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES
    max_message_bytes: int = 16 << 20
    group_id: str = "streamer"
    instance_id: str = field(default_factory=socket.gethostname)
    delivery: str = "exactly-once"
    batch_max_messages: int = 500
    batch_max_wait_s: float = 1.0
    model: str = "atcat"
    model_file: str | None = None
    model_output: str | None = None
    reduction: str = "non-overlapping-windows"
    onnx_batch_size: int | None = None
    onnx_threads: int | None = None
    decode_processes: int = 0
    window_cache_bytes: int = 256 << 20
    curve_memo_bytes: int = 64 << 20
    coalesce: bool = False
    pipeline: bool = True
    broker_outage_s: float = 240.0
    use_fp16: bool = False
    onnx_providers: list[str] = field(default_factory=list)
    history_path: str | None = None
    history_changelog_topic: str | None = None
    max_points_per_object: int = 10_000
    framing: str = "auto"
    schemaless_schema: str = "elasticc.v0_9"
    schema_registry_url: str | None = None
    metrics_port: int = 8000
    log_format: str = "text"
    log_level: str = "INFO"
    start_from: str = "committed"
    start_time_ms: int | None = None
    until_time_ms: int | None = None
    exit_when_caught_up: bool = False
    kafka: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["kafka"] = masked(self.kafka)
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def transactional_id(self) -> str:
        """Stable per instance, so a restarted pod fences its previous incarnation."""
        return f"{self.group_id}-{self.instance_id}"

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, file: str | os.PathLike[str] | None = None
    ) -> Config:
        """Build and validate the configuration.

        Parameters
        ----------
        environ : mapping, optional
            Environment (default ``os.environ``).
        file : path, optional
            YAML file; default ``STREAMER_CONFIG_FILE`` when set.

        Raises
        ------
        ConfigError
            Naming the first bad setting.
        """
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        file = file or env.get("STREAMER_CONFIG_FILE")
        if file:
            values.update(_read_yaml(Path(file)))
        known = {f.name: f for f in fields(cls)}
        for f in known.values():
            key = ENV_PREFIX + f.name.upper()
            if key in env and f.name != "kafka":
                values[f.name] = env[key]
        if not values.get("bootstrap_servers") and env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        kafka = {str(k): str(v) for k, v in dict(values.pop("kafka", None) or {}).items()}
        for key, value in env.items():
            if key.startswith(KAFKA_PREFIX):
                kafka[key[len(KAFKA_PREFIX) :].lower().replace("_", ".")] = value
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        config = cls(**{name: _convert(name, known[name].type, value) for name, value in values.items()})
        config.kafka = _resolve_secret_files(kafka)
        config.validate()
        return config

    def validate(self) -> None:
        """Check values and combinations; raise :class:`ConfigError` naming the setting."""
        if not self.bootstrap_servers:
            raise ConfigError("STREAMER_BOOTSTRAP_SERVERS: required (host:port[,host:port...])")
        if bool(self.input_topics) == bool(self.input_pattern):
            raise ConfigError(
                "STREAMER_INPUT_TOPICS: give input topics or STREAMER_INPUT_PATTERN (one of them)"
            )
        if self.delivery not in ("exactly-once", "at-least-once"):
            raise ConfigError(
                f"STREAMER_DELIVERY: expected exactly-once or at-least-once, got {self.delivery!r}"
            )
        if self.model not in MODELS:
            raise ConfigError(f"STREAMER_MODEL: expected one of {', '.join(MODELS)}, got {self.model!r}")
        if self.model_file is not None and not Path(self.model_file).is_file():
            raise ConfigError(f"STREAMER_MODEL_FILE: {self.model_file!r} is not a file")
        for name in ("window_cache_bytes", "curve_memo_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"STREAMER_{name.upper()}: must not be negative, got {getattr(self, name)}")
        for name in ("batch_max_messages", "max_points_per_object", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"STREAMER_{name.upper()}: must be at least 1, got {getattr(self, name)}")
        if self.decode_processes < 0:
            raise ConfigError(
                f"STREAMER_DECODE_PROCESSES: must not be negative (0 decodes in the main process), "
                f"got {self.decode_processes}"
            )
        if self.dead_letter_max_bytes < 0:
            raise ConfigError(
                f"STREAMER_DEAD_LETTER_MAX_BYTES: must not be negative, got {self.dead_letter_max_bytes}"
            )
        for name in ("batch_max_wait_s", "broker_outage_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"STREAMER_{name.upper()}: must be positive, got {getattr(self, name)}")
        for name in ("onnx_batch_size", "onnx_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"STREAMER_{name.upper()}: must be at least 1, got {getattr(self, name)}")
        if self.onnx_providers:
            import onnxruntime

            available = onnxruntime.get_available_providers()
            missing = [name for name in self.onnx_providers if name not in available]
            if missing:
                raise ConfigError(
                    f"STREAMER_ONNX_PROVIDERS: {', '.join(missing)} not in this onnxruntime build "
                    f"(available: {', '.join(available)}; CUDA needs the onnxruntime-gpu package)"
                )
        if not 0 < self.metrics_port < 65536:
            raise ConfigError(f"STREAMER_METRICS_PORT: not a TCP port: {self.metrics_port}")
        if self.framing not in tuple(Framing):
            raise ConfigError(
                f"STREAMER_FRAMING: expected one of {', '.join(tuple(Framing))}, got {self.framing!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"STREAMER_LOG_FORMAT: expected text or json, got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                "STREAMER_LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"got {self.log_level!r}"
            )
        if self.start_from not in ("committed", "beginning", "end", "time"):
            raise ConfigError(
                f"STREAMER_START_FROM: expected committed, beginning, end or time, got {self.start_from!r}"
            )
        if self.start_from == "time" and self.start_time_ms is None:
            raise ConfigError("STREAMER_START_TIME_MS: required with STREAMER_START_FROM=time")
        if self.history_changelog_topic is not None:
            self._validate_changelog()
        for key in ("group.id", "transactional.id", "enable.auto.commit", "isolation.level"):
            if key in self.kafka:
                raise ConfigError(f"STREAMER_KAFKA_{key.upper().replace('.', '_')}: set by streamer itself")

    def _validate_changelog(self) -> None:
        topic = self.history_changelog_topic
        if self.input_pattern or len(self.input_topics) != 1:
            raise ConfigError(
                "STREAMER_HISTORY_CHANGELOG_TOPIC: needs exactly one input topic (STREAMER_INPUT_TOPICS): "
                "the changelog's partitions are the input topic's"
            )
        if topic in (*self.input_topics, self.output_topic, self.dead_letter_topic):
            raise ConfigError(
                f"STREAMER_HISTORY_CHANGELOG_TOPIC: {topic!r} is also the input, output or dead-letter topic"
            )
        if self.history_path is not None and Path(self.history_path).is_file():
            raise ConfigError(
                f"STREAMER_HISTORY_PATH: {self.history_path!r} is a file; with "
                "STREAMER_HISTORY_CHANGELOG_TOPIC it is a directory of one SQLite file per partition"
            )


def masked(kafka: Mapping[str, str]) -> dict[str, str]:
    """librdkafka properties with secret values replaced by ``***``."""
    return {k: ("***" if k in SECRET_KAFKA_KEYS else v) for k, v in kafka.items()}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"STREAMER_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"STREAMER_CONFIG_FILE: {path} is not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"STREAMER_CONFIG_FILE: {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _resolve_secret_files(kafka: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in kafka.items():
        if key.endswith(".file") and key[: -len(".file")] in SECRET_KAFKA_KEYS | {"sasl.username"}:
            target = key[: -len(".file")]
            try:
                out[target] = Path(value).read_text().strip()
            except OSError as exc:
                env_name = KAFKA_PREFIX + key.upper().replace(".", "_")
                raise ConfigError(f"{env_name}: cannot read secret file {value!r}: {exc.strerror}") from None
        else:
            out[key] = value
    return out


def _convert(name: str, kind: Any, value: Any) -> Any:
    """Convert a raw (string or YAML) value to the field's type, naming the setting on error."""
    setting = ENV_PREFIX + name.upper()
    text = str(kind)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{setting}: must not be empty")
    try:
        if text.startswith("list"):
            items = value if isinstance(value, list) else str(value).split(",")
            return [str(v).strip() for v in items if str(v).strip()]
        if text.startswith("bool"):
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if text.startswith("int"):
            if isinstance(value, bool):
                raise ValueError
            if not str(value).strip():
                if "None" in text:
                    return None
                raise ValueError
            return int(value)
        if text.startswith("float"):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if text.startswith("dict"):
            raise ValueError
        return str(value) if str(value) != "" or "None" not in text else None
    except (TypeError, ValueError):
        expected = text.split(" |")[0].replace("list[str]", "comma-separated list").replace("int", "integer")
        raise ConfigError(f"{setting}: expected {expected}, got {value!r}") from None
