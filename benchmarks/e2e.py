"""End-to-end throughput: the engine's ceiling against ``streamer run`` through a real broker.

Starts the local Kafka broker (or uses ``--bootstrap``), publishes N Rubin-framed alerts
with realistic histories, and for each model prints, in one run:

  (a) ceiling   the many-curve embedding path (window cache and curve memo as the service
                has them) on exactly the light curves the service embeds, batch by batch:
                no Kafka, no decoding, no history store
  (b) e2e EOS   alerts/s and embeddings/s of ``streamer run`` in exactly-once mode
  (c) e2e ALOS  the same in at-least-once mode
  (d) stages    per-stage time shares of the exactly-once run (decode, history, embed,
                produce, commit; embed runs in its own thread, overlapping the others)
  (e) replicas  replicas of this size for 10 million alerts a night, and for a burst of
                10,000 alerts within 40 seconds
  (f) CPU       CPU time per alert of the ceiling (the model alone), of the service in all
                and of the broker (when it is the local one) over the exactly-once run; the
                rate the machine's cores allow at that cost, and the model's share of the
                CPU, which bounds b/a when the model alone can keep every core busy
  (g) 2 stages  the scale-out layout of the README: ``streamer repartition`` (exactly-once,
                once per stream) re-publishes the alerts as compact photometry records, and
                ``streamer run`` embeds those (exactly-once, best of --rounds): each stage's
                alerts/s and CPU per alert, b'/a of the embedding stage and the model's
                share of that stage's CPU, which bounds it (as in (f)), and the replicas
                of each stage.
                Both stages share this machine's cores here, in turn; deployed, they run
                side by side on their own (--no-two-stage skips it)
  (h) decoding  with ``--decode-processes K``: (b) again with K decoding worker processes
      workers   (``STREAMER_DECODE_PROCESSES``), in the same alternating rounds as (b) and
                (c), and its ratio to (b); with (g), the repartitioner with K workers too,
                and its ratio to the one of (g)

and the ratios b/a (target >= 0.85 on the sized models) and b/c (EOS costs at most 10%).
The service runs ``--rounds`` times per mode (default 2), alternating which mode goes
first; each mode reports its best round.
Throughput is counted from the first consumed batch to the last commit, read from the
service's own summary; model loading and broker start-up are not counted. "rejected" are
dead letters: with Astromer (magnitudes), alerts whose curve has no positive flux.

The stream: objects observed over a year on nights about three days apart, one or two
visits a night in Rubin's bands, transients and periodic variables; a point is a
detection at S/N >= 5 (it triggers an alert) and forced photometry otherwise. History
lengths run from a few points to 400; three cutouts of 12 kB each. Alerts are published
in time order to one partition. Generated once per (N, seed) into ``--cache``.

The ONNX settings of the environment (``STREAMER_ONNX_PROVIDERS``, ``STREAMER_ONNX_BATCH_SIZE``,
``STREAMER_ONNX_THREADS``) apply to the ceiling and to the service alike; (a) names the
execution providers in use, the windows per onnxruntime run and the share of them that is
padding (the last run of a batch is filled up to the batch size). On a GPU machine, with
onnxruntime-gpu installed:

    STREAMER_ONNX_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    STREAMER_ONNX_BATCH_SIZE=256 python benchmarks/e2e.py --models astromer1-sized --decode-processes 4

``--memory N`` adds a run of N alerts (default 100,000) with the small model, reporting
the service's peak RSS after 20,000 alerts and at the end (window cache 32 MiB and curve
memo 16 MiB, so that both are full long before 20,000 alerts; histories of 3 to 60 points,
to keep generating 100,000 alerts within minutes).

    python benchmarks/e2e.py                          # 20,000 alerts, all three models
    python benchmarks/e2e.py --alerts 3000 --models atcat-sized
    python benchmarks/e2e.py --models small --memory 100000
    python benchmarks/e2e.py --models small --decode-processes 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer import kafka_local
from streamer.alerts import AlertDecoder, synthetic
from streamer.config import Config
from streamer.embed import synthetic as models
from streamer.embedder import LightCurveEmbedder, load_model
from streamer.history import MemoryHistoryStore
from streamer.photometry import BANDS, POINT_DTYPE, PointKind, flux_to_mag
from streamer.pipeline import Message, Pipeline
from streamer.service import onnx_session_kwargs

CUTOUT_BYTES = (12_000, 12_000, 12_000)
MAX_POINTS = 400
MEMORY_MAX_POINTS = 60
BAND_WEIGHTS = np.array([0.05, 0.2, 0.25, 0.25, 0.15, 0.1])  # u g r i z y
BATCH = 500
WINDOW_CACHE = 256 << 20
CURVE_MEMO = 64 << 20
NIGHT_ALERTS = 10_000_000
BURST_ALERTS, BURST_SECONDS = 10_000, 40.0


# ----------------------------------------------------------------------------- stream
def object_points(object_id: int, rng: np.random.Generator, max_points: int = MAX_POINTS) -> np.ndarray:
    """One object's photometry over a year (POINT_DTYPE, time-ordered)."""
    n = int(np.exp(rng.uniform(np.log(3), np.log(max_points))))
    nights = np.cumsum(rng.exponential(3.0, n)) + rng.uniform(0, 365 - min(3.0 * n, 300))
    second = rng.random(n) < 0.5  # a second visit 30 minutes later, same night
    time = 61000.0 + np.sort(nights + second * 0.021 + rng.uniform(0, 0.3, n))
    if rng.random() < 0.5:  # transient: a rise and a slower fall
        t0, peak = rng.uniform(time[0], time[-1]), 10 ** rng.uniform(3.3, 4.7)
        width = np.where(time < t0, rng.uniform(5, 20), rng.uniform(20, 60))
        flux = peak * np.exp(-0.5 * ((time - t0) / width) ** 2)
    else:  # periodic variable, as a difference flux around the template
        amplitude, period = 10 ** rng.uniform(3.0, 4.3), rng.uniform(0.3, 50)
        flux = amplitude * np.sin(2 * np.pi * time / period + rng.uniform(0, 6.3))
    flux_err = 10 ** rng.uniform(1.7, 2.5, n)
    flux = flux + rng.normal(0, 1, n) * flux_err
    points = np.zeros(n, dtype=POINT_DTYPE)
    points["source_id"] = object_id * 1000 + np.arange(n)
    points["time"], points["flux"], points["flux_err"] = time, flux, flux_err
    points["mag"], points["mag_err"] = flux_to_mag(flux, flux_err)
    points["band"] = rng.choice(len(BANDS), size=n, p=BAND_WEIGHTS)
    detected = np.abs(flux) >= 5 * flux_err
    points["kind"] = np.where(detected, PointKind.DETECTION, PointKind.FORCED)
    points["known_at"] = time
    return points


