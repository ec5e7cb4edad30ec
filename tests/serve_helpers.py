"""What the server's tests share: an app run by uvicorn on a thread (loopback, a free port),
a gate that holds the engine's decode steps (so that a test can act while a request is
certainly running, without timing anything), and the /metrics samples."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")

import httpx
import uvicorn

from fastllm.serve import create_app

WAIT_STEPS = 600  # polls of 0.05 s: a generous bound on waiting for a condition, not a timing


@contextlib.contextmanager
def serving(engine, **kwargs) -> Iterator[str]:
    """Serve create_app(engine, **kwargs) on 127.0.0.1 at a free port; yields the base URL."""
    app = create_app(engine, **kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=2))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    for _ in range(WAIT_STEPS):
        if server.started or not t.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(30)
        sock.close()


def wait_for(cond, what: str) -> None:
    for _ in range(WAIT_STEPS):
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class Gate:
    """Holds every decode step of a model while closed (prefill still runs, so a request's
    first token comes out, and then the request waits inside the engine)."""

    NAMES = ("decode_greedy", "decode_sampled", "decode_rows_sampled", "decode_rows_chain")

    def __init__(self, model):
        self.open_ = threading.Event()
        self.open_.set()
        self.entered = threading.Event()  # a decode step is waiting at the closed gate
        self._model = model
        for name in self.NAMES:
            fn = getattr(model, name, None)
            if fn is not None:
                setattr(model, name, self._wrap(fn))

    def _wrap(self, fn):
        def gated(*args, **kwargs):
            if not self.open_.is_set():
                self.entered.set()
                assert self.open_.wait(60), "the test never opened the gate"
            return fn(*args, **kwargs)

        return gated

    def close(self) -> None:
        self.entered.clear()
        self.open_.clear()

    def open(self) -> None:
        self.open_.set()

    def remove(self) -> None:
        self.open()
        for name in self.NAMES:
            self._model.__dict__.pop(name, None)


def metrics(base: str, key: str | None = None) -> dict[str, float]:
    """/metrics as {name or name{labels}: value}, read by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{base}/metrics", headers=headers)
    assert r.status_code == 200, r.text
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def idle(base: str) -> bool:
    m = metrics(base)
    return m["fastllm_requests_running"] == 0 and m["fastllm_requests_queued"] == 0
