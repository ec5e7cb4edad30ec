"""The ASGI app: OpenAI's endpoints over a fastllm.Engine, /health, /metrics and the chat page.

Every request is handled on the event loop; the engine's thread runs the model and wakes the
loop when a request has new text (Request.stream). A client that goes away cancels its
requests, which frees their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import ContextOverflowError, FastLLMError, TemplateError, TokenizerError
from . import protocol as P
from .metrics import Metrics
from .replies import Choice, EventStream, Reply, cancel_on_disconnect, engine_error

log = logging.getLogger("fastllm.serve")

MAX_BODY = 32 << 20  # bytes; a longer body is refused before it is read


class _State:
    """What the handlers share: the engine (None while it loads), the model's name, counters."""

    def __init__(self, engine: Any, model_name: str | None, api_key: str | None,
                 max_queue: int | None, on_load_error: Callable | None,
                 on_ready: Callable | None):
        self.alias = model_name
        self.api_key = api_key
        self.max_queue = max_queue
        self.on_load_error = on_load_error
        self.on_ready = on_ready
        self.load_error: BaseException | None = None
        self.created = int(time.time())
        self.metrics = Metrics()
        self.tokens: dict[int, tuple[str, list[int]]] = {}  # token id -> (text, bytes)
        self.engine = None
        self.owns_engine = False
        self.loader: Callable | None = None
        if callable(engine) and not hasattr(engine, "submit"):
            self.loader = engine
        else:
            self._ready(engine)

    def _ready(self, engine: Any) -> None:
        m = engine.model
        # the chat template is built once here, not lazily by racing request threads
        with contextlib.suppress(FastLLMError):
            m.chat_prompt([{"role": "user", "content": ""}])
        self.engine = engine
        if self.on_ready is not None:
            self.on_ready(engine)

    @property
    def name(self) -> str:
        if self.alias:
            return self.alias
        path = str(getattr(self.engine.model, "path", "model"))
        base = os.path.basename(path)
        return base[:-5] if base.lower().endswith(".gguf") else base

    def load(self) -> None:
        try:
            engine = self.loader()
            self.owns_engine = True
            self.created = int(time.time())
            self._ready(engine)
        except BaseException as e:  # noqa: BLE001 (reported by /health and on_load_error)
            self.load_error = e
            if self.on_load_error is not None:
                self.on_load_error(e)

    def token(self, tid: int) -> tuple[str, list[int]]:
        """A token's text and bytes, for logprobs."""
        got = self.tokens.get(tid)
        if got is None:
            piece = self.engine.model.tokenizer.token_to_piece(tid)
            got = self.tokens[tid] = (piece.decode("utf-8", "replace"), list(piece))
        return got


