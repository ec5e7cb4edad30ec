"""fastllm's server as a Ray Serve deployment (fastllm.serve.ray): a local Ray with two
replicas of stories260K on the reference backend (half a CPU each), reached through Ray's HTTP
proxy by OpenAI's own client and by raw HTTP. Greedy text is checked against llama.cpp's
(../shared/reference); which replica answered comes from the x-fastllm-replica header.

One Ray instance serves the whole module (Ray takes seconds to start); it is shut down, with
Serve, at the module's end. Outside CI the module skips where Ray cannot start; under CI=true
that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from serve_helpers import WAIT_STEPS, wait_for

openai = pytest.importorskip("openai")
if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("ray.serve", reason="the ray extra is not installed")
import httpx

from fastllm.serve.ray import APP_NAME, REPLICA_HEADER, deployment, launch, shutdown, start_ray

REPLICAS, SLOTS, CTX = 2, 4, 640
LONG = 500  # tokens of the streams a replica is killed under: far longer than the kill takes
EOS_OFF = {"2": -100}  # stories260K's end of generation: a request that must run to max_tokens


@pytest.fixture(scope="module")
def ref(data_dir) -> dict:
    return json.loads((data_dir / "reference" / "stories260K.json").read_text())


@pytest.fixture(scope="module")
def base(stories260k):
    import ray

    try:
        start_ray(num_cpus=2, object_store_memory=96 << 20, include_dashboard=False,
                  log_to_driver=False)
    except Exception as e:  # noqa: BLE001 (why Ray cannot start here is the skip's reason)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Ray did not start under CI: {type(e).__name__}: {e}")
        pytest.skip(f"Ray cannot start here: {type(e).__name__}: {e}")
    try:
        app = deployment(stories260k, backend="reference", n_ctx=CTX, parallel=SLOTS,
                         replicas=REPLICAS, num_cpus=0.5)
        yield launch(app, "127.0.0.1", _free_port())
    finally:
        shutdown()
    assert not ray.is_initialized()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(base):
    # no retries: a request that fails must show here, not be hidden by the client
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _running() -> int:
    """How many replicas of the deployment Serve reports running."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None:
        return 0
    return app.deployments["FastLLM"].replica_states.get("RUNNING", 0)


