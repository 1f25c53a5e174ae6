"""Alerts per second per core: our decoder against a plain fastavro decode of the same bytes.

Two workloads, measured in one run on one thread:

(a) Rubin alerts in Confluent framing with three cutouts of realistic size and a few
    hundred history rows (generated with :mod:`streamer.alerts.synthetic`);
(b) ZTF container-file alerts (the shared sample, replicated).

Baselines: ``fastavro.schemaless_reader`` with the full (pre-parsed) writer schema for (a),
``fastavro.reader`` for (b), and fastavro with a pruned reader schema for both. Ours is
``AlertDecoder.decode``: framing, Avro and the photometry points, so it does more work.

Usage::

    python benchmarks/decode.py [--history 300] [--cutouts 30000,45000,60000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import fastavro

from streamer.alerts import AlertDecoder
from streamer.alerts.dia import DIA_FIELDS
from streamer.alerts.projection import reader_schema
from streamer.alerts.synthetic import (
    encode_confluent,
    lsst_schema,
    make_light_curve,
    make_lsst_alert_from_light_curve,
)
from streamer.alerts.ztf import ZTF_FIELDS

ZTF_SAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "alerts" / "ztf_v3.3_472263571115115000.avro"
)


def alerts_per_second(
    decode: Callable[[bytes], object], messages: Sequence[bytes], seconds: float, repeat: int
) -> float:
    """Best-of-``repeat`` single-thread rate, each run cycling through ``messages`` for ``seconds``."""
    for message in messages[:3]:
        decode(message)  # warm caches: parsed schemas, compiled projections
    best = 0.0
    for _ in range(repeat):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for message in messages:
                decode(message)
            done += len(messages)
        best = max(best, done / (time.perf_counter() - start))
    return best


def rubin_messages(count: int, history: int, cutouts: Sequence[int], version: str) -> list[bytes]:
    """``count`` distinct alerts: ``history`` rows each, half detections and half forced."""
    messages = []
    for i in range(count):
        curve = make_light_curve(history + 1, seed=i, first_source_id=10_000_000 * (i + 1))
        record = make_lsst_alert_from_light_curve(
            curve, object_id=1000 + i, alert_id=i, cutout_bytes=tuple(cutouts), schema_version=version, seed=i
        )
        messages.append(encode_confluent(record, version))
    return messages


def report(title: str, rates: dict[str, float], ours: str, baseline: str) -> None:
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:<44} {rate:>10,.0f} alerts/s")
    print(f"  ratio {ours} / {baseline}: {rates[ours] / rates[baseline]:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rubin-alerts", type=int, default=40, help="distinct Rubin messages (default 40)")
    parser.add_argument("--history", type=int, default=300, help="history rows per Rubin alert (default 300)")
    parser.add_argument(
        "--cutouts",
        default="30000,45000,60000",
        help="cutout sizes in bytes, comma-separated (default 30k,45k,60k)",
    )
    parser.add_argument("--schema-version", default="7.4", help="Rubin schema version (default 7.4)")
    parser.add_argument("--ztf-sample", type=Path, default=ZTF_SAMPLE, help="ZTF container-file alert")
    parser.add_argument(
        "--ztf-copies", type=int, default=40, help="copies of the ZTF sample per cycle (default 40)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measured run (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best counts (default 3)"
    )
    args = parser.parse_args(argv)

    cutouts = [int(size) for size in args.cutouts.split(",")]
    messages = rubin_messages(args.rubin_alerts, args.history, cutouts, args.schema_version)
    writer = lsst_schema(args.schema_version)
    pruned = reader_schema(writer, DIA_FIELDS)
    decoder = AlertDecoder()
    size = sum(map(len, messages)) / len(messages)
    print(f"(a) Rubin {args.schema_version}, Confluent framing: {size / 1e3:.0f} kB per alert,")
    print(f"    {args.history} history rows, cutouts {cutouts} bytes")
    rates = {
        "fastavro schemaless_reader, full schema": alerts_per_second(
            lambda m: fastavro.schemaless_reader(io.BytesIO(m[5:]), writer),
            messages,
            args.seconds,
            args.repeat,
        ),
        "fastavro schemaless_reader, reader schema": alerts_per_second(
            lambda m: fastavro.schemaless_reader(io.BytesIO(m[5:]), writer, pruned),
            messages,
            args.seconds,
            args.repeat,
        ),
        "AlertDecoder.decode (Avro + photometry)": alerts_per_second(
            decoder.decode, messages, args.seconds, args.repeat
        ),
    }
    report(
        "(a) Rubin",
        rates,
        "AlertDecoder.decode (Avro + photometry)",
        "fastavro schemaless_reader, full schema",
    )

    sample = args.ztf_sample.read_bytes()
    ztf = [bytes(sample) for _ in range(args.ztf_copies)]
    ztf_pruned = reader_schema(fastavro.reader(io.BytesIO(sample)).writer_schema, ZTF_FIELDS)
    print(f"\n(b) ZTF container files: {len(sample) / 1e3:.0f} kB per alert ({args.ztf_sample.name})")
    rates = {
        "fastavro.reader": alerts_per_second(
            lambda m: list(fastavro.reader(io.BytesIO(m))), ztf, args.seconds, args.repeat
        ),
        "fastavro.reader, reader schema": alerts_per_second(
            lambda m: list(fastavro.reader(io.BytesIO(m), ztf_pruned)), ztf, args.seconds, args.repeat
        ),
        "AlertDecoder.decode (Avro + photometry)": alerts_per_second(
            decoder.decode, ztf, args.seconds, args.repeat
        ),
    }
    report("(b) ZTF", rates, "AlertDecoder.decode (Avro + photometry)", "fastavro.reader")


if __name__ == "__main__":
    main()
