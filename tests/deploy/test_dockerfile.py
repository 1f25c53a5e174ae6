"""Offline checks of the Dockerfile and .dockerignore (hadolint runs in .ci/validate-deploy)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    out = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(starts) >= 2, "multi-stage build expected"
    return instructions[starts[-1] :]


def test_base_image_pinned(instructions: list[tuple[str, str]]) -> None:
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    froms = [a.split()[0] for k, a in instructions if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE}"] * len(froms)


def test_final_stage_has_no_build_tools(final_stage: list[tuple[str, str]]) -> None:
    for keyword, arguments in final_stage:
        if keyword == "RUN":
            assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", arguments), arguments
    copies = [a for k, a in final_stage if k == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_runs_as_numeric_non_root_user(final_stage: list[tuple[str, str]]) -> None:
    users = [a for k, a in final_stage if k == "USER"]
    assert users and users[-1].split(":")[0] == "10001"


def test_entrypoint_and_healthcheck(final_stage: list[tuple[str, str]]) -> None:
    keywords = dict(final_stage)
    assert json.loads(keywords["ENTRYPOINT"]) == ["streamer"]
    assert json.loads(keywords["CMD"]) == ["run"]
    health = keywords["HEALTHCHECK"]
    exec_form = json.loads(health[health.index("CMD") + 3 :].strip())
    assert exec_form[0] == "python" and "/healthz" in exec_form[-1]
    assert "8000" in keywords["EXPOSE"].split()


def test_writable_paths(final_stage: list[tuple[str, str]]) -> None:
    env = " ".join(a for k, a in final_stage if k == "ENV")
    assert "HF_HOME=/var/cache/streamer/hf" in env
    assert "STREAMER_HISTORY_PATH=/var/lib/streamer/" in env
    volumes = json.loads(next(a for k, a in final_stage if k == "VOLUME"))
    assert set(volumes) == {"/var/lib/streamer", "/var/cache/streamer"}


def test_schemas_shipped(instructions: list[tuple[str, str]]) -> None:
    # streamer.records reads <site-packages>/schemas/embedding.avsc.
    assert "schemas /opt/venv/lib/python3.11/site-packages/schemas" in [
        a for k, a in instructions if k == "COPY"
    ]


def test_dockerignore_allowlist() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything, then allow what the build copies"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "streamer", "schemas"}
