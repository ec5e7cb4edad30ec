"""`fastllm serve`: bind, start uvicorn at once, load the model on a thread meanwhile.

The socket is bound here, before uvicorn starts, so that a port in use is one line of error
and `--port 0` can say which port it got.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable

from ..errors import FastLLMError


class ServeError(FastLLMError, OSError):
    """The server cannot listen where it was told to."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} (--host, --port): "
                         f"{e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(a: argparse.Namespace, load: Callable, say: Callable) -> int:
    """Serve until Ctrl-C (or SIGTERM); a model that fails to load ends it with that error."""
    import uvicorn

    from ..engine import Engine
    from .app import create_app

    key = a.api_key if a.api_key is not None else os.environ.get("FASTLLM_API_KEY") or None
    sock = bind(a.host, a.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def loader() -> Engine:
        return Engine(load(a, n_seq=a.parallel))

    def on_ready(engine: Engine) -> None:
        say(a, f"ready: chat page {url}/, API {url}/v1 ({a.parallel} slot"
               f"{'s' if a.parallel != 1 else ''} of {engine.model.n_ctx} tokens"
               f"{', API key required' if key else ''})")

    def on_load_error(e: BaseException) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True

    app = create_app(loader, model_name=a.alias, api_key=key, cors_origins=a.cors_origin or (),
                     max_queue=a.max_queue, on_load_error=on_load_error,
                     on_ready=on_ready)
    config = uvicorn.Config(app, log_level="warning" if a.quiet else "info",
                            access_log=not a.quiet, timeout_graceful_shutdown=3,
                            lifespan="on")
    server = uvicorn.Server(config)
    say(a, f"listening on {url} (loading the model: /health answers 503 until it has loaded)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failed:
        e = failed[0]
        if isinstance(e, FastLLMError):
            raise e
        raise FastLLMError(f"the model failed to load: {type(e).__name__}: {e}") from e
    return 0
