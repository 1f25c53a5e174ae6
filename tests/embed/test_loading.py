"""Models load from a local .onnx file and through ``from_hf`` from the Hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import streamer.embed as se

REVISION = "5f3c1a0b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"


def _populate_hub_cache(cache: Path, repo_id: str, filename: str, source: Path) -> None:
    """Lay a file out as huggingface_hub's cache does after a download of ``main``."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    blob = hashlib.sha256(source.read_bytes()).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copy(source, repo_dir / "blobs" / blob)
    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).symlink_to(Path("../../blobs") / blob)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)


def _run_offline(cache: Path, code: str) -> subprocess.CompletedProcess[str]:
    # huggingface_hub reads HF_HUB_OFFLINE at import time: use a fresh interpreter.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def _curve() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    n = 300
    return (
        np.sort(rng.uniform(0, 500, n)),
        rng.normal(20, 1, n),
        rng.uniform(1, 2, n),
        rng.integers(0, 6, n),
    )


def test_from_path_loads_a_local_file(atcat_file: Path) -> None:
    model = se.ATCAT.from_path(atcat_file, output="mean")
    assert model.model_path == str(atcat_file)
    assert model.model_sha256 == hashlib.sha256(atcat_file.read_bytes()).hexdigest()
    time, flux, err, band = _curve()
    assert model(time, flux, err, band).shape == (1, 1, 1, 384)


def test_from_path_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(se.ModelUnavailable, match="does not exist"):
        se.Astromer1.from_path(tmp_path / "nope.onnx")


def test_ort_session_kwargs_reach_onnxruntime(astromer_file: Path) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = se.Astromer1.from_path(
        astromer_file, ort_session_kwargs={"sess_options": options, "providers": ["CPUExecutionProvider"]}
    )
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert model.session.get_session_options().intra_op_num_threads == 1


def test_from_hf_uses_the_hub_cache_offline(
    tmp_path: Path, atcat_file: Path, atcat_fp16_file: Path, astromer_file: Path
) -> None:
    cache = tmp_path / "hub"
    _populate_hub_cache(cache, "light-curve/atcat", "atcat_f32.onnx", atcat_file)
    _populate_hub_cache(cache, "light-curve/atcat", "atcat_fp16.onnx", atcat_fp16_file)
    for repo, filename in [
        ("light-curve/astromer1", "astromer1.onnx"),
        ("light-curve/astromer1-ztfdr20", "astromer1_ztfdr20.onnx"),
        ("light-curve/astromer2", "astromer2.onnx"),
    ]:
        _populate_hub_cache(cache, repo, filename, astromer_file)
    result = _run_offline(
        cache,
        """
        import json, numpy as np, streamer.embed as se
        rng = np.random.default_rng(0)
        t = np.sort(rng.uniform(0, 500, 300)); m = rng.normal(20, 1, 300)
        out = {}
        for name in ["Astromer1", "Astromer1ZTF", "Astromer2"]:
            model = getattr(se, name).from_hf(output="max")
            out[name] = [model.model_path, model(t, m).ravel()[:8].tolist()]
        for fp16 in (False, True):
            model = se.ATCAT.from_hf(output="mean", use_fp16=fp16, band_groups={"g": 1, "r": 2})
            b = np.where(rng.random(300) < 0.5, "g", "r")
            out[f"atcat{fp16}"] = [model.model_path, str(model.dtype), model(t, m, m * 0.1, b).shape]
        print(json.dumps(out))
        """,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["Astromer1ZTF"][0].endswith(
        f"models--light-curve--astromer1-ztfdr20/snapshots/{REVISION}/astromer1_ztfdr20.onnx"
    )
    # Same file through the Hub cache and from a local path: same embedding.
    local = se.Astromer1.from_path(astromer_file, output="max")
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 500, 300))
    m = rng.normal(20, 1, 300)
    np.testing.assert_allclose(out["Astromer2"][1], local(t, m).ravel()[:8], atol=1e-6)
    assert out["atcatFalse"][0].endswith("atcat_f32.onnx") and "float32" in out["atcatFalse"][1]
    assert out["atcatTrue"][0].endswith("atcat_fp16.onnx") and "float16" in out["atcatTrue"][1]
    assert out["atcatTrue"][2] == [1, 1, 1, 384]


def test_from_hf_without_network_or_cache_is_a_clear_error(tmp_path: Path) -> None:
    result = _run_offline(
        tmp_path / "empty-hub",
        """
        import streamer.embed as se
        try:
            se.ATCAT.from_hf()
        except se.ModelUnavailable as exc:
            print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot get 'atcat_f32.onnx' of 'light-curve/atcat' from the HuggingFace Hub" in result.stdout
    assert "from a local path" in result.stdout
