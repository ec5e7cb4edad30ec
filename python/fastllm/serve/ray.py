"""fastllm's server as a Ray Serve deployment: replicas behind Ray's HTTP proxy.

Each replica owns a Model and its fastllm.Engine and serves fastllm.serve.create_app's ASGI app
(`@serve.ingress`), so every endpoint, error shape and stream of `fastllm serve` is the same
through Ray. Ray places the replicas (a GPU each where asked), restarts one that dies and scales
their number between bounds when an autoscaling config is given.

    fastllm serve -m model.gguf --ray --replicas 2              # a local Ray, or $RAY_ADDRESS's
    serve run fastllm.serve.ray:build model=model.gguf replicas=2   # Ray's own command

or from Python: `serve.run(fastllm.serve.ray.deployment("model.gguf", replicas=2))`.

Session affinity: a request with the header `X-Session-ID` (Ray's session header; the variable
RAY_SERVE_SESSION_ID_HEADER_KEY renames it) goes to the same replica as the session's other
requests while that replica is up and has room (SessionRouter), so a conversation's next turn
finds its prefix in that replica's cache. Ray's proxy streams the request body to the replica
after routing, so a router sees the headers only: the key is a header, not a body field.

Needs the `ray` extra: pip install 'fastllm-gpu[ray]'.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ArgumentError, FastLLMError
from . import MissingExtraError
from . import require as require_serve

INSTALL = "pip install 'fastllm-gpu[ray]'"
APP_NAME = "fastllm"
REPLICA_HEADER = "x-fastllm-replica"  # which replica answered: for logs, load checks and tests


def require() -> None:
    """Raise MissingExtraError, naming the install command, without Ray Serve (or Starlette)."""
    require_serve()
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"scaling out needs Ray Serve: {INSTALL}") from None


# after the check, so that a missing extra is one line naming the install command
require()

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

# -- routing -----------------------------------------------------------------------------------

def _affinity(session: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{session}\0{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class SessionRouter(RequestRouter):
    """Ray Serve request router: a request with a session id (the X-Session-ID header) goes to
    the replica that ranks first for that id by rendezvous hashing, falling back to the next
    ranked when it is full or gone; one without goes to the less loaded of two random replicas
    (power of two choices, Ray's default). Rendezvous hashing needs no shared state: every
    proxy ranks a session's replicas the same way, and when a replica leaves only its own
    sessions move."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None,
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        session = pending_request.metadata.session_id if pending_request is not None else ""
        if session:
            ranked = sorted(candidate_replicas, reverse=True,
                            key=lambda r: _affinity(session, r.replica_id.unique_id))
            return [[r] for r in ranked]
        if len(candidate_replicas) <= 2:
            return [list(candidate_replicas)]
        return [random.sample(list(candidate_replicas), 2)]


# -- the proxy ---------------------------------------------------------------------------------

class ReplicaFailure:
    """ASGI middleware for Serve's HTTP proxy: a request whose replica failed before answering
    (it died, or was restarted) gets OpenAI's error shape, 502 with code "replica_failed",
    instead of the proxy's bare 500 text (clients retry a 502: the request never ran to its
    end anywhere); a stream cut short by its replica's death ends with an error event and
    [DONE], as the server's own engine failures do, instead of a dropped connection, so that
    a client sees an error and not a reply that merely stops."""

    MESSAGE = ("the replica serving this request stopped before it finished (it died or was "
               "restarted; Ray Serve's logs say why); the request can be sent again")

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "sse": False, "ended": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                state["started"] = True
                headers = dict(message.get("headers", ()))
                state["sse"] = headers.get(b"content-type", b"").startswith(
                    b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        failure = None
        try:
            await self.app(scope, receive, watch)
        except Exception as e:  # noqa: BLE001 (answered below, in the API's shape, if it can be)
            failure = e
        if state["ended"] or (state["started"] and not state["sse"]):
            if failure is not None:
                raise failure
            return
        from .protocol import DONE, APIError, sse

        error = APIError(502, self.MESSAGE, "server_error", code="replica_failed").body()
        if not state["started"]:
            body = json.dumps(error).encode()
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.body", "body": sse(error) + DONE})


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"


def proxy_middlewares() -> list:
    """The middleware list Serve's proxy takes from RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
    (fastllm.serve.ray.proxy_middlewares): ReplicaFailure."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaFailure)]


def start_ray(**kwargs: Any) -> None:
    """ray.init(**kwargs), with Serve's proxy set to load ReplicaFailure. The proxy reads its
    middleware from the environment it starts in, so this works where ray.init starts Ray (a
    local Ray); a cluster started with `ray start` needs the variable set there:
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=fastllm.serve.ray.proxy_middlewares."""
    import ray

    global _local_ray
    os.environ.setdefault(PROXY_CALLBACK_ENV, f"{__name__}.proxy_middlewares")
    kwargs.setdefault("logging_level", "warning")
    ray.init(**kwargs)
    _local_ray = not (kwargs.get("address") or os.environ.get("RAY_ADDRESS"))


_local_ray = False  # start_ray started a Ray of its own (which shutdown() then stops)


# -- the replica -------------------------------------------------------------------------------

def replica_adapter(backend: str | None) -> int | None:
    """The WebGPU adapter index of the GPU Ray assigned this replica (None: no GPU assigned, or
    FASTLLM_WEBGPU_ADAPTER set, which then decides). Ray hands GPUs out by setting
    CUDA_VISIBLE_DEVICES, which wgpu does not read."""
    import ray

    from ..backends.webgpu.adapters import ADAPTER_ENV, gpu_adapter_index

    if backend in ("reference", "metal") or os.environ.get(ADAPTER_ENV, "").strip():
        return None
    ids = ray.get_gpu_ids()
    if not ids:
        return None
    from ..backends.webgpu.backend import _wgpu

    infos = [dict(a.info) for a in _wgpu().gpu.enumerate_adapters_sync()]
    return gpu_adapter_index(infos, int(ids[0]))


def _tagged(app: Any, replica: str) -> Any:
    """The ASGI app with the replica's id on every HTTP response (REPLICA_HEADER)."""
    header = (REPLICA_HEADER.encode(), replica.encode())

    async def tagged(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        return await app(scope, receive, send_tagged)

    return tagged


@serve.ingress()
class FastLLMReplica:
    """One replica: the model loaded once, at start (Ray counts the replica as up only after
    this returns), and create_app over its engine."""

    def __init__(self, model: str, backend: str | None = None, n_ctx: int | None = None,
                 parallel: int = 4, alias: str | None = None, api_key: str | None = None,
                 max_queue: int | None = None, cors_origins: Sequence[str] = ()):
        from ..engine import Engine
        from ..model import Model

        adapter = replica_adapter(backend)
        self.model = Model.load(model, backend=backend, n_ctx=n_ctx, n_seq=parallel,
                                quiet=True, adapter=adapter)
        self.engine = Engine(self.model, max_queue=max_queue)
        self.app_args = {"model_name": alias, "api_key": api_key, "cors_origins": tuple(cors_origins),
                         "max_queue": max_queue}
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        from . import create_app

        return _tagged(create_app(self.engine, **self.app_args), self.replica)

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose engine thread has ended is replaced."""
        if not self.engine._thread.is_alive():
            raise RuntimeError("the engine's thread has stopped")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
            self.model.close()


# -- building the application ------------------------------------------------------------------

def deployment(model: str | os.PathLike, *, backend: str | None = None, n_ctx: int | None = None,
               parallel: int = 4, alias: str | None = None, api_key: str | None = None,
               max_queue: int | None = None, cors_origins: Sequence[str] = (),
               replicas: int = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, target_ongoing: float | None = None,
               num_cpus: float = 1.0, num_gpus: float | None = None,
               resources: Mapping[str, float] | None = None,
               max_ongoing_requests: int | None = None,
               session_affinity: bool = True) -> serve.Application:
    """The Ray Serve application (pass it to serve.run): `replicas` replicas of `model`, each a
    Model of `parallel` slots (n_seq) of n_ctx tokens on `backend` (Model.load's arguments).

    Autoscaling: with max_replicas set, Ray keeps between min_replicas (default 1) and
    max_replicas replicas, starting from `replicas`, aiming at `target_ongoing` requests per
    replica (default: `parallel`, one per slot).
    Placement, per replica: num_cpus, num_gpus (default: 1 where the backend may be WebGPU and
    the Ray cluster has GPUs, else 0; each replica then opens the GPU Ray gave it) and custom
    `resources` (on a Mac, where Ray sees no GPU: {"apple_gpu": 1} with
    `ray start --head --resources '{"apple_gpu": 1}'`).
    max_ongoing_requests: requests Ray sends one replica at once (default: twice its slots: a
    slot each and as many waiting in its engine; the rest wait in Ray, for the first replica
    with room). session_affinity: route by X-Session-ID (SessionRouter)."""
    import ray

    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ArgumentError(f"replicas must be an int >= 1, got {replicas!r}")
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ArgumentError(f"parallel must be an int >= 1, got {parallel!r}")
    path = os.fspath(model)
    if num_gpus is None:
        gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
        num_gpus = 1 if backend in (None, "webgpu") and gpus > 0 else 0
    actor = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if resources:
        actor["resources"] = dict(resources)
    options: dict[str, Any] = {
        "name": "FastLLM", "ray_actor_options": actor,
        "max_ongoing_requests": max_ongoing_requests or 2 * parallel,
        # loading the model is the slow part of a replica's start; a health check during it
        # would find nothing to check
        "health_check_period_s": 5,
    }
    if max_replicas is not None:
        lo = 1 if min_replicas is None else min_replicas
        if not 0 <= lo <= replicas <= max_replicas:
            raise ArgumentError(f"autoscaling needs min_replicas <= replicas <= max_replicas, "
                                f"got {lo} <= {replicas} <= {max_replicas}")
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=lo, max_replicas=max_replicas, initial_replicas=replicas,
            target_ongoing_requests=target_ongoing or parallel)
    elif min_replicas is not None or target_ongoing is not None:
        raise ArgumentError("min_replicas and target_ongoing are autoscaling settings: give "
                            "max_replicas too")
    else:
        options["num_replicas"] = replicas
    if session_affinity:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=f"{__name__}.SessionRouter")
    dep = serve.deployment(**options)(FastLLMReplica)
    return dep.bind(path, backend=backend, n_ctx=n_ctx, parallel=parallel, alias=alias,
                    api_key=api_key, max_queue=max_queue, cors_origins=tuple(cors_origins))


_BUILD_ARGS = {  # `serve run fastllm.serve.ray:build KEY=VALUE ...`: each key's type
    "model": str, "backend": str, "n_ctx": int, "parallel": int, "alias": str, "api_key": str,
    "max_queue": int, "replicas": int, "min_replicas": int, "max_replicas": int,
    "target_ongoing": float, "num_cpus": float, "num_gpus": float, "resources": json.loads,
    "max_ongoing_requests": int, "session_affinity": lambda s: s.lower() in ("1", "true", "yes"),
}


def build(args: dict[str, str]) -> serve.Application:
    """Ray's application builder: `serve run fastllm.serve.ray:build model=PATH replicas=2 ...`
    (the keyword arguments of deployment(), as KEY=VALUE; resources as JSON)."""
    unknown = sorted(set(args) - set(_BUILD_ARGS))
    if unknown:
        raise ArgumentError(f"unknown argument{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(unknown)}; known: {', '.join(_BUILD_ARGS)}")
    if "model" not in args:
        raise ArgumentError("model=PATH is required (a GGUF file every Ray node can read)")
    kw = {}
    for key, text in args.items():
        try:
            kw[key] = _BUILD_ARGS[key](text) if isinstance(text, str) else text
        except ValueError as e:
            raise ArgumentError(f"{key}={text!r}: {e}") from None
    return deployment(kw.pop("model"), **kw)


# -- running it -------------------------------------------------------------------------------

def launch(app: serve.Application, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy on host:port (on a Ray already started, else start_ray()'s:
    a local one, or the cluster at RAY_ADDRESS; a Serve already running keeps its own proxy
    settings) and deploy `app` there as the application "fastllm" at /; returns the
    base URL once every replica is up (its model loaded)."""
    import ray

    if not ray.is_initialized():
        start_ray(log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def shutdown() -> None:
    """Remove the application and leave Ray. A Ray that start_ray() started stops, with Serve
    (its processes that outlive ray.shutdown() are ended too: seen here, the dashboard and
    runtime-env agents of a Ray stopped while Serve ran); on a cluster this process only
    joined, the other applications and Serve stay."""
    import ray

    from .ray_procs import end, ray_descendants

    global _local_ray
    if not ray.is_initialized():
        return
    ours = ray_descendants() if _local_ray else []
    try:
        if _local_ray:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()
        _local_ray = False
        end(ours)


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_cli(a: Any, say: Any) -> int:
    """`fastllm serve --ray`: deploy, print the URL, serve until Ctrl-C or SIGTERM."""
    import signal
    import time

    from ..pull import resolve

    path = os.path.abspath(resolve(a.model, quiet=a.quiet))  # every replica reads this path
    key = a.api_key if a.api_key is not None else os.environ.get("FASTLLM_API_KEY") or None
    port = a.port or _free_port(a.host)
    resources = {}
    for item in a.replica_resource or ():
        name, _, amount = item.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            raise ArgumentError(f"--replica-resource {item!r}: expected NAME=AMOUNT, e.g. "
                                f"apple_gpu=1") from None
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    say(a, f"starting {a.replicas} replica{'s' if a.replicas != 1 else ''} on Ray "
           f"({os.environ.get('RAY_ADDRESS') or 'a local Ray'}); each loads {path}")
    try:
        # a local Ray lives as long as this command: no dashboard to look at afterwards
        try:
            start_ray(log_to_driver=not a.quiet,
                      **({} if os.environ.get("RAY_ADDRESS") else {"include_dashboard": False}))
        except Exception as e:  # Ray's own exceptions, said in one line
            where = os.environ.get("RAY_ADDRESS")
            raise FastLLMError(f"Ray did not start{f' (RAY_ADDRESS={where})' if where else ''}"
                               f": {type(e).__name__}: {e}") from e
        # either signal ends the command where it is (loading, or serving) through the
        # `finally` below, which shuts Serve and a local Ray down. Set after ray.init, whose
        # own SIGTERM handler aborts the process, leaving Ray's agents behind; SIGINT too,
        # as a shell may have started this command with it ignored
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        app = deployment(path, backend=a.backend, n_ctx=a.ctx, parallel=a.parallel,
                         alias=a.alias, api_key=key, max_queue=a.max_queue,
                         cors_origins=a.cors_origin or (), replicas=a.replicas,
                         min_replicas=a.min_replicas, max_replicas=a.max_replicas,
                         target_ongoing=a.target_ongoing, num_cpus=a.replica_cpus,
                         num_gpus=a.replica_gpus, resources=resources)
        url = launch(app, a.host, port)
        say(a, f"ready: chat page {url}/, API {url}/v1 through Ray Serve's proxy "
               f"({a.replicas} replica{'s' if a.replicas != 1 else ''} of {a.parallel} "
               f"slot{'s' if a.parallel != 1 else ''}{', API key required' if key else ''})")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()
    if signal.SIGINT in interrupted:
        raise KeyboardInterrupt  # Ctrl-C: exit status 130, as `fastllm serve` without Ray
    return 0


__all__ = ["APP_NAME", "INSTALL", "REPLICA_HEADER", "FastLLMReplica", "ReplicaFailure", "SessionRouter", "build",
           "deployment", "launch", "proxy_middlewares", "replica_adapter", "require", "run_cli", "shutdown",
           "start_ray"]
