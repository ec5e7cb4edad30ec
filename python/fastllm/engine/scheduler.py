"""The Engine's scheduler: admission of queued requests to free slots (the one whose cached
tokens share the longest prefix), prompts read in chunks, decode steps of every generating
sequence at once (batched rows, device-side chains, or the one-sequence loop when a request
runs alone), constrained steps, and the release of finished requests. Requests themselves
(what a caller holds) live in request.py."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ContextOverflowError, FastLLMError
from ..sampling import RowSampling, sample_row
from .request import Request, TokenLogprob


class Engine:
    """Runs a model's requests on a thread of its own: `submit()` returns a Request at once.
    One engine per model; while it runs, call the model only through it. `close()` (or a with
    block) cancels what is left and stops the thread."""

    def __init__(self, model: Any, max_queue: int | None = None):
        self.model = model
        self.max_queue = max_queue
        self.n_seq = model.n_seq
        self._queue: deque[Request] = deque()
        self._active: dict[int, Request] = {}  # slot -> request
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closed = False
        self._rr = 0  # which prefilling request gets the next chunk (round robin)
        self._thread = threading.Thread(target=self._run, name="fastllm-engine", daemon=True)
        self._thread.start()

    def __enter__(self) -> Engine:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, prompt: str | Sequence[int], max_tokens: int | None = 256,
               stop: str | Sequence[str] | None = None, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               repeat_penalty: float = 1.0, repeat_last_n: int = 64,
               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
               logit_bias: dict[int, float] | None = None, seed: int | None = None,
               logprobs: int | None = None, json_schema: Any = None, regex: str | None = None,
               grammar: str | None = None, constraint: Any = None) -> Request:
        """Queue a generation of up to max_tokens tokens (None: until the end of generation or
        a full context) after `prompt` (text, or token ids). Arguments as Model.generate, plus
        presence_penalty and frequency_penalty (OpenAI's, over the penalty window of
        repeat_last_n ids), logit_bias ({token id: bias}) and logprobs (None, or how many top
        alternatives to report with each token's log-probability, 0..20). json_schema, regex or
        grammar (fastllm.constrain.compile_constraint; or `constraint`, one compiled already)
        constrain the output: each step samples only among the tokens that keep it valid.
        Bad arguments raise here, before anything is queued."""
        if self._closed:
            raise FastLLMError("the engine is closed")
        m = self.model
        if max_tokens is not None and (isinstance(max_tokens, bool)
                                       or not isinstance(max_tokens, int) or max_tokens < 0):
            raise ValueError(f"max_tokens must be an int >= 0 or None, got {max_tokens!r}")
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        if not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        bias = tuple(sorted((int(k), float(v)) for k, v in (logit_bias or {}).items()))
        params = RowSampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             repeat_penalty=repeat_penalty,
                             presence_penalty=presence_penalty,
                             frequency_penalty=frequency_penalty, last_n=repeat_last_n,
                             logit_bias=bias, logprobs=logprobs)
        params.check(m.n_vocab)
        if constraint is None:
            from ..constrain import compile_constraint

            constraint = compile_constraint(m.tokenizer, m.n_vocab, json_schema, regex, grammar)
        ids = m.prompt_ids(prompt)
        m._check_ids(ids)  # token ids in range; a prompt longer than the context raises
        if not ids:
            raise ValueError("empty prompt: give at least one token (e.g. BOS)")
        if len(ids) >= m.n_ctx and max_tokens != 0:
            raise ContextOverflowError(f"a prompt of {len(ids)} tokens leaves no room to "
                                       f"generate in a context of {m.n_ctx} (load with a larger "
                                       f"n_ctx)")
        req = Request(self, list(ids), max_tokens, stops, params, seed)
        if constraint is not None:
            req.constraint = constraint.matcher()
        with self._lock:
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise FastLLMError(f"the engine's queue is full ({self.max_queue} waiting)")
            self._queue.append(req)
        self._wake()
        return req

    def close(self) -> None:
        """Cancel every request left and stop the engine's thread."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join()

    @property
    def pending(self) -> int:
        """Requests waiting for a slot."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return len(self._active)

    def _wake(self) -> None:
        self._wakeup.set()

    # -- the engine's thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wakeup.clear()
            if self._closed:
                break
            try:
                worked = self._step()
            except Exception as e:  # noqa: BLE001 (a failure ends the running requests, loudly)
                for req in list(self._active.values()):
                    req._finish(None, e)
                self._active.clear()
                worked = True
            if not worked:
                self._wakeup.wait()
        with self._lock:
            left = list(self._active.values()) + list(self._queue)
            self._active.clear()
            self._queue.clear()
        for req in left:
            req._finish("cancelled")

    def _step(self) -> bool:
        """One round: drop cancelled requests, give free slots to waiting requests, run one
        prompt chunk, then one decode step of every generating sequence. False when idle."""
        for slot, req in list(self._active.items()):
            if req._cancel:
                self._release(slot, "cancelled")
        with self._lock:
            for req in [r for r in self._queue if r._cancel]:
                self._queue.remove(req)
                req._finish("cancelled")
        self._admit()
        if not self._active:
            return False
        prefilling = [r for r in self._active.values() if r.n_prefilled < len(r.prompt_ids)]
        if prefilling:
            self._prefill_chunk(prefilling[self._rr % len(prefilling)])
            self._rr += 1
        decoding = [r for r in self._active.values()
                    if r.n_prefilled == len(r.prompt_ids) and not r.done]
        if decoding:
            self._decode(decoding)
        return True

    def _admit(self) -> None:
        m = self.model
        with self._lock:
            while self._queue and len(self._active) < self.n_seq:
                req = self._queue.popleft()
                free = [s for s in range(self.n_seq) if s not in self._active]
                # the free slot whose cache shares the longest prefix; ties: the emptiest
                slot = max(free, key=lambda s: (m.common_prefix(req.prompt_ids, s),
                                                -len(m._slot_tokens[s])))
                cached = m.common_prefix(req.prompt_ids, slot)
                req.slot = slot
                req.usage.cached_tokens = cached
                req.n_prefilled = 0
                self._active[slot] = req
        self._start_text_all()

    def _start_text_all(self) -> None:
        for req in self._active.values():
            if req._decoder is None:
                from ..tokenizer import StreamDecoder

                req._decoder = StreamDecoder(self.model.tokenizer)

    def _prefill_chunk(self, req: Request) -> None:
        """The next chunk of req's prompt (model.n_batch tokens past what its slot holds); the
        last one gives the logits of its first token."""
        m = self.model
        ids = req.prompt_ids
        have = max(req.n_prefilled, m.common_prefix(ids, req.slot))
        end = min(len(ids), have + m.n_batch)
        last = end == len(ids)
        logits = m.prefill(ids[:end], req.slot, logits=last)
        req.n_prefilled = end
        if not last:
            return
        if req.max_tokens == 0:
            self._release(req.slot, "length")
            return
        if req.constraint is not None:
            self._constrained_step(req, logits)
            return
        p = req.sampling
        u = float(req.rng.random()) if p.temperature > 0 else 0.0
        s = sample_row(logits, p, u, self._window(req, ids))
        self._accept(req, s)

    def _window(self, req: Request, ids: Sequence[int]) -> list[int]:
        n = req.sampling.last_n
        return list(ids[-n:]) if n else []

    def _decode(self, reqs: list[Request]) -> None:
        m = self.model
        if any(r.constraint is not None for r in reqs):
            # forced tokens go in as one chunk (the request's step is done by it); the others
            # need each step's last token for their next mask: no chains for them
            for r in [r for r in reqs if r.constraint is not None and r.constraint.forced()]:
                self._constrained_step(r, None)
            reqs = [r for r in reqs if r.constraint is None or (
                not r.done and self._active.get(r.slot) is r and not r.constraint.forced())]
            if not reqs:
                return
        if len(reqs) == 1 and not self._queue and len(self._active) == 1 \
                and reqs[0].constraint is None:
            chain = _loop_chain(reqs[0].sampling)
            if chain is not None:
                self._decode_alone(reqs[0], chain)
                return
        if (len(reqs) > 1 and not self._queue and len(reqs) == len(self._active)
                and all(_chainable(r.sampling) and r.constraint is None for r in reqs)):
            self._decode_chain(reqs)
            return
        toks, slots, params, us, windows = [], [], [], [], []
        for r in reqs:
            toks.append(r.token_ids[-1])
            slots.append(r.slot)
            params.append(r.sampling)
            # one number per step from the request's own generator, as Model.generate draws
            us.append(float(r.rng.random()) if r.sampling.temperature > 0 else 0.0)
            hist = r.prompt_ids + r.token_ids
            windows.append(self._window(r, hist))
        kw = {}
        constrained = [r for r in reqs if r.constraint is not None]
        if constrained:
            from ..constrain import fill_masks

            words = fill_masks([r.constraint for r in constrained],
                               np.zeros((len(constrained), constrained[0].constraint.words),
                                        np.uint32))
            rows = iter(words)
            kw["masks"] = [next(rows) if r.constraint is not None else None for r in reqs]
        out = m.decode_rows_sampled(toks, slots, params, us, windows, **kw)
        for r, s in zip(reqs, out):
            self._accept(r, s)

    def _constrained_step(self, req: Request, logits: np.ndarray | None) -> None:
        """A constrained request's next token on the host: the tokens its constraint forces
        are taken as they are and evaluated as one chunk (with the last sampled token, which is
        not in the cache yet), then a token is sampled from the logits that follow with the
        constraint's mask. logits: those of the tokens so far (after a prompt), or None."""
        c = req.constraint
        while True:
            forced = c.forced()
            for t in forced:
                self._accept(req, _Token(t))
                if req.done or self._active.get(req.slot) is not req:
                    return
            if forced or logits is None:
                logits = self.model.prefill(req.prompt_ids + req.token_ids, req.slot)
            if not c.forced():
                break
        p = req.sampling
        u = float(req.rng.random()) if p.temperature > 0 else 0.0
        s = sample_row(logits, p, u, self._window(req, req.prompt_ids + req.token_ids),
                       c.mask())
        self._accept(req, s)

    def _decode_chain(self, reqs: list[Request]) -> None:
        """Several steps of every generating sequence back to back (Model.decode_rows_chain:
        on GPU backends one command buffer and one read-back), for chains whose window does not
        change with the tokens; one number a step from each request's generator, as always."""
        m = self.model
        left = [r.max_tokens - len(r.token_ids) if r.max_tokens is not None else ALONE_STEPS
                for r in reqs]
        room = [m.n_ctx - len(m._slot_tokens[r.slot]) for r in reqs]
        k = max(1, min(ALONE_STEPS, max(left), min(room)))
        us = np.zeros((k, len(reqs)), np.float32)
        for i, r in enumerate(reqs):
            if r.sampling.temperature > 0:
                us[:, i] = r.rng.random(k)
        out = m.decode_rows_chain([r.token_ids[-1] for r in reqs], [r.slot for r in reqs],
                                  [r.sampling for r in reqs], us)
        for step in out:
            for r, t in zip(reqs, step):
                if not r.done and r.slot in self._active and self._active[r.slot] is r:
                    self._accept(r, _Token(int(t)))

    def _decode_alone(self, req: Request, chain: dict | None) -> None:
        """One sequence and nothing waiting: a few steps through the one-sequence decoding loop
        (Model.decode_greedy / decode_sampled: on GPU backends the steps follow each other on
        the device with one read-back), the path Model.generate takes; the same numbers from
        the request's generator, one a step."""
        m = self.model
        k = ALONE_STEPS
        if req.max_tokens is not None:
            k = min(k, req.max_tokens - len(req.token_ids))
        tok = req.token_ids[-1]
        if chain == "greedy":
            out = m.decode_greedy(tok, k, slot=req.slot)
        else:
            hist = req.prompt_ids + req.token_ids
            recent = hist[-chain["last_n"]:] if chain["last_n"] else []
            out = m.decode_sampled(tok, k, chain, req.rng.random(k), recent, slot=req.slot)
        for t in out:
            self._accept(req, _Token(t))
            if req.done or req.slot not in self._active:
                break

    def _accept(self, req: Request, s: Any) -> None:
        """A sampled token of req: the end of generation, or text out (stop strings held
        back), then the length and context limits."""
        m = self.model
        if req._cancel:
            self._release(req.slot, "cancelled")
            return
        tok = int(s.id)
        c = req.constraint
        if tok in m.tokenizer.eog_ids:
            self._release(req.slot, "stop")
            return
        if c is not None and not c.consume(tok):  # the mask allows only what it accepts
            self._active.pop(req.slot, None)
            req._finish(None, FastLLMError(f"the constraint ({c.constraint.kind}) refused token "
                                           f"{tok}: {c.error}"))
            return
        req.token_ids.append(tok)
        req.usage.completion_tokens += 1
        if req.logprobs is not None:
            # a token a constraint forced was never sampled: certain, with no alternatives
            lp = 0.0 if s.logprob is None else float(s.logprob)
            req.logprobs.append(TokenLogprob(tok, lp, list(s.top or [])))
        if self._text(req, tok) or (c is not None and c.done):
            self._release(req.slot, "stop")
            return
        incomplete = c is not None and not c.accepting
        if req.max_tokens is not None and len(req.token_ids) >= req.max_tokens:
            self._release(req.slot, "incomplete" if incomplete else "length")
        elif len(req.prompt_ids) + len(req.token_ids) >= m.n_ctx:
            self._release(req.slot, "incomplete" if incomplete else "context")

    def _text(self, req: Request, tok: int) -> bool:
        """Feed tok's text; True when a stop string appeared (the text before it is out)."""
        from ..generate import _held_back

        req._pending += req._decoder.feed(tok)
        if req.stops:
            hits = [i for i in (req._pending.find(s) for s in req.stops) if i >= 0]
            if hits:
                req._emit(req._pending[:min(hits)])
                req._pending = ""
                return True
            keep = _held_back(req._pending, req.stops)
            out = req._pending[:len(req._pending) - keep]
            req._pending = req._pending[len(req._pending) - keep:]
        else:
            out, req._pending = req._pending, ""
        req._emit(out)
        return False

    def _release(self, slot: int, reason: str) -> None:
        """End the request in `slot`; the slot keeps its cache for a later prompt that shares
        its prefix."""
        req = self._active.pop(slot, None)
        if req is None:
            return
        if req._decoder is not None and not (reason == "stop" and req.stops and not req._pending):
            req._pending += req._decoder.flush()
            hits = [i for i in (req._pending.find(s) for s in req.stops) if i >= 0]
            if hits:  # the flushed text completed a stop string
                req._pending = req._pending[:min(hits)]
        self._wake()
        req._finish(reason)


# steps of the one-sequence loop per engine step when one request runs alone (a new arrival
# waits at most this many tokens for its prompt to start)
ALONE_STEPS = 8


@dataclass
class _Token:
    id: int
    logprob: float | None = None
    top: list | None = None


def _chainable(p: RowSampling) -> bool:
    """Whether several steps of p can run without the host between them (no penalty window,
    which changes with each token, and no log-probabilities to read back)."""
    from ..sampling import device_ok

    return device_ok(p) and not p.penalized and p.logprobs is None


def _loop_chain(p: RowSampling) -> dict | str | None:
    """The one-sequence loop's form of p (make_sampler's chain, or "greedy"), or None where p
    needs the rows path (logprobs, logit_bias, presence or frequency penalties)."""
    if (p.logprobs is not None or p.logit_bias or p.presence_penalty
            or p.frequency_penalty):
        return None
    if p.temperature <= 0:
        return "greedy" if p.repeat_penalty == 1.0 else None
    return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
            "min_p": p.min_p, "penalty": p.repeat_penalty,
            "last_n": p.last_n if p.repeat_penalty != 1.0 else 0}


def run_all(model: Any, prompts: Sequence[Any], **kwargs) -> list[str]:
    """The texts of several prompts generated together (Model.generate with a list)."""
    with Engine(model) as eng:
        reqs = [eng.submit(p, **kwargs) for p in prompts]
        return [r.text() for r in reqs]

