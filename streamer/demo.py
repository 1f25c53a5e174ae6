"""``make demo``: the whole service on a real broker, end to end, in one command.

Starts the local broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one), creates the
topics, publishes alerts (generated multi-object light curves in Rubin framing, plus the
bundled ZTF and ELAsTiCC samples in their own framings), runs the service until it has
caught up, and prints a summary and one decoded embedding record.

The model is ATCAT from the HuggingFace Hub, or the file named by ``STREAMER_MODEL_FILE``
(the offline path).
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import fastavro
import numpy as np

from streamer.alerts import synthetic

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "alerts"


def demo_messages(n_objects: int = 40, seed: int = 0) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs: Rubin alerts of ``n_objects`` objects, then the real samples."""
    rng = np.random.default_rng(seed)
    messages: list[tuple[bytes | None, bytes]] = []
    for k in range(n_objects):
        n_points = int(rng.integers(12, 120))
        curve = synthetic.make_light_curve(
            n_points,
            start_mjd=60200.0 + float(rng.uniform(0, 30)),
            cadence_days=float(rng.uniform(0.5, 3.0)),
            peak_flux=float(rng.uniform(2e3, 5e4)),
            first_source_id=1_000_000 * (k + 1),
            seed=seed + k,
        )
        detections = np.flatnonzero(curve["kind"] == 0)
        for i in detections[-min(5, detections.size) :]:  # the object's last few alerts
            record = synthetic.make_lsst_alert_from_light_curve(
                curve[: i + 1],
                object_id=5_000_000 + k,
                alert_id=int(curve["source_id"][i]),
                cutout_bytes=20_000,
            )
            messages.append((None, synthetic.encode_confluent(record)))
    ztf = SAMPLES / "ztf_v3.3_472263571115115000.avro"
    messages.append((None, ztf.read_bytes()))
    elasticc = SAMPLES / "elasticc_v0.9_object11290844_3alerts.avro"
    reader = fastavro.reader(io.BytesIO(elasticc.read_bytes()))
    schema = reader.writer_schema
    for alert in reader:  # ELAsTiCC's wire format: schemaless Avro, one alert a message
        messages.append((None, synthetic.encode_schemaless(alert, schema)))  # type: ignore[arg-type]
    return messages


def main() -> int:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streamer.config import Config
    from streamer.embed import ModelUnavailable
    from streamer.service import Service, configure_logging
    from streamer.sinks.kafka import decode_record_value

    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            from streamer.kafka_local import LocalKafka

            print("starting a local Kafka broker (first run downloads it from Maven Central)...", flush=True)
            bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
        run_id = uuid.uuid4().hex[:8]
        topics = {
            "input": f"demo-alerts-{run_id}",
            "output": f"demo-embeddings-{run_id}",
            "dlq": f"demo-dlq-{run_id}",
        }
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=3, replication_factor=1) for t in topics.values()]
        )
        for future in futures.values():
            future.result(30)
        messages = demo_messages()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for key, value in messages:
            producer.produce(topics["input"], key=key, value=value)
        producer.flush(30)
        print(f"published {len(messages)} alerts to {topics['input']} on {bootstrap}", flush=True)

        env = {
            **os.environ,
            "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMER_INPUT_TOPICS": topics["input"],
            "STREAMER_OUTPUT_TOPIC": topics["output"],
            "STREAMER_DEAD_LETTER_TOPIC": topics["dlq"],
            "STREAMER_GROUP_ID": f"demo-{run_id}",
            "STREAMER_METRICS_PORT": os.environ.get("STREAMER_METRICS_PORT", "8000"),
        }
        config = Config.load(env)
        config.exit_when_caught_up = True
        configure_logging(config)
        service = Service(config)
        start = time.perf_counter()
        try:
            status = service.run(install_signals=False)
        except ModelUnavailable as exc:
            print(f"streamer demo: model unavailable: {exc}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        if status:
            return status
        s = service.stats
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"demo-reader-{run_id}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([topics["output"]])
        first = None
        objects: set[str] = set()
        deadline = time.monotonic() + 30
        seen = 0
        while seen < s["embeddings"] and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    record = decode_record_value(msg.value() or b"")
                    objects.add(record.object_id)
                    first = first or record
                    seen += 1
        consumer.close()
        print("\nsummary")
        print(f"  alerts      {s['alerts']} ({s['rejected']} rejected)")
        print(f"  objects     {len(objects)}")
        print(f"  embeddings  {s['embeddings']} (read back under read_committed: {seen})")
        print(
            f"  throughput  {s['alerts'] / seconds:,.1f} alerts/s over {seconds:.1f} s (model load included)"
        )
        if first is not None:
            print("\none embedding record")
            shown = first.to_avro()
            values = shown.pop("embedding")
            for k, v in shown.items():
                print(f"  {k:16s} {v}")
            head = ", ".join(f"{x:.4f}" for x in values[:6])
            print(f"  {'embedding':16s} [{head}, ...] ({len(values)} floats)")
        return 0 if seen == s["embeddings"] else 1


if __name__ == "__main__":
    sys.exit(main())
