"""Alerts per second per core: our decoder against a plain fastavro decode of the same bytes.

Two workloads, measured in one run on one thread:

(a) Rubin alerts in Confluent framing with three cutouts of realistic size and a few
    hundred history rows (generated with :mod:`streamer.alerts.synthetic`);
(b) ZTF container-file alerts (the shared sample, replicated).

Baselines: ``fastavro.schemaless_reader`` with the full (pre-parsed) writer schema for (a),
``fastavro.reader`` for (b), and fastavro with a pruned reader schema for both. Ours is
``AlertDecoder.decode``: framing, Avro (cavro, or fastavro where cavro cannot read, with
cached, pruned schemas) and the photometry points, so it does more work.

The contenders run in interleaved rounds: each round times every contender once, in an
order rotated from round to round, and the best round of each counts. Noise on a shared
machine (other jobs, frequency changes) then hits all contenders alike, which keeps the
ratio steady even when the absolute rates are not. The median and range of the ratios
within single rounds are printed too, as a check on that.

Usage::

    python benchmarks/decode.py [--history 300] [--cutouts 30000,45000,60000] [--seconds 0.25] [--rounds 20]
"""

from __future__ import annotations

import argparse
import io
import statistics
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

Decode = Callable[[bytes], object]


def run_for(decode: Decode, messages: Sequence[bytes], seconds: float) -> float:
    """Single-thread rate of one run cycling through ``messages`` for ``seconds`` (one at least)."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for message in messages:
            decode(message)
            done += 1
            if time.perf_counter() >= deadline:
                return done / (time.perf_counter() - start)


def interleaved_rates(
    contenders: dict[str, Decode], messages: Sequence[bytes], seconds: float, rounds: int
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Best-round rate of each contender, and every round's rates.

    Each round runs every contender once, in an order rotated from round to round.
    """
    names = list(contenders)
    for name in names:
        for message in messages[:3]:
            contenders[name](message)  # warm caches: parsed schemas, pruned reader schemas
    history = []
    for round_index in range(rounds):
        shift = round_index % len(names)
        history.append(
            {name: run_for(contenders[name], messages, seconds) for name in names[shift:] + names[:shift]}
        )
    best = {name: max(rates[name] for rates in history) for name in names}
    return best, history


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


def report(
    title: str, measured: tuple[dict[str, float], list[dict[str, float]]], ours: str, baseline: str
) -> None:
    rates, history = measured
    print(f"\n{title} (best of {len(history)} interleaved rounds)")
    for name, rate in rates.items():
        print(f"  {name:<44} {rate:>10,.0f} alerts/s")
    paired = sorted(round_rates[ours] / round_rates[baseline] for round_rates in history)
    print(f"  ratio {ours} / {baseline}: {rates[ours] / rates[baseline]:.2f}x")
    median, low, high = statistics.median(paired), paired[0], paired[-1]
    print(f"  same-round ratios: median {median:.2f}x, range {low:.2f}-{high:.2f}x")


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
    parser.add_argument(
        "--seconds", type=float, default=0.25, help="seconds per contender per round (default 0.25)"
    )
    parser.add_argument(
        "--rounds",
        "--repeat",
        dest="rounds",
        type=int,
        default=20,
        help="interleaved rounds; each contender's best round counts (default 20)",
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
    ours = "AlertDecoder.decode (Avro + photometry)"
    measured = interleaved_rates(
        {
            "fastavro schemaless_reader, full schema": lambda m: fastavro.schemaless_reader(
                io.BytesIO(m[5:]), writer
            ),
            "fastavro schemaless_reader, reader schema": lambda m: fastavro.schemaless_reader(
                io.BytesIO(m[5:]), writer, pruned
            ),
            ours: decoder.decode,
        },
        messages,
        args.seconds,
        args.rounds,
    )
    report("(a) Rubin", measured, ours, "fastavro schemaless_reader, full schema")

    sample = args.ztf_sample.read_bytes()
    ztf = [bytes(sample) for _ in range(args.ztf_copies)]
    ztf_pruned = reader_schema(fastavro.reader(io.BytesIO(sample)).writer_schema, ZTF_FIELDS)
    print(f"\n(b) ZTF container files: {len(sample) / 1e3:.0f} kB per alert ({args.ztf_sample.name})")
    measured = interleaved_rates(
        {
            "fastavro.reader": lambda m: list(fastavro.reader(io.BytesIO(m))),
            "fastavro.reader, reader schema": lambda m: list(fastavro.reader(io.BytesIO(m), ztf_pruned)),
            ours: decoder.decode,
        },
        ztf,
        args.seconds,
        args.rounds,
    )
    report("(b) ZTF", measured, ours, "fastavro.reader")


if __name__ == "__main__":
    main()
