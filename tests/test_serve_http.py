"""`fastllm serve` at the HTTP level (httpx): the raw server-sent events, malformed requests,
the API key, /health while loading, the queue limit, clients that go away, CORS, and the
`fastllm serve` command itself. stories260K on the reference backend."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from fastllm import Engine, Model
from serve_helpers import Gate, idle, metrics, serving, wait_for

CTX = 256


@pytest.fixture(scope="module")
def model(stories260k):
    return Model.load(stories260k, backend="reference", n_seq=2, n_ctx=CTX)


@pytest.fixture(scope="module")
def served(model):
    gate = Gate(model)
    with Engine(model) as eng, serving(eng) as base:
        yield base, gate
    gate.remove()


def events(text: str) -> list[str]:
    """The data of each server-sent event, checked to be `data: ...` blocks ended by a blank
    line (the format of the WHATWG HTML standard's event streams)."""
    assert text.endswith("\n\n")
    out = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        out.append(lines[0][len("data: "):])
    return out


def test_raw_sse(served):
    base, _ = served
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    r = httpx.post(f"{base}/v1/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    whole = httpx.post(f"{base}/v1/completions", json={**body, "stream": False}).json()
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole["choices"][0]["text"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("content, param", [
    (b"{not json", None),
    (b"\xff\xfe", None),
    (b"[1, 2]", None),
    (b'"text"', None),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
     "max_tokens"),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "temperature"),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "n": "2"}', "n"),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream"),
    ((b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": '
     b'100000000000000000000000}'), "max_tokens"),
    (b'{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "hello": 1}', "hello"),
])
def test_malformed_requests_are_4xx_and_the_server_keeps_serving(served, path, content, param):
    base, _ = served
    body = content
    if path == "/v1/completions":  # one body for both endpoints: drop the other's field
        body = body.replace(b'"messages": [{"role": "user", "content": "x"}], ', b"")
    else:
        body = body.replace(b'"prompt": "x", ', b"")
    r = httpx.post(base + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert "Traceback" not in r.text
    ok = httpx.post(f"{base}/v1/completions", json={"prompt": "A", "max_tokens": 2})
    assert ok.status_code == 200


def test_other_errors_have_openais_shape(served):
    base, _ = served
    for method, path, status in [("GET", "/v2/nothing", 404), ("DELETE", "/v1/models", 405),
                                 ("GET", "/v1/chat/completions", 405)]:
        r = httpx.request(method, base + path)
        assert r.status_code == status
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{base}/v1/completions", content=b"x" * (33 << 20))
    assert r.status_code == 413


def test_page_and_health(served):
    base, _ = served
    r = httpx.get(base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text and "<script" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    assert httpx.get(base + "/health").json() == {"status": "ok"}


def test_disconnect_mid_stream_frees_the_slot(served):
    """A client that closes its stream after the first token: the request is cancelled (not
    run to its end), its slot is free again."""
    base, _ = served
    before = metrics(base)
    body = {"prompt": "Once upon a time", "max_tokens": None, "temperature": 0,
            "stream": True, "logit_bias": {"2": -100}}  # no end of generation: it runs on
    with httpx.stream("POST", f"{base}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    wait_for(lambda: idle(base), "the cancelled request to leave its slot")
    after = metrics(base)
    key = 'fastllm_requests_total{endpoint="text",outcome="cancelled"}'
    assert after[key] - before.get(key, 0) == 1
    assert after["fastllm_generated_tokens_total"] - before["fastllm_generated_tokens_total"] \
        < CTX - 10


def test_disconnect_while_waiting_for_a_whole_reply(served):
    """A non-streaming client that gives up: its request is cancelled too. The gate holds the
    engine's decode steps, so the request is certainly still running when the client leaves."""
    base, gate = served
    before = metrics(base)
    gate.close()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json={"prompt": "Once", "max_tokens": 50},
                       timeout=httpx.Timeout(10, read=0.5))
        assert gate.entered.is_set()
    finally:
        gate.open()
    wait_for(lambda: idle(base), "the abandoned request to leave its slot")
    key = 'fastllm_requests_total{endpoint="text",outcome="cancelled"}'
    wait_for(lambda: metrics(base).get(key, 0) - before.get(key, 0) == 1, "the count")


def test_queue_limit_is_429(model):
    """Two slots, at most one waiting: with three requests in (the gate holds the engine, so
    none ends), the next is 429; once they end, all three were served."""
    gate = Gate(model)
    gate.close()
    try:
        with Engine(model) as eng, serving(eng, max_queue=1) as base:
            results = []

            def post():
                results.append(httpx.post(f"{base}/v1/completions",
                                          json={"prompt": "A", "max_tokens": 3}, timeout=60))

            threads = [threading.Thread(target=post) for _ in range(3)]
            for t in threads:
                t.start()
            wait_for(lambda: eng.running + eng.pending == 3, "three requests in the engine")
            r = httpx.post(f"{base}/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "x"}],
                                 "max_tokens": 2})
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"]
            gate.open()
            for t in threads:
                t.join(60)
            assert [x.status_code for x in results] == [200, 200, 200]
    finally:
        gate.remove()


def test_api_key(model):
    with Engine(model) as eng, serving(eng, api_key="s3cret") as base:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            r = httpx.get(f"{base}/v1/models", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
            assert httpx.get(f"{base}/metrics", headers=headers).status_code == 401
        ok = {"authorization": "Bearer s3cret"}
        assert httpx.get(f"{base}/v1/models", headers=ok).status_code == 200
        r = httpx.post(f"{base}/v1/completions", headers=ok, json={"prompt": "A", "max_tokens": 2})
        assert r.status_code == 200
        assert metrics(base, key="s3cret")["fastllm_slots_total"] == 2
        # the page and the health check need no key (the page asks for it)
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/").status_code == 200


def test_health_while_loading(model):
    release = threading.Event()
    engines = []

    def load():
        assert release.wait(60)
        engines.append(Engine(model))
        return engines[0]

    with serving(load, model_name="tiny-stories") as base:
        r = httpx.get(f"{base}/health")
        assert (r.status_code, r.json()) == (503, {"status": "loading"})
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "A"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        release.set()
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, "the model to load")
        assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["tiny-stories"]
        r = httpx.post(f"{base}/v1/completions", json={"model": "tiny-stories", "prompt": "A",
                                                       "max_tokens": 2})
        assert r.status_code == 200
    assert engines[0]._closed  # the app that loaded the engine closes it


def test_load_failure(stories260k):
    failures = []

    def load():
        return Model.load(stories260k.parent / "missing.gguf")

    with serving(load, on_load_error=failures.append) as base:
        wait_for(lambda: failures, "the load to fail")
        r = httpx.get(f"{base}/health")
        assert r.status_code == 503 and r.json()["status"] == "error"
        assert "missing.gguf" in r.json()["error"]


def test_cors(model):
    with Engine(model) as eng, serving(eng, cors_origins=["http://app.test"]) as base:
        pre = {"access-control-request-method": "POST",
               "access-control-request-headers": "authorization, content-type"}
        r = httpx.options(f"{base}/v1/chat/completions", headers={"origin": "http://app.test",
                                                                  **pre})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.test"
        r = httpx.options(f"{base}/v1/chat/completions", headers={"origin": "http://evil.test",
                                                                  **pre})
        assert "access-control-allow-origin" not in r.headers


# -- the command ------------------------------------------------------------------------------

def serve_cmd(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "fastllm.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            **kw)


def test_serve_command(stories260k):
    """--port 0 says where it listens; the key comes from FASTLLM_API_KEY; Ctrl-C shuts it
    down cleanly."""
    p = serve_cmd("-m", str(stories260k), "--backend", "reference", "--port", "0", "-np", "2",
                  "-c", "128", "--alias", "tiny", env={"FASTLLM_API_KEY": "k1"})
    try:
        line = p.stderr.readline()
        assert line.startswith("fastllm: listening on http://127.0.0.1:"), line
        base = line.split()[3]
        while not line.startswith("fastllm: ready"):
            line = p.stderr.readline()
            assert line, "the server ended before it was ready"
        assert "2 slots of 128 tokens, API key required" in line
        h = {"authorization": "Bearer k1"}
        assert httpx.get(f"{base}/v1/models").status_code == 401
        models = httpx.get(f"{base}/v1/models", headers=h).json()["data"]
        assert [(m["id"], m["meta"]["n_ctx"], m["meta"]["n_slots"]) for m in models] == [
            ("tiny", 128, 2)]
        r = httpx.post(f"{base}/v1/completions", headers=h,
                       json={"model": "tiny", "prompt": "A", "max_tokens": 3})
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err  # as `fastllm run`: ended by Ctrl-C, after a clean shutdown
    assert "Application shutdown complete" in err and "Traceback" not in err


def test_serve_command_errors(stories260k, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        p = serve_cmd("-m", str(stories260k), "--port", str(port))
        _, err = p.communicate(timeout=120)
    finally:
        busy.close()
    assert p.returncode == 1
    assert err.strip().splitlines() == [(f"fastllm: error: cannot listen on 127.0.0.1:{port} "
                                        f"(--host, --port): Address already in use")]
    # a model that fails to load ends the server with the loader's one-line error
    p = serve_cmd("-m", str(tmp_path / "none.gguf"), "--port", "0", "-q")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.strip().startswith("fastllm: error:") and "none.gguf" in err
    assert len(err.strip().splitlines()) == 1, err
    # bad flags: one line, exit 2, nothing loaded
    p = serve_cmd("--port", "70000")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--port" in err and "0..65535" in err


def test_without_the_serve_extra(stories260k):
    """Starlette missing: one line naming the install command."""
    code = ("import sys; sys.modules['starlette'] = None; from fastllm.cli import main; "
            f"sys.exit(main(['serve', '-m', {str(stories260k)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == ("fastllm: error: the server needs starlette: "
                                "pip install 'fastllm-gpu[serve]'")
