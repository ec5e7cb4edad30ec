"""Generation loops: token ids first (generate_token_ids), text and stop strings on top of it.

Both return a `Generation`: an iterator that records why it ended (finish_reason) and how many
tokens it produced, which `fastllm run` reports in its summary line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ArgumentError
from .sampling import make_sampler

if TYPE_CHECKING:
    import numpy as np

    from .tokenizer import Tokenizer


class LanguageModel(Protocol):
    """What the loops use of a model (fastllm.Model has it all). model.py imports this module,
    so the loops name this shape instead of importing Model back."""

    tokenizer: Tokenizer
    n_ctx: int

    def prefill(self, ids: Sequence[int]) -> np.ndarray: ...

    def decode(self, token: int) -> np.ndarray: ...

    def decode_greedy(self, token: int, n: int) -> list[int]: ...

    def decode_sampled(self, token: int, n: int, chain: dict[str, float],
                       uniforms: Sequence[float], recent: Sequence[int] = ()) -> list[int]: ...

# Why a generation ended, as Generation.finish_reason: the words OpenAI's API and llama.cpp's
# server use, plus "context" (the context is full) and "cancelled" (closed before its end).
FINISH_REASONS = ("stop", "length", "context", "cancelled")


def check_sampling(max_tokens: int | None = 256, temperature: float = 0.8, top_k: int = 40,
                   top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                   repeat_last_n: int = 64, seed: int | None = None) -> None:
    """Raise ArgumentError naming the first argument outside its range. The ranges are
    llama.cpp's: max_tokens >= 0 (None: until the end of generation or a full context),
    temperature >= 0 (0: greedy), top_k >= 0 (0: off), top_p and min_p in [0, 1],
    repeat_penalty > 0 (1: off), repeat_last_n >= 0."""
    def is_int(v: Any) -> bool:  # int or a NumPy integer, not a bool or a float
        return hasattr(v, "__index__") and not isinstance(v, bool)

    def real(v: Any) -> float | None:
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None

    if max_tokens is not None and not (is_int(max_tokens) and int(max_tokens) >= 0):
        raise ArgumentError(f"max_tokens={max_tokens!r}: give an int >= 0, or None for no limit "
                            f"(until the end of generation or a full context)")
    for name, v, ok, rng in (
            ("temperature", temperature, lambda x: x >= 0, ">= 0 (0 is greedy)"),
            ("top_p", top_p, lambda x: 0 <= x <= 1, "in [0, 1] (1 is off)"),
            ("min_p", min_p, lambda x: 0 <= x <= 1, "in [0, 1] (0 is off)"),
            ("repeat_penalty", repeat_penalty, lambda x: x > 0, "> 0 (1 is off)")):
        x = real(v)
        if x is None or not ok(x):
            raise ArgumentError(f"{name}={v!r} is out of range: give a number {rng}")
    for name, v, what in (("top_k", top_k, "(0 is off)"), ("repeat_last_n", repeat_last_n, "")):
        if not (is_int(v) and int(v) >= 0):
            raise ArgumentError(f"{name}={v!r} is out of range: give an int >= 0 {what}".rstrip())
    if seed is not None and not (is_int(seed) and int(seed) >= 0):
        raise ArgumentError(f"seed={seed!r}: give an int >= 0, or None for a fresh one")


class Generation(Iterator):
    """The output of a generation (token ids or text pieces), one item at a time, and why it
    ended. While it runs finish_reason is None; afterwards it is "stop" (an end-of-generation
    token, or one of the stop strings: stop_string says which), "length" (max_tokens reached),
    "context" (the context is full) or "cancelled" (closed before its end, e.g. by breaking out
    of a loop over it and calling close()). n_tokens counts the tokens generated so far;
    n_prompt is the prompt's length; prompt_seconds is the time from the first request to the
    first token and gen_seconds from the first token to the last (None until they are known)."""

    def __init__(self, body: Generator[Any, None, str], n_prompt: int,
                 tokens: Generation | None = None):
        self._body = body
        self._tokens = tokens  # the token ids under a text stream
        self.n_prompt = n_prompt
        self.finish_reason: str | None = None
        self.stop_string: str | None = None
        self._n = 0
        self._t0 = self._t1 = self._t2 = None  # first request, first token, last token

    def __iter__(self) -> Generation:
        return self

    def __next__(self):
        if self._t0 is None:
            self._t0 = time.perf_counter()
        try:
            item = next(self._body)
        except StopIteration as e:
            if self.finish_reason is None:
                self.finish_reason = e.value or "stop"
            if self._t1 is None:  # no token (max_tokens=0, or an end at once): the prompt's time
                self._t1 = self._t2 = time.perf_counter()
            raise StopIteration from None
        self._n += 1
        self._t2 = time.perf_counter()
        if self._t1 is None:
            self._t1 = self._t2
        return item

    def close(self) -> None:
        """Stop generating; finish_reason becomes "cancelled" if it had not ended."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._body.close()
        if self._tokens is not None:
            self._tokens.close()

    @property
    def n_tokens(self) -> int:
        return self._tokens.n_tokens if self._tokens is not None else self._n

    @property
    def prompt_seconds(self) -> float | None:
        t = self._tokens or self
        return None if t._t1 is None else t._t1 - t._t0

    @property
    def gen_seconds(self) -> float | None:
        t = self._tokens or self
        return None if t._t1 is None else t._t2 - t._t1


