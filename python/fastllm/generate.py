"""Generation loops: token ids first (generate_token_ids), text and stop strings on top of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from .sampling import make_sampler

if TYPE_CHECKING:
    from .model import Model


def generate_token_ids(model: Model, prompt: Sequence[int], max_tokens: int = 256,
                       temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                       min_p: float = 0.05, repeat_penalty: float = 1.0,
                       repeat_last_n: int = 64, seed: int | None = None) -> Iterator[int]:
    """Sample up to max_tokens ids after prompt. Ends at an end-of-generation token (not yielded)
    or when the context is full. The prompt is evaluated (reusing the cached prefix it shares
    with the previous call) before the first id is produced."""
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    sample = make_sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
    history = [int(t) for t in prompt]
    eog = model.tokenizer.eog_ids
    logits = model.prefill(history)
    if getattr(sample, "greedy", False):
        yield from _chunked(model, sample(logits, history), history, max_tokens, eog,
                            lambda tok, k, hist: model.decode_greedy(tok, k))
        return
    chain = getattr(sample, "chain", None)
    if chain is not None:  # the chain runs where the model runs
        def decode(tok: int, k: int, hist: list[int]) -> list[int]:
            recent = hist[-chain["last_n"]:] if chain["last_n"] else []
            return model.decode_sampled(tok, k, chain, sample.rng.random(k), recent)

        yield from _chunked(model, sample(logits, history), history, max_tokens, eog, decode)
        return
    n = 0
    while max_tokens is None or n < max_tokens:
        tok = sample(logits, history)
        if tok in eog:
            return
        yield tok
        n += 1
        history.append(tok)
        if len(history) >= model.n_ctx or (max_tokens is not None and n >= max_tokens):
            return
        logits = model.decode(tok)


def _chunked(model: Model, tok: int, history: list[int], max_tokens: int | None, eog,
             decode: Callable[[int, int, list[int]], list[int]]) -> Iterator[int]:
    """Decoding in chunks through decode(token, k, history) (Model.decode_greedy or
    decode_sampled; history ends with token), so a GPU backend runs a chunk without reading a
    token back per step; the same ids as the loop of one Model.decode per token. `tok` comes
    from the prompt's logits; chunks start small (an early end of generation wastes little) and
    grow. A sampled chunk draws k numbers from the generator, as k tokens of that loop would."""
    n, chunk, pending = 0, 4, [tok]
    while True:
        for t in pending:
            if t in eog:
                return
            yield t
            n += 1
            history.append(t)
            if (max_tokens is not None and n >= max_tokens) or len(history) >= model.n_ctx:
                return
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


def generate_text(model: Model, prompt: Sequence[int], stop: str | Sequence[str] | None = None,
                  **sampling) -> Iterator[str]:
    """Text pieces of the continuation. Pieces never split a UTF-8 character, and text that might
    begin a stop string is held back until it is known not to."""
    from .tokenizer import StreamDecoder

    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    dec = StreamDecoder(model.tokenizer)
    pending = ""
    tokens = generate_token_ids(model, prompt, **sampling)
    for tok in tokens:
        pending += dec.feed(tok)
        if stops:
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                if min(hits):
                    yield pending[:min(hits)]
                tokens.close()
                return
            keep = _held_back(pending, stops)
            out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
        else:
            out, pending = pending, ""
        if out:
            yield out
    pending += dec.flush()
    if stops:
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            pending = pending[:min(hits)]
    if pending:
        yield pending
