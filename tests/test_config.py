"""Configuration: STREAMER_* variables, a YAML file, librdkafka pass-through, secrets."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from confluent_kafka import Producer

from streamer import kafka_local
from streamer.config import Config, ConfigError

BASE = {"STREAMER_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "STREAMER_INPUT_TOPICS": "lsst-alerts, ztf-alerts"}


def test_environment_builds_a_typed_config() -> None:
    config = Config.load(
        {
            **BASE,
            "STREAMER_BATCH_MAX_MESSAGES": "250",
            "STREAMER_BATCH_MAX_WAIT_S": "0.5",
            "STREAMER_DELIVERY": "at-least-once",
            "STREAMER_EXIT_WHEN_CAUGHT_UP": "yes",
            "STREAMER_INSTANCE_ID": "streamer-0",
        }
    )
    assert config.input_topics == ["lsst-alerts", "ztf-alerts"]
    assert config.batch_max_messages == 250 and config.batch_max_wait_s == 0.5
    assert config.delivery == "at-least-once" and config.exit_when_caught_up is True
    assert config.transactional_id == "streamer-streamer-0"


def test_yaml_file_with_environment_overrides(tmp_path) -> None:
    file = tmp_path / "streamer.yaml"
    file.write_text(
        "bootstrap_servers: broker:9092\ninput_pattern: 'alerts-.*'\nbatch_max_messages: 100\n"
        "kafka:\n  security.protocol: SASL_SSL\n  sasl.mechanism: SCRAM-SHA-512\n"
    )
    config = Config.load({"STREAMER_BATCH_MAX_MESSAGES": "42"}, file=file)
    assert config.bootstrap_servers == "broker:9092" and config.input_pattern == "alerts-.*"
    assert config.batch_max_messages == 42
    assert config.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}


def test_kafka_properties_pass_through_and_secrets_come_from_files(tmp_path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-value\n")
    config = Config.load(
        {
            **BASE,
            "STREAMER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMER_KAFKA_SASL_USERNAME": "broker-user",
            "STREAMER_KAFKA_SASL_PASSWORD_FILE": str(secret),
        }
    )
    assert config.kafka["security.protocol"] == "SASL_SSL"
    assert config.kafka["sasl.password"] == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config)
    assert "'sasl.password': '***'" in repr(config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMER_INPUT_TOPICS": "a"}, "STREAMER_BOOTSTRAP_SERVERS: required"),
        ({"STREAMER_BOOTSTRAP_SERVERS": "b:1"}, "STREAMER_INPUT_TOPICS: give input topics"),
        (
            {**BASE, "STREAMER_BATCH_MAX_MESSAGES": "many"},
            "STREAMER_BATCH_MAX_MESSAGES: expected integer, got 'many'",
        ),
        ({**BASE, "STREAMER_BATCH_MAX_MESSAGES": "0"}, "STREAMER_BATCH_MAX_MESSAGES: must be at least 1"),
        ({**BASE, "STREAMER_DELIVERY": "twice"}, "STREAMER_DELIVERY: expected exactly-once or at-least-once"),
        ({**BASE, "STREAMER_MODEL": "gpt"}, "STREAMER_MODEL: expected one of atcat"),
        (
            {**BASE, "STREAMER_MODEL_FILE": "/nonexistent.onnx"},
            "STREAMER_MODEL_FILE: '/nonexistent.onnx' is not a file",
        ),
        ({**BASE, "STREAMER_EXIT_WHEN_CAUGHT_UP": "perhaps"}, "STREAMER_EXIT_WHEN_CAUGHT_UP: expected bool"),
        ({**BASE, "STREAMER_METRICS_PORT": "70000"}, "STREAMER_METRICS_PORT: not a TCP port"),
        ({**BASE, "STREAMER_MAX_MESSAGE_BYTES": "0"}, "STREAMER_MAX_MESSAGE_BYTES: must be at least 1"),
        (
            {**BASE, "STREAMER_DEAD_LETTER_MAX_BYTES": "-1"},
            "STREAMER_DEAD_LETTER_MAX_BYTES: must not be negative",
        ),
        ({**BASE, "STREAMER_KAFKA_GROUP_ID": "x"}, "STREAMER_KAFKA_GROUP_ID: set by streamer itself"),
        (
            {**BASE, "STREAMER_ONNX_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"},
            "STREAMER_ONNX_PROVIDERS: CUDAExecutionProvider not in this onnxruntime build",
        ),
        ({**BASE, "STREAMER_ONNX_THREADS": "0"}, "STREAMER_ONNX_THREADS: must be at least 1"),
        ({**BASE, "STREAMER_METRICS_PORT": ""}, "STREAMER_METRICS_PORT: expected integer, got ''"),
        ({**BASE, "STREAMER_BATCH_MAX_MESSAGES": " "}, "STREAMER_BATCH_MAX_MESSAGES: expected integer"),
        ({**BASE, "STREAMER_BATCH_MAX_WAIT_S": "nan"}, "STREAMER_BATCH_MAX_WAIT_S: expected float"),
        ({**BASE, "STREAMER_BROKER_OUTAGE_S": "inf"}, "STREAMER_BROKER_OUTAGE_S: expected float, got 'inf'"),
        ({**BASE, "STREAMER_BROKER_OUTAGE_S": "0"}, "STREAMER_BROKER_OUTAGE_S: must be positive"),
        ({**BASE, "STREAMER_LOG_LEVEL": "verbose"}, "STREAMER_LOG_LEVEL: expected DEBUG, INFO, WARNING"),
        ({**BASE, "STREAMER_DECODE_PROCESSES": "-1"}, "STREAMER_DECODE_PROCESSES: must not be negative"),
        ({**BASE, "STREAMER_CURVE_MEMO_BYTES": "-5"}, "STREAMER_CURVE_MEMO_BYTES: must not be negative"),
        (
            {**BASE, "STREAMER_KAFKA_SASL_PASSWORD_FILE": "/nonexistent"},
            "STREAMER_KAFKA_SASL_PASSWORD_FILE: cannot read",
        ),
    ],
)
def test_errors_name_the_bad_setting(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(env)


def test_unknown_setting_in_file_is_named(tmp_path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("bootstrap_servers: b:1\ninput_topics: [a]\nbatch_size: 3\n")
    with pytest.raises(ConfigError, match="batch_size: unknown setting"):
        Config.load({}, file=file)


def test_onnx_providers_threads_and_batch_size_reach_the_model_session(atcat_file) -> None:
    """The GPU path's settings (providers, CPU here; ONNX batch size in windows) and the
    intra-op thread count a pod's CPU limit calls for."""
    from streamer.service import Service

    config = Config.load(
        {
            **BASE,
            "STREAMER_MODEL_FILE": str(atcat_file),
            "STREAMER_ONNX_PROVIDERS": "CPUExecutionProvider",
            "STREAMER_ONNX_BATCH_SIZE": "256",
            "STREAMER_ONNX_THREADS": "3",
        }
    )
    consumer, _, pipeline, _, history = Service(config)._build()
    consumer.close()
    history.close()
    model = pipeline.embedder.model
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert model.batch_size == 256
    assert model.session.get_session_options().intra_op_num_threads == 3


