"""One request's reply as the engine produces it: its choices' text as it comes, the stream of
server-sent events or the whole JSON object, log-probabilities in OpenAI's two shapes, and the
cancellation of the engine's requests when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import __version__
from . import protocol as P

FINGERPRINT = f"fastllm-{__version__}"


class Choice:
    """One engine request of a reply: its text so far and how much of its logprobs is out."""

    __slots__ = ("counted", "fast", "index", "n_logprobs", "offset", "req", "text")

    def __init__(self, index: int, req: Any, text: str = ""):
        self.index = index
        self.req = req
        self.text = text
        self.n_logprobs = 0
        self.offset = len(text)  # completions' text_offset of the next token
        self.counted = 0  # generated tokens already in the metrics
        self.fast: tuple[bytes, bytes] | None = None  # a text chunk's bytes around its text


class Reply:
    """A chat ("chat") or text completion ("text") of `choices` for one HTTP request.

    name: the model's id; token(id) -> (text, bytes) for logprobs; generated(n): called as
    tokens are produced (the metrics)."""

    def __init__(self, kind: str, choices: list[Choice], p: P.Params, name: str,
                 token: Callable[[int], tuple[str, list[int]]],
                 generated: Callable[[int], None]):
        self.kind = kind
        self.choices = choices
        self.p = p
        self.name = name
        self.token = token
        self.generated = generated
        self.id = P.new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    # -- the engine's side -----------------------------------------------------------------------
    def _count(self, c: Choice) -> None:
        n = len(c.req.token_ids)
        self.generated(n - c.counted)
        c.counted = n

    async def pieces(self) -> AsyncIterator[tuple[Choice, str | None]]:
        """(choice, new text) as each request advances, (choice, None) when one ends; raises
        the engine's error if a request failed."""
        if len(self.choices) == 1:
            c = self.choices[0]
            async for text in c.req.stream(joined=True):
                self._count(c)
                yield c, text
            self._count(c)
            yield c, None
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(c: Choice) -> None:
            try:
                async for text in c.req.stream(joined=True):
                    queue.put_nowait((c, text))
                queue.put_nowait((c, None))
            except BaseException as e:  # noqa: BLE001 (handed to the consumer)
                queue.put_nowait((c, e))

        tasks = [asyncio.ensure_future(pump(c)) for c in self.choices]
        try:
            left = len(self.choices)
            while left:
                c, text = await queue.get()
                if isinstance(text, BaseException):
                    raise text
                self._count(c)
                left -= text is None
                yield c, text
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> None:
        """Wait for every choice's whole text."""
        async for c, text in self.pieces():
            if text:
                c.text += text

    # -- logprobs --------------------------------------------------------------------------------
    def _new_logprobs(self, c: Choice) -> list | None:
        lps = c.req.logprobs
        if lps is None:
            return None
        new = lps[c.n_logprobs:]
        c.n_logprobs += len(new)
        return new

    def chat_logprobs(self, c: Choice) -> dict | None:
        new = self._new_logprobs(c)
        if new is None:
            return None
        content = []
        for lp in new:
            text, raw = self.token(lp.token)
            top = []
            for tid, v in lp.top:
                t, b = self.token(tid)
                top.append({"token": t, "logprob": _finite(v), "bytes": b})
            content.append({"token": text, "logprob": _finite(lp.logprob), "bytes": raw,
                            "top_logprobs": top})
        return {"content": content, "refusal": None}

    def text_logprobs(self, c: Choice) -> dict | None:
        new = self._new_logprobs(c)
        if new is None:
            return None
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                "text_offset": []}
        for lp in new:
            text, _ = self.token(lp.token)
            out["tokens"].append(text)
            out["token_logprobs"].append(_finite(lp.logprob))
            out["top_logprobs"].append({self.token(t)[0]: _finite(v) for t, v in lp.top})
            out["text_offset"].append(c.offset)
            c.offset += len(text)
        return out

    def _logprobs(self, c: Choice) -> dict | None:
        return self.chat_logprobs(c) if self.kind == "chat" else self.text_logprobs(c)

    # -- streamed --------------------------------------------------------------------------------
    def _chunk(self, c: Choice, text: str | None, finish: str | None = None,
               logprobs: dict | None = None, role: bool = False) -> dict:
        if self.kind == "chat":
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": c.index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"text": text or "", "index": c.index, "logprobs": logprobs,
                      "finish_reason": finish}
            obj = "text_completion"
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.name,
               "system_fingerprint": FINGERPRINT, "choices": [choice]}
        if self.p.include_usage:
            out["usage"] = None
        return out

    def _text_event(self, c: Choice, text: str) -> bytes:
        """A chunk of text without logprobs: the same bytes as P.sse(self._chunk(c, text)),
        from a template made once per choice (a stream sends one per engine step)."""
        if c.fast is None:
            whole = P.sse(self._chunk(c, "\0"))
            head, _, tail = whole.partition(b'"\\u0000"')
            c.fast = (head, tail)
        head, tail = c.fast
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    async def events(self) -> AsyncIterator[bytes]:
        """The reply as server-sent events, ending with [DONE] (an engine failure is an error
        event, then [DONE])."""
        logprobs = self.p.logprobs is not None
        for c in self.choices:
            if self.kind == "chat":
                yield P.sse(self._chunk(c, None, role=True))
            elif c.text:  # echo
                yield P.sse(self._chunk(c, c.text))
        try:
            async for c, text in self.pieces():
                if text is None:
                    lps = self._logprobs(c)
                    if lps is not None and not (lps.get("content") or lps.get("tokens")):
                        lps = None
                    yield P.sse(self._chunk(c, None, P.FINISH[c.req.finish_reason], lps))
                    continue
                c.text += text
                if logprobs:
                    yield P.sse(self._chunk(c, text, None, self._logprobs(c)))
                else:
                    yield self._text_event(c, text)
        except Exception as e:  # noqa: BLE001 (the engine's failure, told in the stream)
            yield P.sse(engine_error(e).body())
            yield P.DONE
            return
        if self.p.include_usage:
            out = self._chunk(self.choices[0], None)
            out["choices"] = []
            out["usage"] = self.usage()
            yield P.sse(out)
        yield P.DONE

    # -- whole -----------------------------------------------------------------------------------
    def usage(self) -> dict:
        n = self.p.n
        firsts = [c.req.usage for i, c in enumerate(self.choices) if i % n == 0]
        return P.usage(sum(u.prompt_tokens for u in firsts),
                       sum(c.req.usage.completion_tokens for c in self.choices),
                       sum(u.cached_tokens for u in firsts))

    def body(self) -> dict:
        """The whole reply (after collect())."""
        out = []
        for c in self.choices:
            c.n_logprobs, c.offset = 0, 0
            finish = P.FINISH[c.req.finish_reason]
            if self.kind == "chat":
                out.append({"index": c.index, "message": {"role": "assistant",
                                                          "content": c.text, "refusal": None},
                            "logprobs": self.chat_logprobs(c), "finish_reason": finish})
            else:
                out.append({"text": c.text, "index": c.index,
                            "logprobs": self.text_logprobs(c), "finish_reason": finish})
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat"
                else "text_completion", "created": self.created, "model": self.name,
                "system_fingerprint": FINGERPRINT, "choices": out, "usage": self.usage()}


def _finite(v: float) -> float:
    return max(float(v), -9999.0)  # JSON has no -Infinity


def engine_error(e: BaseException) -> P.APIError:
    return P.APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error",
                      code="engine_error")


@contextlib.asynccontextmanager
async def cancel_on_disconnect(receive: Callable, reqs: list[Any]):
    """Cancel reqs if the client disconnects before the block ends (the request's body has
    been read: the next message is the disconnect)."""
    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        for r in reqs:
            r.cancel()

    task = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        task.cancel()


class EventStream:
    """A text/event-stream response that cancels its requests when the client disconnects
    (uvicorn's send() does not fail after a disconnect: a task watches receive())."""

    def __init__(self, events: AsyncIterator[bytes], reqs: list[Any], done: Callable[[], None]):
        self.events = events
        self.reqs = reqs
        self.done = done

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with cancel_on_disconnect(receive, self.reqs):
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                        (b"cache-control", b"no-cache"),
                                        (b"x-accel-buffering", b"no")]})
                async for event in self.events:
                    await send({"type": "http.response.body", "body": event,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke under a write
            pass
        finally:
            await self.events.aclose()
            self.done()