def object_alerts(object_id: int, max_points: int = MAX_POINTS) -> list[tuple[float, bytes]]:
    """(alert time, Rubin-framed bytes) for every detection of one object."""
    points = object_points(object_id, np.random.default_rng(object_id), max_points)
    out = []
    for i in np.flatnonzero(points["kind"] == PointKind.DETECTION):
        history = points[:i]
        record = synthetic.make_lsst_alert(
            object_id,
            int(points["source_id"][i]),
            points[i],
            history[history["kind"] == PointKind.DETECTION],
            history[history["kind"] == PointKind.FORCED],
            cutout_bytes=CUTOUT_BYTES,
            seed=int(points["source_id"][i]),
        )
        out.append((float(points["time"][i]), synthetic.encode_confluent(record)))
    return out


def expected_alerts(object_id: int, max_points: int) -> int:
    points = object_points(object_id, np.random.default_rng(object_id), max_points)
    return int(np.count_nonzero(points["kind"] == PointKind.DETECTION))


@dataclass
class Stream:
    """Alerts on disk: ``data`` holds the bytes, ``index`` (time, offset, length) in time order."""

    data: Path
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[bytes]:
        with self.data.open("rb") as f:
            for _, offset, length in self.index:
                f.seek(int(offset))
                yield f.read(int(length))