def generate_token_ids(model: LanguageModel, prompt: Sequence[int], max_tokens: int | None = 256,
                       temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                       min_p: float = 0.05, repeat_penalty: float = 1.0,
                       repeat_last_n: int = 64, seed: int | None = None) -> Generation:
    """Sample up to max_tokens ids after prompt (None: no limit). Ends at an end-of-generation
    token (not yielded) or when the context is full. The prompt is evaluated (reusing the cached
    prefix it shares with the previous call) before the first id is produced, also when
    max_tokens is 0. Arguments are checked here, before anything runs."""
    check_sampling(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                   seed)
    sample = make_sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
    history = [int(t) for t in prompt]
    return Generation(_token_loop(model, history, max_tokens, sample), len(history))


def _token_loop(model: LanguageModel, history: list[int], max_tokens: int | None,
                sample) -> Generator[int, None, str]:
    eog = model.tokenizer.eog_ids
    logits = model.prefill(history)
    if max_tokens == 0:
        return "length"
    if getattr(sample, "greedy", False):
        return (yield from _chunked(model, sample(logits, history), history, max_tokens, eog,
                                    lambda tok, k, hist: model.decode_greedy(tok, k)))
    chain = getattr(sample, "chain", None)
    if chain is not None:  # the chain runs where the model runs
        def decode(tok: int, k: int, hist: list[int]) -> list[int]:
            recent = hist[-chain["last_n"]:] if chain["last_n"] else []
            return model.decode_sampled(tok, k, chain, sample.rng.random(k), recent)

        return (yield from _chunked(model, sample(logits, history), history, max_tokens, eog,
                                    decode))
    n = 0
    while True:
        tok = sample(logits, history)
        if tok in eog:
            return "stop"
        yield tok
        n += 1
        history.append(tok)
        if max_tokens is not None and n >= max_tokens:
            return "length"
        if len(history) >= model.n_ctx:
            return "context"
        logits = model.decode(tok)


def _chunked(model: LanguageModel, tok: int, history: list[int], max_tokens: int | None, eog,
             decode: Callable[[int, int, list[int]], list[int]]) -> Generator[int, None, str]:
    """Decoding in chunks through decode(token, k, history) (Model.decode_greedy or
    decode_sampled; history ends with token), so a GPU backend runs a chunk without reading a
    token back per step; the same ids as the loop of one Model.decode per token. `tok` comes
    from the prompt's logits; chunks start small (an early end of generation wastes little) and
    grow. A sampled chunk draws k numbers from the generator, as k tokens of that loop would.
    Returns the finish reason."""
    n, chunk, pending = 0, 4, [tok]
    while True:
        for t in pending:
            if t in eog:
                return "stop"
            yield t
            n += 1
            history.append(t)
            if max_tokens is not None and n >= max_tokens:
                return "length"
            if len(history) >= model.n_ctx:
                return "context"
        k = min(chunk, model.n_ctx - len(history))
        if max_tokens is not None:
            k = min(k, max_tokens - n)
        # pending[-1] is not in the cache yet: it goes in first
        pending = decode(pending[-1], k, history)
        chunk = min(chunk * 2, 64)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that could begin a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(index, stop string) of the earliest stop string in text, or None."""
    hits = [(i, s) for s, i in ((s, text.find(s)) for s in stops) if i >= 0]
    return min(hits) if hits else None


def generate_text(model: LanguageModel, prompt: Sequence[int],
                  stop: str | Sequence[str] | None = None, **sampling) -> Generation:
    """Text pieces of the continuation. Pieces never split a UTF-8 character, and text that might
    begin a stop string is held back until it is known not to. A stop string found ends it with
    finish_reason "stop" and stop_string set."""
    from .tokenizer import StreamDecoder

    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop)):
        raise ArgumentError(f"stop={stop!r}: give a string or a list of strings")
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    tokens = generate_token_ids(model, prompt, **sampling)
    gen = Generation(iter(()), tokens.n_prompt, tokens)

    def body() -> Generator[str, None, str]:
        dec = StreamDecoder(model.tokenizer)
        pending = ""
        for tok in tokens:
            pending += dec.feed(tok)
            if stops:
                hit = _first_stop(pending, stops)
                if hit:
                    gen.stop_string = hit[1]
                    if hit[0]:
                        yield pending[:hit[0]]
                    tokens.close()
                    return "stop"
                keep = _held_back(pending, stops)
                out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            else:
                out, pending = pending, ""
            if out:
                yield out
        pending += dec.flush()
        hit = _first_stop(pending, stops) if stops else None
        if hit:
            gen.stop_string = hit[1]
            pending = pending[:hit[0]]
        if pending:
            yield pending
        return "stop" if hit else tokens.finish_reason

    gen._body = body()
    return gen
