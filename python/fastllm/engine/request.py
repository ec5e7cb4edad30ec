"""What a caller of the engine holds: the `Request` that `Engine.submit` returns, iterated or
streamed for its text, with its `Usage` and `TokenLogprob`s. The scheduler (scheduler.py) fills
these in from its own thread through the engine-side methods at the bottom of Request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..sampling import RowSampling


class _Wakes(Protocol):
    """What a request uses of its engine: a cancel wakes the engine's thread. The scheduler
    imports this module, so the request names this shape instead of importing Engine back."""

    def _wake(self) -> None: ...


# "incomplete": a constrained request (json_schema, regex, grammar) ran out of max_tokens or of
# context before its output was complete under the constraint
FINISH_REASONS = ("stop", "length", "context", "cancelled", "incomplete")


@dataclass
class Usage:
    """Token counts of a request: its prompt, what it generated, and how many prompt tokens
    were found in the cache (not evaluated again)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives (id, log-probability),
    largest first, under the model's raw distribution (fastllm.sampling.sample_row)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class Request:
    """One submitted generation. Iterate it (from any thread) or `async for` over `stream()`
    for its text pieces as they come; `text()` waits for the whole text. `token_ids`,
    `finish_reason` ("stop", "length", "context", "cancelled", or "incomplete": a constraint's
    output cut short by max_tokens or the context), `usage` and `logprobs` (when asked) fill in
    as it runs. `cancel()` stops it at any time and frees its slot."""

    def __init__(self, engine: _Wakes, ids: list[int], max_tokens: int | None,
                 stops: list[str], sampling: RowSampling, seed: int | None):
        self._engine = engine
        self.prompt_ids = ids
        self.max_tokens = max_tokens
        self.stops = stops
        self.sampling = sampling
        self.rng = np.random.default_rng(seed)
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if sampling.logprobs is not None else None
        self.finish_reason: str | None = None
        self.usage = Usage(prompt_tokens=len(ids))
        self.error: BaseException | None = None
        self._pieces: list[str] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancel = False
        # engine-side state
        self.slot: int | None = None
        self.n_prefilled = 0  # prompt tokens already in the slot
        self._decoder = None
        self._pending = ""  # text held back: it may begin a stop string
        self.constraint = None  # a fastllm.constrain.Matcher, for json_schema / regex / grammar

    # -- consumer side -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def cancel(self) -> None:
        """Stop generating; the request ends with finish_reason "cancelled" (unless it ended)."""
        self._cancel = True
        self._engine._wake()

    def __iter__(self) -> Iterator[str]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._pieces) and not self.done:
                    self._cond.wait()
                pieces = self._pieces[i:]
                finished = self.done
            yield from pieces
            i += len(pieces)
            if finished and i >= len(self._pieces):
                if self.error is not None:
                    raise self.error
                return

    async def stream(self, joined: bool = False) -> AsyncIterator[str]:
        """The text pieces for asyncio code (the engine's thread wakes the awaiting loop).
        joined=True: the pieces that arrived since the last wake as one string (a server
        writes one event per wake, however far the engine got meanwhile)."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, ev))
        try:
            i = 0
            while True:
                with self._cond:
                    pieces = self._pieces[i:]
                    finished = self.done
                    ev.clear()
                i += len(pieces)
                for p in ["".join(pieces)] if joined and len(pieces) > 1 else pieces:
                    yield p
                if finished:
                    with self._cond:
                        rest = self._pieces[i:]
                    for p in ["".join(rest)] if joined and len(rest) > 1 else rest:
                        yield p
                    if self.error is not None:
                        raise self.error
                    return
                if not pieces:
                    await ev.wait()
        finally:
            with self._cond:
                self._waiters = [w for w in self._waiters if w[1] is not ev]

    def text(self) -> str:
        """Wait for the end; the whole text."""
        return "".join(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end (True) or the timeout (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    # -- engine side ---------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
            for loop, ev in self._waiters:
                loop.call_soon_threadsafe(ev.set)

    def _emit(self, piece: str) -> None:
        if piece:
            with self._cond:
                self._pieces.append(piece)
            self._notify()

    def _finish(self, reason: str | None, error: BaseException | None = None) -> None:
        with self._cond:
            if self.done:
                return
            if error is None and self._pending:
                self._pieces.append(self._pending)
            self._pending = ""
            self.error = error
            self.finish_reason = reason if error is None else None
        self._notify()


__all__ = ["FINISH_REASONS", "Request", "TokenLogprob", "Usage"]
