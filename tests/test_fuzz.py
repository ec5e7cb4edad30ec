"""Run the GGUF fuzz harness for a bounded time: only fastllm's own exceptions, no crash, no hang.
FASTLLM_FUZZ_SECONDS sets the budget (default 60)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinymodels import write_tiny_model

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_gguf.py"


def test_fuzz_gguf_loading(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_tiny_model(corpus / "llama.gguf", "llama")
    write_tiny_model(corpus / "gemma3.gguf", "gemma3")
    seconds = int(os.environ.get("FASTLLM_FUZZ_SECONDS", "60"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, str(HARNESS), str(corpus), f"-max_total_time={seconds}",
                        "-timeout=20", "-rss_limit_mb=4096", "-print_final_stats=1"],
                       capture_output=True, text=True, env=env, timeout=seconds + 300, check=False,
                       cwd=tmp_path)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert "stat::number_of_executed_units" in tail