def _replica_actors() -> dict[str, object]:
    """Replica id -> its Ray actor handle."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        if name.startswith(f"SERVE_REPLICA::{APP_NAME}#FastLLM#"):
            out[name.rsplit("#", 1)[1]] = ray.get_actor(name, namespace=a["namespace"])
    return out


def test_openai_client_through_the_proxy(client, ref):
    """Whole and streamed, chat and completions: the endpoints of `fastllm serve`, with
    llama.cpp's greedy text, through Ray's proxy."""
    want = ref["llamacpp_0.3.36_greedy_text"]
    assert [m.id for m in client.models.list().data] == ["stories260K"]
    raw = client.completions.with_raw_response.create(model="stories260K", prompt="",
                                                      max_tokens=60, temperature=0)
    assert raw.headers[REPLICA_HEADER]
    r = raw.parse()
    assert want.startswith(r.choices[0].text) and len(r.choices[0].text) > 100
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 60
    chunks = list(client.completions.create(model="stories260K", prompt="", max_tokens=60,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    chat = [{"role": "user", "content": "Tell me about a cat."}]
    whole = client.chat.completions.create(model="stories260K", messages=chat, max_tokens=16,
                                           temperature=0, logit_bias=EOS_OFF)
    parts = list(client.chat.completions.create(model="stories260K", messages=chat,
                                                max_tokens=16, temperature=0,
                                                logit_bias=EOS_OFF, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == \
        whole.choices[0].message.content
    assert whole.usage.completion_tokens == 16
    # the server's own errors come through the proxy unchanged
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories260K", prompt="x", max_tokens=CTX)
    assert e.value.body["code"] == "context_length_exceeded"


def test_session_affinity(base):
    """Requests of one X-Session-ID go to one replica; sessions spread over both."""
    seen: dict[str, set[str]] = {}
    with httpx.Client(base_url=base, timeout=120) as h:
        for turn in range(2):
            for s in range(16):
                r = h.post("/v1/completions", headers={"X-Session-ID": f"conversation-{s}"},
                           json={"prompt": f"Turn {turn} of {s}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                seen.setdefault(f"conversation-{s}", set()).add(r.headers[REPLICA_HEADER])
    assert all(len(v) == 1 for v in seen.values()), seen
    # 16 sessions all on one replica: 2**-15 for a uniform hash
    assert len(set().union(*seen.values())) == REPLICAS


def test_bounded_load_spreads_over_replicas(base):
    """48 streamed requests from 12 loopback clients: every one ends with [DONE], none
    fails, and both replicas served some."""
    async def one(h: httpx.AsyncClient, i: int) -> str:
        body = {"prompt": f"Once upon a time {i}", "max_tokens": 8 + i % 8, "stream": True,
                "logit_bias": EOS_OFF, "temperature": 0}
        async with h.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            lines = [x async for x in r.aiter_lines() if x.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            text = "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[:-1])
            assert text, lines
            return r.headers[REPLICA_HEADER]

    async def client(h: httpx.AsyncClient, c: int) -> list[str]:
        return [await one(h, c * 4 + k) for k in range(4)]

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=base, timeout=300) as h:
            got = await asyncio.gather(*(client(h, c) for c in range(12)))
        return [x for g in got for x in g]

    replicas = asyncio.run(main())
    assert len(replicas) == 48
    assert len(set(replicas)) == REPLICAS


def _owners(h: httpx.Client, n: int) -> dict[str, str]:
    """Session id -> the replica that serves it (SessionRouter's choice, checked above)."""
    return {f"story-{k}": h.post("/v1/completions", json={"prompt": "a", "max_tokens": 1},
                                 headers={"X-Session-ID": f"story-{k}"}).headers[REPLICA_HEADER]
            for k in range(n)}


def test_replica_killed_mid_traffic(base, client):
    """A replica dies while both serve long requests (three streams and one whole reply each,
    placed by session): its streams end in an error event the client raises (never a short
    stream that looks finished), its whole reply is a 502 "replica_failed" (or, had it not
    reached the replica yet, a full reply from the other), the other replica's requests and
    every request sent after the death succeed, and Serve brings the deployment back to two
    replicas."""
    import ray

    actors = _replica_actors()
    assert len(actors) == REPLICAS
    with httpx.Client(base_url=base, timeout=120) as h:
        owners = _owners(h, 40)
    jobs = []  # (session, streamed)
    for replica in actors:
        mine = [k for k, v in owners.items() if v == replica]
        assert len(mine) >= 4, owners  # 40 sessions on two replicas: below 1e-7 to miss this
        jobs += [(mine[0], False)] + [(k, True) for k in mine[1:4]]
    results: dict[int, object] = {}
    started: set[int] = set()

    def run(i: int, session: str, streamed: bool) -> None:
        args = {"model": "stories260K", "prompt": f"Story {i}", "max_tokens": LONG,
                "temperature": 0, "logit_bias": EOS_OFF,
                "extra_headers": {"X-Session-ID": session}}
        try:
            if not streamed:
                r = client.completions.create(**args)
                results[i] = (r.choices[0].finish_reason, r.usage.completion_tokens)
                return
            chunks = []
            for c in client.completions.create(**args, stream=True,
                                               stream_options={"include_usage": True}):
                started.add(i)
                chunks.append(c)
            finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
            results[i] = (finishes[-1], chunks[-1].usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 (the error is what the test checks)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    streams = {i for i, (_, streamed) in enumerate(jobs) if streamed}
    # every stream has its first token: all are in flight, and none ends before LONG tokens
    wait_for(lambda: started >= streams or results, "the streams to start")
    assert not results, results
    victim = min(actors)
    ray.kill(actors[victim], no_restart=True)
    # requests sent while the replica is dead (or being replaced) are not lost
    after = [client.completions.create(model="stories260K", prompt=f"After {i}", max_tokens=4,
                                       logit_bias=EOS_OFF) for i in range(6)]
    assert all(r.choices[0].finish_reason == "length" for r in after)
    for t in threads:
        t.join(300)
    assert len(results) == len(jobs)
    for i, (session, streamed) in enumerate(jobs):
        outcome = results[i]
        if owners[session] != victim:
            assert outcome == ("length", LONG), (i, outcome)
        elif streamed:
            assert isinstance(outcome, openai.APIError), (i, outcome)
            assert outcome.code == "replica_failed" and "replica" in outcome.message
        elif isinstance(outcome, openai.APIStatusError):
            assert outcome.status_code == 502 and outcome.code == "replica_failed", outcome
        else:
            assert outcome == ("length", LONG), (i, outcome)
    # a new replica starts a process and loads the model: on a busy 2-core machine that can
    # take longer than wait_for's bound, so this one polls four times as long
    for _ in range(4 * WAIT_STEPS):
        if (_running() == REPLICAS and len(_replica_actors()) == REPLICAS
                and victim not in _replica_actors()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("Serve did not replace the killed replica")
    with httpx.Client(base_url=base, timeout=120) as h:
        assert set(_owners(h, 16).values()) == set(_replica_actors())


# -- without the cluster -----------------------------------------------------------------------

def _through(app) -> tuple[list[dict], BaseException | None]:
    """The messages ReplicaFailure(app) sends for one HTTP request, and what it raised."""
    from fastllm.serve.ray import ReplicaFailure

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(ReplicaFailure(app)({"type": "http"}, receive, send))
    except Exception as e:  # noqa: BLE001 (returned for the test to check)
        return sent, e
    return sent, None


def test_replica_failure_shapes_the_proxys_errors():
    """The proxy's answer to a replica that died: before the reply, OpenAI's error shape
    (502, replica_failed) instead of nothing; in a stream, an error event and [DONE]; a reply
    that was whole, or not a stream, goes through untouched."""
    async def died_first(scope, receive, send):
        raise RuntimeError("ActorDiedError")

    sent, raised = _through(died_first)
    assert raised is None and sent[0]["status"] == 502
    assert json.loads(sent[1]["body"])["error"]["code"] == "replica_failed"

    async def died_streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})

    sent, raised = _through(died_streaming)
    events = sent[-1]["body"].decode().split("\n\n")
    assert json.loads(events[0].removeprefix("data: "))["error"]["code"] == "replica_failed"
    assert events[1] == "data: [DONE]" and not sent[-1].get("more_body")

    async def whole(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    sent, raised = _through(whole)
    assert raised is None and len(sent) == 2

    async def json_then_failure(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        raise RuntimeError("late")

    sent, raised = _through(json_then_failure)
    assert isinstance(raised, RuntimeError) and len(sent) == 1


def test_build_arguments(stories260k):
    """`serve run fastllm.serve.ray:build KEY=VALUE`: values typed, mistakes named."""
    from fastllm import ArgumentError
    from fastllm.serve.ray import build

    dep = build({"model": str(stories260k), "replicas": "2", "num_cpus": "0.5",
                 "backend": "reference", "resources": '{"apple_gpu": 1}', "parallel": "3"}
                )._bound_deployment
    assert dep.num_replicas == 2 and dep.max_ongoing_requests == 6
    assert dep.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0,
                                     "resources": {"apple_gpu": 1.0}}
    scaling = build({"model": str(stories260k), "replicas": "2", "max_replicas": "5",
                     "backend": "reference"})._bound_deployment._deployment_config
    a = scaling.autoscaling_config
    assert (a.min_replicas, a.initial_replicas, a.max_replicas) == (1, 2, 5)
    assert a.target_ongoing_requests == 4  # one per slot: the default parallel
    assert scaling.request_router_config.request_router_class.endswith("SessionRouter")
    with pytest.raises(ArgumentError, match="unknown argument replica;"):
        build({"model": str(stories260k), "replica": "2"})
    with pytest.raises(ArgumentError, match="model=PATH is required"):
        build({"replicas": "2"})
    with pytest.raises(ArgumentError, match="replicas='two'"):
        build({"model": str(stories260k), "replicas": "two"})
    with pytest.raises(ArgumentError, match="min_replicas <= replicas <= max_replicas"):
        build({"model": str(stories260k), "replicas": "3", "max_replicas": "2"})
    with pytest.raises(ArgumentError, match="give max_replicas too"):
        build({"model": str(stories260k), "min_replicas": "1"})


@pytest.mark.parametrize("args, said", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--replica-resource", "apple_gpu=1"], "--replica-resource needs --ray"),
    (["--ray", "--min-replicas", "2"], "give --max-replicas"),
    (["--ray", "--replicas", "3", "--max-replicas", "2"], "1 <= 3 <= 2"),
    (["--ray", "--replica-resource", "apple_gpu"], "expected NAME=AMOUNT"),
])
def test_serve_scaling_flags(args, said, capsys):
    from fastllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "-m", "x.gguf", *args])
    assert e.value.code == 2
    assert said in capsys.readouterr().err


