"""Fixtures shared by the whole suite: model files built with the published signatures."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from streamer.embed import synthetic


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def astromer_file(model_dir: Path) -> Path:
    """Small Astromer-signature ONNX file (inputs/outputs named and shaped as astromer1.onnx)."""
    return synthetic.build_astromer(model_dir / "astromer1.onnx", seed=1)


@pytest.fixture(scope="session")
def atcat_file(model_dir: Path) -> Path:
    """Small ATCAT-signature ONNX file (as atcat_f32.onnx)."""
    return synthetic.build_atcat(model_dir / "atcat_f32.onnx", seed=2)


@pytest.fixture(scope="session")
def atcat_fp16_file(model_dir: Path) -> Path:
    """Small ATCAT-signature float16 ONNX file (as atcat_fp16.onnx)."""
    return synthetic.build_atcat(model_dir / "atcat_fp16.onnx", fp16=True, seed=3)


@pytest.fixture(autouse=True)
def _quiet_reference_warnings() -> None:
    # light_curve.embed warns that it is experimental on every model construction.
    warnings.filterwarnings("ignore", message=".*experimental.*")
