"""``streamer replay``: archived alerts in, embeddings out, equal to embedding the
expected light curves directly."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import fastavro
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from streamer.cli import EXIT_REJECTED, main
from streamer.records import EmbeddingRecord
from tests.alert_factory import expected_embedding, make_alerts

#: Copies of the shared sample alerts (``shared/data/alerts``), so a lone clone has them too.
SHARED = Path(__file__).resolve().parent / "data" / "alerts"
N_OBJECTS = 3


@pytest.fixture(scope="module")
def alerts() -> list[tuple[str, bytes, int, np.ndarray]]:
    return [(a.name, a.data, a.alert_id, a.curve) for a in make_alerts(N_OBJECTS)]


def _expected(atcat_file: Path, curve: np.ndarray) -> np.ndarray:
    return expected_embedding(atcat_file, curve)


def _read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _replay(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", *args])
    return result.exit_code, result.output


def test_replay_directory_to_parquet_equals_direct_embedding(tmp_path, atcat_file, alerts) -> None:
    archive = tmp_path / "alerts"
    archive.mkdir()
    for name, data, _, _ in alerts:
        (archive / name).write_bytes(data)
    out = tmp_path / "embeddings.parquet"
    code, output = _replay(
        [str(archive), "-o", str(out), "--model-file", str(atcat_file), "--batch-size", "7"]
    )
    assert code == 0, output
    assert f"alerts     {len(alerts)}" in output
    assert f"objects    {N_OBJECTS}" in output
    assert f"embeddings {len(alerts)}" in output
    rows = {r["alert_id"]: r for r in _read_parquet(out)}
    assert len(rows) == len(alerts)
    for _, _, alert_id, curve in alerts:
        row = rows[alert_id]
        assert row["survey"] == "lsst" and row["model"] == f"atcat:{atcat_file.name}"
        assert row["alert_time"] == pytest.approx(curve["time"][-1])
        assert sum(dict(row["points_per_band"]).values()) == len(curve)
        got = np.asarray(row["embedding"], dtype=np.float32).reshape(row["shape"])
        np.testing.assert_allclose(got, _expected(atcat_file, curve), rtol=0, atol=1e-5)


def test_shuffled_replay_gives_identical_records(tmp_path, atcat_file, alerts) -> None:
    """As-of semantics: processing order does not change any embedding."""
    outputs = []
    for seed in (0, 1):
        archive = tmp_path / f"shuffled{seed}"
        archive.mkdir()
        order = np.random.default_rng(seed).permutation(len(alerts))
        for rank, k in enumerate(order):  # file names fix the replay order
            (archive / f"{rank:04d}.avro").write_bytes(alerts[k][1])
        out = tmp_path / f"out{seed}.avro"
        code, output = _replay(
            [str(archive), "-o", str(out), "--model-file", str(atcat_file), "--batch-size", "5"]
        )
        assert code == 0, output
        with open(out, "rb") as f:
            records = [EmbeddingRecord.from_avro(r) for r in fastavro.reader(f)]
        outputs.append({r.alert_id: r.embedding for r in records})
    assert outputs[0].keys() == {a[2] for a in alerts}
    for alert_id, embedding in outputs[0].items():
        np.testing.assert_allclose(embedding, outputs[1][alert_id], rtol=0, atol=1e-5)


def test_replay_tar_gz_and_avro_gz_to_jsonl(tmp_path, atcat_file, alerts) -> None:
    tar_path = tmp_path / "night.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data, _, _ in alerts[:5]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    gz = tmp_path / "single.avro.gz"
    gz.write_bytes(gzip.compress(alerts[5][1]))
    out = tmp_path / "out.jsonl"
    code, output = _replay([str(tar_path), str(gz), "-o", str(out), "--model-file", str(atcat_file)])
    assert code == 0, output
    import json

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["alert_id"] for r in lines) == sorted(a[2] for a in alerts[:6])


def test_replay_shared_ztf_and_elasticc_samples(tmp_path, astromer_file) -> None:
    out = tmp_path / "out.parquet"
    code, output = _replay(
        [str(SHARED), "-o", str(out), "--model", "astromer1", "--model-file", str(astromer_file)]
    )
    assert code == 0, output
    rows = _read_parquet(out)
    surveys = sorted({r["survey"] for r in rows})
    assert surveys == ["elasticc", "ztf"]
    assert sum(r["survey"] == "elasticc" for r in rows) == 3
    ztf = next(r for r in rows if r["survey"] == "ztf")
    assert ztf["object_id"].startswith("ZTF")
    # Astromer embeds each band with points on its own: one row per band.
    assert ztf["shape"][0] == len(ztf["bands"]) and ztf["shape"][1:] == [1, 1, 256]


@pytest.mark.parametrize("decode_processes", ["0", "2"])
def test_bad_messages_are_rejected_counted_and_kept(tmp_path, atcat_file, alerts, decode_processes) -> None:
    archive = tmp_path / "mixed"
    archive.mkdir()
    good = alerts[:4]
    for name, data, _, _ in good:
        (archive / name).write_bytes(data)
    (archive / "truncated.bin").write_bytes(good[0][1][:40])
    (archive / "random.bin").write_bytes(np.random.default_rng(0).bytes(300))
    (archive / "unknown-schema.bin").write_bytes(b"\x00\x00\x00\x27\x0f" + good[0][1][5:])
    out = tmp_path / "out.parquet"
    rejects = tmp_path / "rejects.avro"
    code, output = _replay(
        [
            *(str(archive), "-o", str(out), "--model-file", str(atcat_file), "--rejects", str(rejects)),
            *("--decode-processes", decode_processes),
        ]
    )
    assert code == EXIT_REJECTED, output
    assert "rejected   3" in output and "unknown_schema: 1" in output
    assert len(_read_parquet(out)) == len(good)
    with open(rejects, "rb") as f:
        kept = {r["source"].rsplit("/", 1)[-1]: r for r in fastavro.reader(f)}
    assert set(kept) == {"truncated.bin", "random.bin", "unknown-schema.bin"}
    assert kept["unknown-schema.bin"]["reason"] == "unknown_schema"
    assert kept["truncated.bin"]["data"] == good[0][1][:40]


def test_missing_model_file_is_a_clear_error(tmp_path, alerts) -> None:
    code, output = _replay(
        [str(tmp_path), "-o", str(tmp_path / "x.parquet"), "--model-file", str(tmp_path / "no.onnx")]
    )
    assert code == 1
    assert "does not exist" in output


def test_a_corrupt_gz_file_stops_the_replay_with_an_error_naming_it(tmp_path, atcat_file, alerts) -> None:
    archive = tmp_path / "alerts"
    archive.mkdir()
    name, data, _, _ = alerts[0]
    (archive / f"a-{name}").write_bytes(data)
    corrupt = bytearray(gzip.compress(data))
    corrupt[20:30] = b"\xff" * 10
    (archive / "b-broken.avro.gz").write_bytes(bytes(corrupt))
    out = tmp_path / "embeddings.jsonl"
    code, output = _replay([str(archive), "-o", str(out), "--model-file", str(atcat_file)])
    assert code == 1
    assert "b-broken.avro.gz: not a readable gzip file" in output
    assert "Traceback" not in output
    # The alert read before the broken file is embedded and written.
    assert [json.loads(line)["alert_id"] for line in out.read_text().splitlines()] == [alerts[0][2]]