def test_replica_opens_the_gpu_ray_assigned(monkeypatch):
    """Inside a replica, Ray's GPU id (ray.get_gpu_ids) picks the adapter: here GPU 1 of two,
    each listed under Vulkan and OpenGL after a CPU rasterizer, is adapter 3. The variable,
    when set, decides instead; the reference backend takes no adapter."""
    import types

    import ray

    import fastllm.backends.webgpu.backend as wb
    from fastllm.backends.webgpu.adapters import ADAPTER_ENV
    from fastllm.serve.ray import replica_adapter

    infos = [("llvmpipe", "Vulkan", "CPU"), ("GPU a", "Vulkan", "DiscreteGPU"),
             ("GPU a", "OpenGL", "DiscreteGPU"), ("GPU b", "Vulkan", "DiscreteGPU"),
             ("GPU b", "OpenGL", "DiscreteGPU")]
    fake = types.SimpleNamespace(gpu=types.SimpleNamespace(enumerate_adapters_sync=lambda: [
        types.SimpleNamespace(info={"device": d, "backend_type": api, "adapter_type": kind})
        for d, api, kind in infos]))
    monkeypatch.setattr(wb, "_wgpu", lambda: fake)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["1"])
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    assert replica_adapter("webgpu") == 3 and replica_adapter(None) == 3
    assert replica_adapter("reference") is None
    monkeypatch.setenv(ADAPTER_ENV, "0")
    assert replica_adapter("webgpu") is None  # Model.load reads the variable itself
    monkeypatch.delenv(ADAPTER_ENV)
    monkeypatch.setattr(ray, "get_gpu_ids", list)
    assert replica_adapter("webgpu") is None  # no GPU assigned: wgpu's own choice


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads Linux's /proc")
def test_leftover_ray_processes_are_ended():
    """What shutdown() ends after a local Ray: this process's descendants whose command is
    Ray's, and only those."""
    import subprocess
    import sys

    import ray

    from fastllm.serve.ray_procs import end, ray_descendants

    agent = os.path.join(os.path.dirname(ray.__file__), "dashboard", "agent.py")
    ray_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", agent])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        found = dict(ray_descendants())
        assert ray_like.pid in found and other.pid not in found
        end([(ray_like.pid, found[ray_like.pid])])
        assert ray_like.wait(30) is not None
        assert other.poll() is None
    finally:
        for p in (ray_like, other):
            p.kill()
            p.wait()
