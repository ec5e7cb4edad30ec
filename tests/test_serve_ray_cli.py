"""`fastllm serve --ray` as a command: it starts a local Ray, deploys two replicas, answers
through Ray's proxy with both, and on SIGTERM exits 0 leaving none of Ray's processes behind.
(The deployment itself is checked in test_serve_ray.py; this is the command around it.) Outside
CI it skips where the ray extra is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_helpers import WAIT_STEPS

if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("ray.serve", reason="the ray extra is not installed")
import httpx


def _descendants(root: int) -> set[int]:
    """The pids below `root`, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    parent[int(d)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        out |= kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads Linux's /proc")
def test_serve_ray_command(stories260k, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastllm.cli", "serve", "-m", str(stories260k), "--backend",
             "reference", "-c", "256", "--ray", "--replicas", "2", "--replica-cpus", "0.5",
             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=f, env=env)
    try:
        # Ray's start and two model loads: a generous bound of polls, not a timing
        for _ in range(WAIT_STEPS * 8):
            if "fastllm: ready" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.05)
        text = log.read_text()
        if "fastllm: error: Ray did not start" in text and \
                os.environ.get("CI", "").lower() != "true":
            pytest.skip(text.split("fastllm: error: ", 1)[1].strip()[:500])
        assert "fastllm: ready" in text, text[-2000:]
        assert "2 replicas of 4 slots" in text
        base = f"http://127.0.0.1:{port}"
        seen = set()
        with httpx.Client(base_url=base, timeout=120) as h:
            assert h.get("/health").json() == {"status": "ok"}
            for i in range(40):
                r = h.post("/v1/completions", json={"prompt": f"Hi {i}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                seen.add(r.headers["x-fastllm-replica"])
                if len(seen) == 2:
                    break
        assert len(seen) == 2
        ray_procs = _descendants(proc.pid)
        assert ray_procs  # the local Ray runs below the command
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-2000:]
        left = [p for p in ray_procs if _running(p)]
        for _ in range(WAIT_STEPS):  # a process may take a moment to be reaped
            left = [p for p in left if _running(p)]
            if not left:
                break
            time.sleep(0.05)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    finally:  # after a failure: no Ray of this test's left running
        below = _descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in below:
            if _running(p):
                os.kill(p, signal.SIGKILL)