def create_app(engine: Any, *, model_name: str | None = None, api_key: str | None = None,
               cors_origins: Sequence[str] = (), max_queue: int | None = None,
               on_load_error: Callable[[BaseException], None] | None = None,
               on_ready: Callable[[Any], None] | None = None) -> Starlette:
    """An ASGI app serving `engine` (a fastllm.Engine, or a function that returns one: it is
    called on a thread at startup, and /health answers 503 until it returns).

    model_name: the id /v1/models lists (default: the model file's name without .gguf);
    api_key: required as `Authorization: Bearer KEY` on /v1/* and /metrics when set;
    cors_origins: origins allowed to call from a browser (none: same origin only);
    max_queue: requests allowed to wait for a slot before 429 (default: the engine's);
    on_load_error: called with the exception if the loading function fails;
    on_ready: called with the engine once the app serves it (after a load: on its thread)."""
    st = _State(engine, model_name, api_key,
                max_queue if max_queue is not None else getattr(engine, "max_queue", None),
                on_load_error, on_ready)
    page = resources.files(__package__).joinpath("static/chat.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if st.loader is not None:
            # not joined at shutdown: a load still running dies with the process
            threading.Thread(target=st.load, name="fastllm-load", daemon=True).start()
        try:
            yield
        finally:
            if st.owns_engine and st.engine is not None:
                await asyncio.to_thread(st.engine.close)

    def guard(request: Request) -> Any:
        """The engine, after the key check; 503 while loading."""
        if st.api_key is not None:
            auth = request.headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), st.api_key.encode()):
                raise P.APIError(401, "Incorrect or missing API key: send it as "
                                      "'Authorization: Bearer KEY'",
                                 "authentication_error", code="invalid_api_key")
        if st.engine is None:
            if st.load_error is not None:
                raise P.APIError(503, f"the model failed to load: {st.load_error}",
                                 "server_error", code="model_load_failed")
            raise P.APIError(503, "the model is loading", "server_error", code="loading")
        return st.engine

    async def health(request: Request) -> Response:
        if st.engine is not None:
            return JSONResponse({"status": "ok"})
        if st.load_error is not None:
            return JSONResponse({"status": "error", "error": str(st.load_error)}, 503)
        return JSONResponse({"status": "loading"}, 503)

    async def models(request: Request) -> Response:
        guard(request)
        return JSONResponse({"object": "list", "data": [_model_card()]})

    async def model(request: Request) -> Response:
        guard(request)
        if request.path_params["model"] != st.name:
            raise _unknown_model(request.path_params["model"])
        return JSONResponse(_model_card())

    def _model_card() -> dict:
        m = st.engine.model
        return {"id": st.name, "object": "model", "created": st.created, "owned_by": "fastllm",
                "meta": {"n_ctx": m.n_ctx, "n_slots": m.n_seq, "n_vocab": m.n_vocab,
                         "architecture": m.config.arch}}

    async def metrics(request: Request) -> Response:
        guard(request)
        e = st.engine
        text = st.metrics.render(e.running, e.pending, e.n_seq)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # none: a browser's request for it is not an error

    async def chat_completions(request: Request) -> Response:
        return await _generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await _generate(request, "text")

    # -- generation ----------------------------------------------------------------------------
    async def _generate(request: Request, kind: str) -> Response:
        eng = guard(request)
        m = eng.model
        body = P.parse_body(await _read_body(request))
        p = (P.chat_params if kind == "chat" else P.completion_params)(body, m.n_vocab)
        if body.get("model") not in (None, "", st.name):
            raise _unknown_model(body.get("model"))
        try:
            ids = await asyncio.to_thread(_prompt_ids, m, p.prompts, kind, p)
        except (TemplateError, TokenizerError) as e:
            raise P.bad("messages" if kind == "chat" else "prompt", str(e)) from None
        explicit = body.get("max_tokens") is not None or body.get(
            "max_completion_tokens") is not None
        for x in ids:
            _check_context(m.n_ctx, len(x), p, explicit, kind)
        reqs = _submit(eng, ids, p)
        echoes = [""] * len(ids)
        if p.echo:
            echoes = [x if isinstance(x, str) else m.detokenize(x) for x in p.prompts]
        choices = [Choice(i, r, echoes[i // p.n]) for i, r in enumerate(reqs)]
        if p.tools or (kind == "chat" and _harmony(m)):  # calls parsed out of each choice
            from .tool_calls import ToolReply

            reply = ToolReply(kind, choices, p, st.name, st.token, st.metrics.generated,
                              tokenizer=m.tokenizer, template=m.chat_template().source,
                              tool_choice=p.tool_choice)
        else:
            reply = Reply(kind, choices, p, st.name, st.token, st.metrics.generated)
        if p.stream:
            return EventStream(reply.events(), reqs, lambda: _done(kind, choices, p))
        async with cancel_on_disconnect(request.receive, reqs):
            try:
                await reply.collect()
            except Exception as e:  # noqa: BLE001 (the engine's failure, as a 500 reply)
                raise engine_error(e) from None
            finally:
                _done(kind, choices, p)
        return JSONResponse(reply.body())

    def _submit(eng: Any, ids: list[list[int]], p: P.Params) -> list[Any]:
        count = len(ids) * p.n
        waiting = eng.pending + count - max(0, eng.n_seq - eng.running)
        if st.max_queue is not None and waiting > st.max_queue:
            raise _queue_full()
        reqs = []
        try:
            for x in ids:
                for j in range(p.n):
                    seed = None if p.seed is None else (p.seed + j) % (1 << 64)
                    reqs.append(eng.submit(x, max_tokens=p.max_tokens, seed=seed,
                                           logprobs=p.logprobs, **p.sampling))
        except BaseException as e:
            for r in reqs:
                r.cancel()
            if isinstance(e, ContextOverflowError):
                raise P.bad("messages" if "messages" in str(e) else "prompt", str(e),
                            "context_length_exceeded") from None
            if isinstance(e, ValueError):  # ArgumentError: names the engine's argument
                raise _argument_error(e) from None
            if isinstance(e, FastLLMError) and "queue is full" in str(e):
                raise _queue_full() from None
            raise
        return reqs

    def _done(kind: str, choices: list[Choice], p: P.Params) -> None:
        """Counters and cancellation at the end of a reply (or when its client left)."""
        for c in choices:
            if not c.req.done:
                c.req.cancel()
        for i, c in enumerate(choices):
            u = c.req.usage
            first = i % p.n == 0  # n copies of a prompt count its tokens once
            outcome = c.req.finish_reason or ("error" if c.req.error else "cancelled")
            st.metrics.finished(kind, outcome, u.prompt_tokens if first else 0,
                                u.cached_tokens if first else 0)
            st.metrics.generated(len(c.req.token_ids) - c.counted)
            c.counted = len(c.req.token_ids)

    def _unknown_model(name: Any) -> P.APIError:
        return P.APIError(404, f"The model '{name}' does not exist: this server has "
                               f"'{st.name}' (GET /v1/models)", param="model",
                          code="model_not_found")

    def _queue_full() -> P.APIError:
        return P.APIError(429, f"too many requests are waiting for a slot (--max-queue "
                               f"{st.max_queue}); retry later", "rate_limit_error",
                          code="queue_full")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))
    handlers = {P.APIError: _api_error, HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers,
                     lifespan=lifespan)


# -- helpers that need no state ---------------------------------------------------------------

def _prompt_ids(m: Any, prompts: list[Any], kind: str, p: Any = None) -> list[list[int]]:
    """The prompts' token ids, on a worker thread (templates, tokenizers); a response_format
    schema is compiled here too, once for every choice, not on the event loop."""
    if kind == "chat" and p is not None and p.tools:
        from .tool_calls import chat_prompt

        ids = [chat_prompt(m, msgs, p) for msgs in prompts]
    elif kind == "chat":
        ids = [m.chat_prompt(msgs) for msgs in prompts]
    else:
        ids = [m.prompt_ids(x) for x in prompts]
    if p is not None and p.sampling.get("json_schema") is not None:
        from ..constrain import compile_constraint

        try:
            p.sampling["constraint"] = compile_constraint(
                m.tokenizer, m.n_vocab, json_schema=p.sampling.pop("json_schema"))
        except ValueError as e:  # ArgumentError: llguidance's reason
            raise P.bad("response_format", str(e), "invalid_value") from None
    return ids


def _harmony(m: Any) -> bool:
    """A gpt-oss template: its replies' channels are parsed (reasoning is not content) with or
    without tools (tool_calls.py)."""
    from ..tools import tool_format

    return tool_format(m.chat_template().source) == "harmony"


def _check_context(n_ctx: int, n_prompt: int, p: P.Params, explicit: bool, kind: str) -> None:
    """OpenAI's rule: the prompt and max_tokens must fit the context (a default max_tokens is
    cut to what fits)."""
    where = "messages" if kind == "chat" else "prompt"
    if n_prompt >= n_ctx:
        raise P.bad(where, f"This model's maximum context length is {n_ctx} tokens; the "
                           f"{where} has {n_prompt} tokens", "context_length_exceeded")
    if p.max_tokens is not None and n_prompt + p.max_tokens > n_ctx:
        if not explicit:
            p.max_tokens = n_ctx - n_prompt
            return
        raise P.bad("max_tokens", f"This model's maximum context length is {n_ctx} tokens; "
                                  f"you requested {n_prompt + p.max_tokens} tokens ({n_prompt} "
                                  f"in the {where}, {p.max_tokens} for the completion)",
                    "context_length_exceeded")


async def _read_body(request: Request) -> bytes:
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > MAX_BODY:
        raise P.APIError(413, f"the request body is over {MAX_BODY >> 20} MiB",
                         code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise P.APIError(413, f"the request body is over {MAX_BODY >> 20} MiB",
                             code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


_ARG = re.compile(r"sampling argument (\w+)=|^(\w+) must")
_ARG_NAMES = {"last_n": "repeat_last_n"}


def _argument_error(e: ValueError) -> P.APIError:
    m = _ARG.search(str(e))
    name = (m.group(1) or m.group(2)) if m else None
    return P.bad(_ARG_NAMES.get(name, name), str(e), "invalid_value")


async def _api_error(request: Request, exc: P.APIError) -> Response:
    headers = {"retry-after": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), exc.status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    what = {404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}"}
    body = P.APIError(exc.status_code, what.get(exc.status_code, str(exc.detail)), kind)
    return JSONResponse(body.body(), exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # the traceback goes to the server's log, never to the client
    log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
    body = P.APIError(500, f"internal error ({type(exc).__name__})", "server_error")
    return JSONResponse(body.body(), 500)
