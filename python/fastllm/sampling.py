"""Sampling as pure functions over a logits row, composed by make_sampler() (one sequence) and
sample_row() (a row of a batched step, with its own RowSampling).

Order follows llama.cpp's default chain: logit bias, penalties, top-k, top-p, min-p,
temperature, then a draw. temperature <= 0 means greedy (argmax after bias and penalties).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import kargs
from .errors import ArgumentError

Sampler = Callable[[np.ndarray, Sequence[int]], int]


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty on tokens seen recently: positive logits divided, negative multiplied."""
    if penalty == 1.0 or not len(recent):
        return logits
    return apply_penalties(logits, recent, penalty)


def apply_penalties(logits: np.ndarray, window: Sequence[int], repeat: float,
                    frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    """llama.cpp's penalties sampler over the ids of `window` (ids outside the row are not
    tokens and are skipped), with the count c of each id in it: the repetition penalty as CTRL
    (a logit > 0 divided by `repeat`, one <= 0 multiplied; once, whatever c), then minus
    c * frequency + (c > 0) * presence (OpenAI's frequency and presence penalties). In float32,
    operation by operation as llama.cpp's C++."""
    if not len(window) or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return logits
    w = np.asarray(window, dtype=np.int64).reshape(-1)
    ids, counts = np.unique(w[(w >= 0) & (w < logits.shape[-1])], return_counts=True)
    out = np.array(logits, dtype=np.float32)
    v = out[ids]
    rep = np.float32(repeat)
    v = np.where(v <= 0, v * rep, v / rep)
    c = counts.astype(np.float32)
    v = v - (c * np.float32(frequency) + np.float32(presence))  # every id here has c > 0
    out[ids] = v
    return out


def apply_logit_bias(logits: np.ndarray, bias: Sequence[tuple[int, float]]) -> np.ndarray:
    """logit[id] += bias for each (id, bias) in order (repeated ids add up), in float32."""
    if not len(bias):
        return logits
    out = np.array(logits, dtype=np.float32)
    for i, b in bias:
        out[int(i)] += np.float32(b)
    return out


def allowed_tokens(mask: np.ndarray, n: int) -> np.ndarray:
    """The bool (n,) of an allowed-token bitmask: bit t % 32 of 32-bit word t // 32 set where
    token t may be chosen (llguidance's layout; missing words allow nothing)."""
    words = np.ascontiguousarray(mask).reshape(-1).view(np.uint32)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
    out = np.zeros(n, bool)
    out[:min(n, len(bits))] = bits[:n]
    return out


def apply_token_mask(logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """logits with every token the bitmask does not allow at -inf (allowed_tokens)."""
    if mask is None:
        return logits
    return np.where(allowed_tokens(mask, logits.shape[-1]), logits,
                    np.float32(-np.inf)).astype(np.float32)


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (others -inf). k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - np.max(x))
    return x / x.sum()


def top_p_mask(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    keep_n = int(np.searchsorted(cum, p) + 1)
    out = np.full_like(logits, -np.inf)
    out[order[:keep_n]] = logits[order[:keep_n]]
    return out


def min_p_mask(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = softmax(logits)
    return np.where(probs >= min_p * probs.max(), logits, -np.inf)


# The largest top_k (shaders/sample.wgsl's KMAX; llama.cpp's default is 40) and repetition
# penalty window that GPU backends sample with on the device.
DEVICE_TOP_K = 64
DEVICE_LAST_N = 64


def device_args(chain: dict, n_steps: int, uniforms) -> tuple[np.ndarray, int, bool]:
    """What a device loop (Program.run_sampled) needs of its arguments: the step's uniform
    numbers as float32, the penalty window's length, and whether the device can run `chain`
    (top_k 1..DEVICE_TOP_K, a window of at most DEVICE_LAST_N ids) rather than the host."""
    u = np.asarray(uniforms, np.float32).reshape(-1)
    if len(u) < n_steps:
        raise ValueError(f"run_sampled: {n_steps} steps need as many uniform numbers, got "
                         f"{len(u)}")
    last_n = int(chain.get("last_n", 0))
    return u, last_n, 1 <= chain["top_k"] <= DEVICE_TOP_K and 0 <= last_n <= DEVICE_LAST_N


def device_chunks(cols: int, min_chunk: int, max_parts: int) -> tuple[int, int]:
    """How a device loop's choice of the next token (the argmax or the sampler) splits a row of
    cols logits among its first kernel's workgroups: (chunk, parts), chunks of at least
    min_chunk columns and at most max_parts of them."""
    chunk = max(min_chunk, -(-cols // max_parts))
    return chunk, -(-cols // chunk)


def device_kargs(chain: dict, cols: int, pos: int, chunk: int, last_n: int) -> bytes:
    """kargs_sample for a device loop that starts at position pos: the chain's numbers and the
    row's split (device_chunks)."""
    return kargs.pack("kargs_sample", n_cols=cols, top_k=chain["top_k"], pos0=pos, chunk=chunk,
                      temperature=chain["temperature"], top_p=chain["top_p"],
                      min_p=chain["min_p"], penalty=chain.get("penalty", 1.0), last_n=last_n)


def penalty_window(recent: Sequence[int], first_token: int, last_n: int) -> np.ndarray:
    """A device loop's first window of penalized ids: the last last_n of `recent` (which ends
    with first_token; just first_token when empty), padded in front with an id no token has."""
    ids = [int(t) for t in recent][-last_n:] or [int(first_token)]
    return np.array([0xFFFFFFFF] * (last_n - len(ids)) + ids, np.uint32)


def draw(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float,
         u: float, penalty: float = 1.0, last_n: int = 0, recent: Sequence[int] = ()) -> int:
    """The chain: the repetition penalty over the last `last_n` ids of `recent`, top_k, top_p,
    min_p, temperature, then the token whose share of the cumulative probability over the
    vocabulary first passes u (a uniform number in [0, 1): numpy's Generator.choice with u from
    Generator.random())."""
    x = np.asarray(logits, dtype=np.float32).reshape(-1)
    x = apply_repeat_penalty(x, list(recent)[-last_n:] if last_n else (), penalty)
    x = top_k_mask(x, top_k)
    x = top_p_mask(x, top_p)
    x = min_p_mask(x, min_p)
    cdf = np.cumsum(softmax(x / temperature))
    return int(np.searchsorted(cdf / cdf[-1], u, side="right"))


def make_sampler(temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int | None = None) -> Sampler:
    """A function (logits row, previous token ids) -> next token id."""
    for name, v, lo in (("temperature", temperature, 0.0), ("top_p", top_p, 0.0),
                        ("min_p", min_p, 0.0), ("repeat_penalty", repeat_penalty, 1e-6)):
        if not np.isfinite(v) or v < lo:
            raise ValueError(f"sampling argument {name}={v!r} is out of range")
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray, history: Sequence[int]) -> int:
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        x = apply_repeat_penalty(x, history[-repeat_last_n:] if repeat_last_n else (),
                                 repeat_penalty)
        if temperature <= 0.0:
            return int(np.argmax(x))
        return draw(x, temperature, top_k, top_p, min_p, rng.random())  # (penalized above)

    sample.greedy = temperature <= 0.0 and repeat_penalty == 1.0  # type: ignore[attr-defined]
    # `chain` and `rng` for Model.decode_sampled: the chain as a GPU backend runs it on the
    # device (Program.run_sampled), drawing with the same generator's numbers; the penalty's
    # window is the last last_n ids of the history (None: the host samples token by token)
    chain = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
             "penalty": repeat_penalty, "last_n": repeat_last_n if repeat_penalty != 1.0 else 0}
    if temperature <= 0.0 or not 0 <= chain["last_n"] <= DEVICE_LAST_N:
        chain = None
    sample.chain = chain  # type: ignore[attr-defined]
    sample.rng = rng  # type: ignore[attr-defined]
    return sample


# -- one row of a batched decode step ---------------------------------------------------------
MAX_LOGPROBS = 20  # the most top alternatives a row may ask for (OpenAI's limit)
# What the device samplers (backends/webgpu/sample_rows.py, backends/metal/sample_rows.py) take
# per row besides DEVICE_TOP_K and DEVICE_LAST_N: logit_bias entries (sample_rows.wgsl's BMAX)
DEVICE_BIAS = 64


@dataclass(frozen=True)
class RowSampling:
    """One sequence's sampling chain in a batched decode step (sample_row). Defaults as
    make_sampler's. top_k 0 is off; last_n is the penalty window (the last last_n ids of the
    sequence); presence_penalty and frequency_penalty are OpenAI's (-2..2); logit_bias holds
    (token id, bias) pairs added to the logits first; logprobs None, or how many top
    alternatives (0..20) to report with the chosen token's log-probability."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    last_n: int = 64
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        """Whether the penalties change anything (else the window is not read)."""
        return self.last_n > 0 and (self.repeat_penalty != 1.0 or self.presence_penalty != 0.0
                                    or self.frequency_penalty != 0.0)

    def check(self, n_vocab: int) -> RowSampling:
        """self, or ArgumentError (a ValueError) naming the first field out of its range."""
        def real(name, lo, hi, lo_open=False):
            v = getattr(self, name)
            ok = (isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                  and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi)
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo}, {hi}]" if hi != math.inf else (
                    f"{'>' if lo_open else '>='} {lo}")
                raise ArgumentError(f"sampling argument {name}={v!r} is out of range: it must "
                                    f"be a finite number {'in ' if hi != math.inf else ''}{rng}")

        def integer(name, lo, hi, what):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                    or not lo <= v <= hi):
                raise ArgumentError(f"sampling argument {name}={v!r} is out of range: it must "
                                    f"be an integer {what}")

        real("temperature", 0.0, math.inf)
        integer("top_k", 0, 1 << 62, ">= 0 (0: off)")
        real("top_p", 0.0, 1.0)
        real("min_p", 0.0, 1.0)
        real("repeat_penalty", 0.0, math.inf, lo_open=True)
        real("presence_penalty", -2.0, 2.0)
        real("frequency_penalty", -2.0, 2.0)
        integer("last_n", 0, 1 << 62, ">= 0 (0: no penalty window)")
        try:
            pairs = [(i, b) for i, b in self.logit_bias]
        except (TypeError, ValueError):
            raise ArgumentError(f"sampling argument logit_bias={self.logit_bias!r} must be "
                                f"(token id, bias) pairs") from None
        for i, b in pairs:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n_vocab:
                raise ArgumentError(f"sampling argument logit_bias: token id {i!r} is out of "
                                    f"range: it must be an integer in [0, {n_vocab - 1}]")
            if (isinstance(b, bool) or not isinstance(b, (int, float, np.floating, np.integer))
                    or not math.isfinite(b)):
                raise ArgumentError(f"sampling argument logit_bias: the bias of token {i} "
                                    f"({b!r}) must be a finite number")
        if self.logprobs is not None:
            integer("logprobs", 0, MAX_LOGPROBS, f"in [0, {MAX_LOGPROBS}] or None")
        return self


@dataclass(frozen=True)
class Sampled:
    """A row's token; with logprobs asked, its log-probability and the top alternatives
    ((id, log-probability), largest first) under the model's raw distribution."""

    id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] | None = None


def device_ok(p: RowSampling) -> bool:
    """Whether the device samplers run p's chain: greedy or top_k 1..DEVICE_TOP_K (with top_k
    off the device cannot cut the vocabulary to its candidates), a penalty window of at most
    DEVICE_LAST_N ids (or none that matters) and at most DEVICE_BIAS logit_bias entries. Other
    rows are sampled on the host from their read-back logits."""
    return ((p.greedy or 1 <= p.top_k <= DEVICE_TOP_K)
            and (not p.penalized or p.last_n <= DEVICE_LAST_N)
            and len(p.logit_bias) <= DEVICE_BIAS)


def raw_logprobs(logits: np.ndarray) -> np.ndarray:
    """log-softmax of a raw logits row in float64."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def top_logprobs(lp: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The n largest of lp as (id, value), largest first; equal values by id."""
    order = np.argsort(-lp, kind="stable")[:n]
    return tuple((int(i), float(lp[i])) for i in order)


def sample_row(logits: np.ndarray, p: RowSampling, u: float,
               window: Sequence[int] = (), mask: np.ndarray | None = None) -> Sampled:
    """One row's token by llama.cpp's chain: logit_bias, the penalties over the last p.last_n
    ids of `window` (apply_penalties), top_k, top_p, min_p, temperature, then the token whose
    share of the cumulative probability first passes u (as draw); greedy (temperature <= 0):
    the first largest logit after bias and penalties. `mask`: an allowed-token bitmask (a
    grammar's, allowed_tokens): the other tokens are set to -inf after the bias and penalties,
    so only allowed tokens can be chosen.

    With p.logprobs set, the chosen token's log-probability and the top p.logprobs alternatives
    come from the model's RAW distribution, the log-softmax of the logits before bias,
    penalties, cuts and temperature (vLLM's default logprobs_mode, "raw_logprobs"): what the
    model thinks of each token, the same whatever the request's sampling settings."""
    raw = np.asarray(logits, dtype=np.float32).reshape(-1)
    x = apply_logit_bias(raw, p.logit_bias)
    if p.penalized:
        x = apply_penalties(x, list(window)[-p.last_n:], p.repeat_penalty,
                            p.frequency_penalty, p.presence_penalty)
    x = apply_token_mask(x, mask)
    if p.greedy:
        tok = int(np.argmax(x))
    else:
        tok = draw(x, p.temperature, p.top_k, p.top_p, p.min_p, u)
    if p.logprobs is None:
        return Sampled(tok)
    lp = raw_logprobs(raw)
    return Sampled(tok, float(lp[tok]), top_logprobs(lp, p.logprobs))
