"""Command line: ``streamer replay`` (archives -> file), ``run`` and ``repartition`` (Kafka)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streamer.alerts import Framing
from streamer.embedder import MODELS, LightCurveEmbedder, load_model

if TYPE_CHECKING:
    from streamer.config import Config

#: Exit status of a replay in which some alerts were rejected (the summary says how many).
EXIT_REJECTED = 3


@click.group()
@click.version_option(package_name="streamer")
def main() -> None:
    """Real-time embeddings of astronomical alert streams."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    "output",
    required=True,
    help="Output file (.parquet, .avro, .jsonl) or - for JSON lines on stdout.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "avro", "jsonl"]),
    help="Output format (default: from the extension).",
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(list(MODELS)),
    default="atcat",
    show_default=True,
    help="Model family.",
)
@click.option(
    "--model-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="STREAMER_MODEL_FILE",
    help="Local ONNX file instead of the HuggingFace Hub [env: STREAMER_MODEL_FILE].",
)
@click.option(
    "--model-output", help="Model output: last/mean/sequence (ATCAT), mean/max/sequence (Astromer)."
)
@click.option(
    "--reduction",
    default="non-overlapping-windows",
    show_default=True,
    help="Reduction, or several separated by commas.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random-subsample.")
@click.option(
    "--onnx-batch-size", type=int, help="Windows per onnxruntime call (default: measured per model)."
)
@click.option(
    "--history",
    "history_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite history file (default: in memory).",
)
@click.option(
    "--max-points", type=int, default=10_000, show_default=True, help="Cap on stored points per object."
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Avro file for rejected alerts with their bytes (default: OUTPUT.rejects.avro).",
)
@click.option(
    "--framing",
    type=click.Choice([f.value for f in Framing]),
    default="auto",
    show_default=True,
)
@click.option(
    "--schemaless-schema",
    default="elasticc.v0_9",
    show_default=True,
    help="Schema of schemaless messages: built-in name or .avsc path.",
)
@click.option("--batch-size", type=int, default=500, show_default=True, help="Alerts per micro-batch.")
@click.option(
    "--decode-processes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Decode in this many worker processes (0: in this one).",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal)."
)
def replay(
    paths: tuple[Path, ...],
    output: str,
    fmt: str | None,
    model_name: str,
    model_file: Path | None,
    model_output: str | None,
    reduction: str,
    seed: int,
    onnx_batch_size: int | None,
    history_path: Path | None,
    max_points: int,
    rejects_path: Path | None,
    framing: str,
    schemaless_schema: str,
    batch_size: int,
    decode_processes: int,
    progress: bool | None,
) -> None:
    """Embed archived alerts (directories, .avro, .avro.gz, ZTF .tar.gz) into a file.

    Exit status: 0 when every alert was embedded, 3 when some were rejected (see the
    summary and the rejects file), 1 on errors.
    """
    from tqdm import tqdm

    from streamer.alerts import AlertDecoder
    from streamer.decode_pool import DecodePool
    from streamer.embed import ModelUnavailable
    from streamer.history import MemoryHistoryStore, SQLiteHistoryStore
    from streamer.pipeline import Pipeline
    from streamer.replay import replay as run_replay
    from streamer.sinks import RejectsFile, open_record_sink
    from streamer.sources import iter_archive_messages
    from streamer.sources.archive import ArchiveError

    reductions = [r.strip() for r in reduction.split(",") if r.strip()]
    try:
        model = load_model(
            model_name,
            model_file=model_file,
            output=model_output,
            reduction=reductions if len(reductions) > 1 else reductions[0],
            reduction_kwargs={"rng": seed},
            batch_size=onnx_batch_size,
        )
        decoder_kwargs: dict[str, Any] = {"framing": framing, "schemaless_schema": schemaless_schema}
        decoder = AlertDecoder(**decoder_kwargs)
    except (ValueError, ModelUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    name = model_name if model_file is None else f"{model_name}:{model_file.name}"
    history = (
        SQLiteHistoryStore(history_path, max_points_per_object=max_points)
        if history_path
        else MemoryHistoryStore(max_points_per_object=max_points)
    )
    if rejects_path is None:
        rejects_path = Path("rejects.avro" if output == "-" else f"{output}.rejects.avro")
    show = sys.stderr.isatty() if progress is None else progress
    pool = DecodePool(decode_processes, decoder_kwargs) if decode_processes else None
    with history, open_record_sink(output, fmt) as sink, pool or contextlib.nullcontext():
        rejects = RejectsFile(rejects_path)
        bar = tqdm(unit="msg", disable=not show, file=sys.stderr)
        try:
            summary = run_replay(
                iter_archive_messages(paths),
                Pipeline(decoder, history, LightCurveEmbedder(model, name), decode_pool=pool),
                sink,
                rejects=rejects,
                batch_size=batch_size,
                on_batch=lambda batch, outcome: bar.update(len(batch)),
            )
        except ArchiveError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            bar.close()
            rejects.close()
    for line in summary.lines():
        click.echo(line, err=True)
    if summary.rejected:
        click.echo(f"rejects    written to {rejects_path}", err=True)
        sys.exit(EXIT_REJECTED)


def _time_ms(value: str | None, setting: str) -> int | None:
    """Milliseconds since the epoch from an integer or an ISO-8601 time (UTC if no zone)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither milliseconds nor an ISO-8601 time", param_hint=setting
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _consumer_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of the Kafka consumers (``run``, ``repartition``): file, where to start and stop."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="YAML configuration file [env: STREAMER_CONFIG_FILE].",
        ),
        click.option(
            "--from-beginning", is_flag=True, help="Replay the input topics from their first offset."
        ),
        click.option("--from-time", help="Replay from this time (ISO-8601 or ms since the epoch)."),
        click.option("--until-time", help="Stop each partition at this time and exit when all are done."),
        click.option(
            "--exit-when-caught-up",
            is_flag=True,
            help="Exit once every assigned partition is consumed to its end.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load_config(
    config_file: Path | None,
    from_beginning: bool,
    from_time: str | None,
    until_time: str | None,
    exit_when_caught_up: bool,
) -> Config:
    """The configuration with the command line's overrides; exits with status 2 when it is bad."""
    from streamer.config import Config, ConfigError

    try:
        config = Config.load(file=config_file)
    except ConfigError as exc:
        click.echo(f"streamer: configuration error: {exc}", err=True)
        sys.exit(2)
    if from_beginning:
        config.start_from = "beginning"
    if from_time is not None:
        config.start_from, config.start_time_ms = "time", _time_ms(from_time, "--from-time")
    config.until_time_ms = _time_ms(until_time, "--until-time") if until_time else config.until_time_ms
    config.exit_when_caught_up = exit_when_caught_up or config.exit_when_caught_up
    return config


@main.command()
@_consumer_options
def run(**options: Any) -> None:
    """Consume alerts from Kafka and publish embeddings (configured by STREAMER_* variables).

    Exit status: 0 after SIGTERM/SIGINT (the current batch is committed first) or when
    caught up; 1 on a fatal error (authentication, configuration, broker refusal); 2 on a
    configuration error.
    """
    from streamer.embed import ModelUnavailable
    from streamer.service import run_service

    config = _load_config(**options)
    try:
        status = run_service(config)
    except ModelUnavailable as exc:
        click.echo(f"streamer: model unavailable: {exc}", err=True)
        sys.exit(1)
    sys.exit(status)


@main.command()
@_consumer_options
def repartition(**options: Any) -> None:
    """Re-key alert topics by object id into a photometry topic (STREAMER_* variables).

    Decodes every alert of STREAMER_INPUT_TOPICS (framing STREAMER_FRAMING) and publishes
    its compact photometry record (schemas/photometry.avsc) to STREAMER_OUTPUT_TOPIC keyed
    by object id, so that each partition holds all the alerts of its objects; rejected
    messages go to STREAMER_DEAD_LETTER_TOPIC. It needs a STREAMER_GROUP_ID of its own.
    Consume the output with STREAMER_FRAMING=photometry streamer run.

    Exit status: as for run.
    """
    from streamer.config import ConfigError
    from streamer.repartition import run_repartition

    config = _load_config(**options)
    try:
        status = run_repartition(config)
    except ConfigError as exc:
        click.echo(f"streamer: configuration error: {exc}", err=True)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
