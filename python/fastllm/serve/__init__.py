"""`fastllm serve`: an OpenAI-compatible HTTP server over fastllm.Engine, with a chat page.

    from fastllm import Engine, Model
    from fastllm.serve import create_app
    app = create_app(Engine(Model.load("model.gguf", n_seq=8)))   # any ASGI server runs it

Needs the `serve` extra (Starlette and uvicorn): pip install 'fastllm-gpu[serve]'.
"""

from __future__ import annotations

from ..errors import FastLLMError

INSTALL = "pip install 'fastllm-gpu[serve]'"


class MissingExtraError(FastLLMError, ImportError):
    """The server's dependencies are not installed."""


def require() -> None:
    """Raise MissingExtraError, naming the install command, without Starlette or uvicorn."""
    missing = []
    for mod in ("starlette", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MissingExtraError(f"the server needs {' and '.join(missing)}: {INSTALL}")


def create_app(engine, **kwargs):
    """The ASGI app (Starlette) serving `engine`: see fastllm.serve.app.create_app."""
    require()
    from .app import create_app as make

    return make(engine, **kwargs)


__all__ = ["INSTALL", "MissingExtraError", "create_app", "require"]