def test_a_requested_provider_that_does_not_start_is_an_error_not_a_cpu_fallback(atcat_file) -> None:
    """onnxruntime only warns and runs on the CPU when a requested provider is not there
    (or onnxruntime-gpu cannot load CUDA); the model library must refuse instead."""
    import onnxruntime

    from streamer.embed import ModelUnavailable
    from streamer.embedder import load_model

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),
        pytest.raises(
            ModelUnavailable,
            match=r"did not start CUDAExecutionProvider .* came up on CPUExecutionProvider",
        ),
    ):
        load_model(
            "atcat",
            model_file=atcat_file,
            ort_session_kwargs={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**BASE}, "needs exactly one input topic"),
        (
            {**BASE, "STREAMER_INPUT_TOPICS": "", "STREAMER_INPUT_PATTERN": "a.*"},
            "needs exactly one input topic",
        ),
        ({**BASE, "STREAMER_INPUT_TOPICS": "history"}, "'history' is also the input, output or dead-letter"),
    ],
)
def test_history_changelog_needs_one_input_topic_and_a_topic_of_its_own(env, message) -> None:
    with pytest.raises(ConfigError, match=f"STREAMER_HISTORY_CHANGELOG_TOPIC: {message}"):
        Config.load({**env, "STREAMER_HISTORY_CHANGELOG_TOPIC": "history"})


def test_history_changelog_keeps_one_store_file_per_partition_in_a_directory(tmp_path) -> None:
    env = {**BASE, "STREAMER_INPUT_TOPICS": "alerts", "STREAMER_HISTORY_CHANGELOG_TOPIC": "history"}
    assert Config.load({**env, "STREAMER_HISTORY_PATH": str(tmp_path)}).history_changelog_topic == "history"
    (tmp_path / "h.sqlite").write_bytes(b"")
    with pytest.raises(
        ConfigError, match=r"STREAMER_HISTORY_PATH: .* is a file; with STREAMER_HISTORY_CHANGELOG"
    ):
        Config.load({**env, "STREAMER_HISTORY_PATH": str(tmp_path / "h.sqlite")})


def test_an_empty_optional_integer_means_unset() -> None:
    assert Config.load({**BASE, "STREAMER_ONNX_THREADS": ""}).onnx_threads is None


def test_the_local_brokers_jar_cache_variable_is_not_taken_for_a_librdkafka_property(tmp_path) -> None:
    """``make demo`` and the tests load the whole environment: moving the jar cache must
    not hand librdkafka an unknown property (``STREAMER_KAFKA_*`` pass through)."""
    env = {**BASE, kafka_local.CACHE_ENV: str(tmp_path)}
    with mock.patch.dict(os.environ, {kafka_local.CACHE_ENV: str(tmp_path)}):
        assert kafka_local.default_cache_dir() == tmp_path
    config = Config.load(env)
    assert config.kafka == {}
    Producer({"bootstrap.servers": config.bootstrap_servers, **config.kafka})