def generate(n_alerts: int, cache: Path, seed: int = 1, max_points: int = MAX_POINTS) -> Stream:
    """The first ``n_alerts`` alerts, in time order, of enough objects (cached on disk)."""
    base = cache / (f"rubin-{n_alerts}-{seed}" + (f"-max{max_points}" if max_points != MAX_POINTS else ""))
    data, index_path = base.with_suffix(".bin"), base.with_suffix(".npy")
    if data.exists() and index_path.exists():
        return Stream(data, np.load(index_path))
    cache.mkdir(parents=True, exist_ok=True)
    object_ids, total = [], 0
    while total < n_alerts * 1.02:  # a little more: the latest alerts are cut off
        object_id = seed * 10_000_000 + len(object_ids) + 1
        object_ids.append(object_id)
        total += expected_alerts(object_id, max_points)
    rows = []
    tmp = data.with_suffix(".tmp")
    with tmp.open("wb") as f, multiprocessing.Pool(os.cpu_count()) as pool:
        done = 0
        make = functools.partial(object_alerts, max_points=max_points)
        for alerts in pool.imap_unordered(make, object_ids, chunksize=8):
            for t, payload in alerts:
                rows.append((t, f.tell(), len(payload)))
                f.write(payload)
            done += len(alerts)
            print(f"\r  generating alerts: {done}/{total}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    index = np.array(sorted(rows), dtype=float)[:n_alerts]
    tmp.rename(data)
    np.save(index_path, index)
    return Stream(data, index)


def describe(stream: Stream) -> str:
    decoder = AlertDecoder("confluent")
    sample = [a for i, a in enumerate(stream) if i % max(len(stream) // 500, 1) == 0]
    lengths = np.array([len(decoder.decode(a).points) for a in sample])
    sizes = stream.index[:, 2]
    return (
        f"{len(stream)} alerts, mean {sizes.mean() / 1e3:.0f} kB; history points per alert: "
        f"median {np.median(lengths):.0f}, mean {lengths.mean():.0f}, max {lengths.max()} (sampled)"
    )


def publish(bootstrap: str, topic: str, stream: Stream) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none", "acks": "all"}
    )
    for i, payload in enumerate(stream):
        while True:
            try:
                producer.produce(topic, payload)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("publishing did not finish")


# ----------------------------------------------------------------------------- engine
@dataclass
class Model:
    label: str
    family: str
    path: Path
    sized: bool


def build_models(names: list[str], directory: Path) -> list[Model]:
    builders = {
        "astromer1-sized": ("astromer1", models.build_astromer1_sized, True),
        "atcat-sized": ("atcat", models.build_atcat_sized, True),
        "small": ("atcat", lambda p: models.build_atcat(p, n_layers=0), False),
    }
    out = []
    for name in names:
        family, build, sized = builders[name]
        out.append(Model(name, family, Path(build(directory / f"{name}.onnx")), sized))
    return out


def onnx_settings() -> tuple[int | None, dict | None]:
    """ONNX batch size and ``InferenceSession`` arguments from this environment's
    ``STREAMER_ONNX_*`` settings, read as the service (which inherits the environment) reads
    them, so that the ceiling runs on the same execution provider as (b) and (c)."""
    config = Config.load(
        {
            **os.environ,
            "STREAMER_BOOTSTRAP_SERVERS": "unused:9092",
            "STREAMER_INPUT_TOPICS": "unused",
            "STREAMER_OUTPUT_TOPIC": "unused",
        }
    )
    return config.onnx_batch_size, onnx_session_kwargs(config)


def engine_ceiling(model: Model, stream: Stream) -> dict[str, float]:
    """Embedding time alone, on the curves the service embeds, in its batches."""
    batch_size, session_kwargs = onnx_settings()
    session = load_model(
        model.family,
        model_file=model.path,
        cache_bytes=WINDOW_CACHE,
        batch_size=batch_size,
        ort_session_kwargs=session_kwargs,
    )
    embedder = LightCurveEmbedder(session, model.label, memo_bytes=CURVE_MEMO)
    pipeline = Pipeline(AlertDecoder("confluent"), MemoryHistoryStore(), embedder)
    messages = [Message(a, str(i)) for i, a in enumerate(stream)]
    prepared = [pipeline.prepare(messages[i : i + BATCH]) for i in range(0, len(messages), BATCH)]
    seconds, cpu, records = 0.0, 0.0, 0
    for batch in prepared:
        t0, c0 = time.perf_counter(), time.process_time()
        outcome = pipeline.embed(batch)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
        records += len(outcome.records)
    return {
        "alerts/s": len(stream) / seconds,
        "embeddings/s": records / seconds,
        "windows": session.windows_computed,
        # Every onnxruntime run gets batch_size windows, the last of a batch padded.
        "padding": 1 - session.windows_computed / max(session.onnx_runs * session.batch_size, 1),
        "providers": ",".join(session.session.get_providers()),
        "batch_size": session.batch_size,
        "seconds": seconds,
        "cpu_ms/alert": 1e3 * cpu / len(stream),
    }


# ---------------------------------------------------------------------------- service
@dataclass
class ServiceRun:
    summary: dict
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (consumed, VmHWM kB)
    broker_cpu: float = 0.0  # CPU seconds of the broker's JVM from the first consumed alert to exit

    @property
    def busy(self) -> float:
        return float(self.summary["busy_seconds"])

    def rate(self, key: str) -> float:
        return self.summary[key] / self.busy

    @property
    def cpu_ms_per_alert(self) -> float:
        """CPU milliseconds an alert (all threads, decoding workers too) over the busy span."""
        return 1e3 * self.summary["cpu_seconds"] / self.summary["alerts"]

    @property
    def broker_ms_per_alert(self) -> float:
        """The broker's CPU milliseconds an alert of this run (0: not measured)."""
        return 1e3 * self.broker_cpu / self.summary["alerts"]

    def peak_rss_mb_at(self, consumed: int) -> float:
        after = [hwm for n, hwm in self.rss_samples if n >= consumed]
        return (after[0] if after else self.rss_samples[-1][1]) / 1024


def _consumed(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return -1
    return int(
        sum(float(v) for v in re.findall(r"^streamer_alerts_consumed_total\{[^}]*\} (\S+)", text, re.M))
    )


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a running process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def run_service(
    bootstrap: str,
    topic: str,
    model: Model,
    delivery: str,
    workdir: Path,
    caches: tuple[int, int] = (WINDOW_CACHE, CURVE_MEMO),
    broker_pid: int | None = None,
    framing: str = "auto",
    decode_processes: int = 0,
) -> ServiceRun:
    """``streamer run`` over ``topic`` until caught up."""
    run_id = f"{model.label}-{delivery}-{time.monotonic_ns()}"
    env = {
        "STREAMER_DELIVERY": delivery,
        "STREAMER_MODEL": model.family,
        "STREAMER_MODEL_FILE": str(model.path),
        "STREAMER_HISTORY_PATH": str(workdir / f"{run_id}.sqlite"),
        "STREAMER_WINDOW_CACHE_BYTES": str(caches[0]),
        "STREAMER_CURVE_MEMO_BYTES": str(caches[1]),
        "STREAMER_FRAMING": framing,
        "STREAMER_DECODE_PROCESSES": str(decode_processes),
    }
    return run_streamer("run", bootstrap, topic, f"out-{run_id}", run_id, env, broker_pid)


def run_repartition(
    bootstrap: str, topic: str, broker_pid: int | None, decode_processes: int = 0
) -> tuple[str, ServiceRun]:
    """``streamer repartition`` (exactly-once) of ``topic`` into a new photometry topic."""
    run_id = f"repartition-{time.monotonic_ns()}"
    target = f"photometry-{run_id}"
    env = {"STREAMER_DECODE_PROCESSES": str(decode_processes)}
    run = run_streamer("repartition", bootstrap, topic, target, run_id, env, broker_pid)
    return target, run


def run_streamer(
    command: str,
    bootstrap: str,
    topic: str,
    target: str,
    run_id: str,
    env: dict[str, str],
    broker_pid: int | None,
) -> ServiceRun:
    """Run ``streamer <command>`` from ``topic`` to ``target`` until caught up; its summary,
    peak-RSS samples and the broker's CPU time meanwhile."""
    port = kafka_local.free_port()
    kafka_local.create_topics(bootstrap, {target: 1, f"dlq-{run_id}": 1})
    env = {
        **os.environ,
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_INPUT_TOPICS": topic,
        "STREAMER_OUTPUT_TOPIC": target,
        "STREAMER_DEAD_LETTER_TOPIC": f"dlq-{run_id}",
        "STREAMER_GROUP_ID": f"bench-{run_id}",
        "STREAMER_INSTANCE_ID": run_id,
        "STREAMER_BATCH_MAX_MESSAGES": str(BATCH),
        "STREAMER_BATCH_MAX_WAIT_S": "0.5",
        "STREAMER_EXIT_WHEN_CAUGHT_UP": "true",
        "STREAMER_METRICS_PORT": str(port),
        "STREAMER_LOG_FORMAT": "json",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", command], env=env, stderr=subprocess.PIPE, text=True
    )
    samples: list[tuple[int, int]] = []
    broker_cpu_at_start: list[float] = []

    def watch() -> None:
        while proc.poll() is None:
            hwm, consumed = _hwm_kb(proc.pid), _consumed(port)
            if hwm and consumed >= 0:
                samples.append((consumed, hwm))
            if consumed > 0 and not broker_cpu_at_start:
                broker_cpu_at_start.append(_cpu_seconds(broker_pid))
            time.sleep(0.1 if not broker_cpu_at_start else 0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert proc.stderr is not None
    summary = None
    last_lines: collections.deque[str] = collections.deque(maxlen=40)
    for line in proc.stderr:
        last_lines.append(line)
        if '"stopped:' in line:
            summary = json.loads(line)
        elif '"level": "ERROR"' in line:
            print("   ", line.rstrip(), file=sys.stderr)
    code = proc.wait()
    broker_cpu = _cpu_seconds(broker_pid)
    watcher.join()
    if code != 0 or summary is None:
        raise RuntimeError(f"streamer {command} exited with {code}; its last lines:\n" + "".join(last_lines))
    return ServiceRun(summary, samples, broker_cpu - broker_cpu_at_start[0] if broker_cpu_at_start else 0.0)


# ------------------------------------------------------------------------------- main
def report(
    model: Model, ceiling: dict[str, float], eos: ServiceRun, alos: ServiceRun, night_hours: float
) -> None:
    a, b, c = ceiling["embeddings/s"], eos.rate("embeddings"), alos.rate("embeddings")
    print(f"\n== {model.label} ({'sized' if model.sized else 'small signature'}) ==")
    print(
        f"(a) ceiling   {ceiling['alerts/s']:8.1f} alerts/s {a:8.1f} embeddings/s  "
        f"({ceiling['windows']} windows; {ceiling['providers']}, {ceiling['batch_size']} windows a run, "
        f"{100 * ceiling['padding']:.0f}% of them padding)"
    )
    for tag, run in (("(b) e2e EOS ", eos), ("(c) e2e ALOS", alos)):
        s = run.summary
        print(
            f"{tag}  {run.rate('alerts'):8.1f} alerts/s {run.rate('embeddings'):8.1f} embeddings/s  "
            f"({s['alerts']} alerts, {s['embeddings']} records, {s['rejected']} rejected, "
            f"{s['batches']} batches, {run.busy:.1f} s)"
        )
    stages = eos.summary["stage_seconds"]
    work = {k: v for k, v in stages.items() if k != "wait"}
    total = sum(work.values())
    shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in work.items())
    print(
        f"(d) stages    {shares} of {total:.1f} s busy; wall {eos.busy:.1f} s; "
        f"main thread waited {stages.get('wait', 0):.1f} s for the model"
    )
    night, burst = replicas(eos.rate("alerts"), night_hours)
    print(
        f"(e) replicas  {night} for 10M alerts in a {night_hours:g} h night "
        f"({NIGHT_ALERTS / (night_hours * 3600):.0f} alerts/s), {burst} for "
        f"{BURST_ALERTS} alerts in {BURST_SECONDS:g} s ({BURST_ALERTS / BURST_SECONDS:.0f} alerts/s)"
    )
    cpu_report(ceiling, eos)
    verdict = "ok" if b / a >= 0.85 or not model.sized else "BELOW 0.85"
    print(
        f"    b/a {b / a:.2f} ({verdict if model.sized else 'no target: small model'}); "
        f"b/c {b / c:.2f} ({'ok' if b / c >= 0.90 else 'EOS costs more than 10%'})"
    )


def replicas(rate: float, night_hours: float) -> tuple[int, int]:
    """Replicas at ``rate`` alerts/s for 10M alerts a night and for the 10,000-alert burst."""
    night_rate = NIGHT_ALERTS / (night_hours * 3600)
    return math.ceil(night_rate / rate), math.ceil(BURST_ALERTS / BURST_SECONDS / rate)


def two_stage_report(
    ceiling: dict[str, float], repartition: ServiceRun, embed: ServiceRun, night_hours: float
) -> None:
    """(g): ``streamer repartition`` upstream, the service on its photometry topic."""
    rate_r, rate_e = repartition.rate("alerts"), embed.rate("alerts")
    cpu_r, cpu_e = repartition.cpu_ms_per_alert, embed.cpu_ms_per_alert
    (rn, rb), (en, eb) = replicas(rate_r, night_hours), replicas(rate_e, night_hours)
    # As in (f): the broker's CPU counted too.
    share = ceiling["cpu_ms/alert"] / (cpu_e + embed.broker_ms_per_alert)
    print(
        f"(g) 2 stages  repartition {rate_r:.1f} alerts/s ({cpu_r:.2f} ms CPU an alert); "
        f"streamer run on its photometry topic, EOS: {rate_e:.1f} alerts/s "
        f"({embed.summary['embeddings']} records, {cpu_e:.2f} ms CPU an alert), "
        f"b'/a {embed.rate('embeddings') / ceiling['embeddings/s']:.2f} (the model's share of the "
        f"stage's CPU, {share:.2f}, bounds it); replicas {rn} + {en} night, {rb} + {eb} burst"
    )


def pool_report(
    processes: int,
    ceiling: dict[str, float],
    eos: ServiceRun,
    pooled: ServiceRun,
    repartitions: tuple[ServiceRun, ServiceRun] | None,
) -> None:
    """(h): the exactly-once run, and the repartitioner, with decoding worker processes."""
    cpu = pooled.cpu_ms_per_alert
    line = (
        f"(h) {processes} decoding workers: streamer run EOS {pooled.rate('alerts'):.1f} alerts/s "
        f"({pooled.summary['embeddings']} records, {cpu:.2f} ms CPU an alert, "
        f"{pooled.summary['decode_worker_cpu_seconds']:.1f} s in the workers), "
        f"{pooled.rate('alerts') / eos.rate('alerts'):.2f}x (b); "
        f"b/a {pooled.rate('embeddings') / ceiling['embeddings/s']:.2f}"
    )
    if repartitions is not None:
        plain, pool = repartitions
        line += (
            f"; repartition {pool.rate('alerts'):.1f} alerts/s, "
            f"{pool.rate('alerts') / plain.rate('alerts'):.2f}x (g)'s"
        )
    print(line)


def cpu_report(ceiling: dict[str, float], eos: ServiceRun) -> None:
    """(f): where the CPU went, and the end-to-end rate this machine's cores allow at that cost."""
    cores = len(os.sched_getaffinity(0))
    model = ceiling["cpu_ms/alert"]
    service = eos.cpu_ms_per_alert
    broker = eos.broker_ms_per_alert
    bound = cores * 1e3 / (service + broker)
    print(
        f"(f) CPU       per alert: model {model:.2f} ms (ceiling), service {service:.2f} ms in all "
        f"(model, decode, history, Kafka client), broker {broker:.2f} ms"
        + (" (not measured: --bootstrap)" if eos.broker_cpu == 0 else "")
        + f"; {cores} cores allow at most {bound:.1f} alerts/s at this cost, b is "
        f"{100 * eos.rate('alerts') / bound:.0f}% of it; the model's share of the CPU, "
        f"{model / (service + broker):.2f}, bounds b/a when the ceiling uses every core"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alerts", type=int, default=20_000)
    parser.add_argument("--models", default="astromer1-sized,atcat-sized,small")
    parser.add_argument("--memory", type=int, nargs="?", const=100_000, default=0, metavar="N")
    parser.add_argument("--night-hours", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="service runs per mode, alternating order")
    parser.add_argument(
        "--no-two-stage", dest="two_stage", action="store_false", help="skip (g): repartition, then embed"
    )
    parser.add_argument(
        "--decode-processes",
        type=int,
        default=0,
        metavar="K",
        help="(h): also run (b), and the repartitioner of (g), with K decoding worker processes",
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start the local one)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "streamer" / "bench")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamer-e2e-") as tmp:
        workdir = Path(tmp)
        broker = None
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = kafka_local.LocalKafka(work_dir=workdir / "kafka").start()
            bootstrap = broker.bootstrap_servers
        try:
            names = [m for m in args.models.split(",") if m]
            if names:
                stream = generate(args.alerts, args.cache)
                print(describe(stream))
                topic = f"alerts-{args.alerts}-{time.monotonic_ns()}"
                kafka_local.create_topics(bootstrap, {topic: 1}, config={"max.message.bytes": "4194304"})
                t0 = time.perf_counter()
                publish(bootstrap, topic, stream)
                print(f"published in {time.perf_counter() - t0:.1f} s")
            broker_pid = broker.pid if broker is not None else None
            photometry: tuple[str, ServiceRun] | None = None
            pooled_repartition: tuple[str, ServiceRun] | None = None
            for model in build_models(names, workdir):
                print(
                    f"\n-- {model.label}: ceiling, exactly-once, at-least-once, ceiling again",
                    file=sys.stderr,
                )
                first = engine_ceiling(model, stream)
                # Rounds rotate which mode goes first; each mode keeps its best round.
                modes = [("exactly-once", 0), ("at-least-once", 0)]
                if args.decode_processes:
                    modes.append(("exactly-once", args.decode_processes))
                runs: dict[tuple[str, int], list[ServiceRun]] = {mode: [] for mode in modes}
                for r in range(args.rounds):
                    for delivery, processes in modes[r % len(modes) :] + modes[: r % len(modes)]:
                        runs[delivery, processes].append(
                            run_service(
                                bootstrap,
                                topic,
                                model,
                                delivery,
                                workdir,
                                broker_pid=broker_pid,
                                decode_processes=processes,
                            )
                        )
                eos, alos, *pooled = (max(runs[mode], key=lambda run: run.rate("alerts")) for mode in modes)
                second = engine_ceiling(model, stream)
                ceiling = max(first, second, key=lambda c: c["embeddings/s"])
                report(model, ceiling, eos, alos, args.night_hours)
                if args.two_stage:
                    if photometry is None:
                        photometry = run_repartition(bootstrap, topic, broker_pid)
                    embeds = [
                        run_service(
                            bootstrap,
                            photometry[0],
                            model,
                            "exactly-once",
                            workdir,
                            broker_pid=broker_pid,
                            framing="photometry",
                        )
                        for _ in range(args.rounds)
                    ]
                    best = max(embeds, key=lambda run: run.rate("alerts"))
                    two_stage_report(ceiling, photometry[1], best, args.night_hours)
                if pooled:
                    if args.two_stage and pooled_repartition is None:
                        workers = args.decode_processes
                        pooled_repartition = run_repartition(bootstrap, topic, broker_pid, workers)
                    pool_report(
                        args.decode_processes,
                        ceiling,
                        eos,
                        pooled[0],
                        (photometry[1], pooled_repartition[1]) if photometry and pooled_repartition else None,
                    )
            if args.memory:
                memory_run(bootstrap, args.memory, args.cache, workdir)
        finally:
            if broker is not None:
                broker.stop()
    return 0


def memory_run(bootstrap: str, n_alerts: int, cache: Path, workdir: Path) -> None:
    # Shorter histories (3 to 60 points an object) than the throughput stream: generating
    # 100,000 alerts with fastavro otherwise takes hours on two cores. More objects, so the
    # history store grows as much.
    stream = generate(n_alerts, cache, max_points=MEMORY_MAX_POINTS)
    print(f"\n== memory: {describe(stream)}")
    topic = f"alerts-{n_alerts}-{time.monotonic_ns()}"
    kafka_local.create_topics(bootstrap, {topic: 1}, config={"max.message.bytes": "4194304"})
    publish(bootstrap, topic, stream)
    (model,) = build_models(["small"], workdir)
    # Caches small enough to be full well before 20,000 alerts: a growing RSS after that
    # would be a leak, not a cache filling up to its bound.
    caches = (WINDOW_CACHE // 8, CURVE_MEMO // 4)
    print(f"window cache {caches[0] >> 20} MiB, curve memo {caches[1] >> 20} MiB, SQLite history on disk")
    run = run_service(bootstrap, topic, model, "exactly-once", workdir, caches)
    early, late = run.peak_rss_mb_at(20_000), run.peak_rss_mb_at(n_alerts)
    print(
        f"peak RSS {early:.0f} MB after 20,000 alerts, {late:.0f} MB after {run.summary['alerts']:,}: "
        f"+{100 * (late / early - 1):.0f}% ({'ok' if late <= 1.25 * early else 'MORE THAN +25%'}); "
        f"{run.rate('alerts'):.0f} alerts/s"
    )


if __name__ == "__main__":
    sys.exit(main())
