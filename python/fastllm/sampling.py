"""Sampling as pure functions over a logits row, composed by make_sampler().

Order follows llama.cpp's default chain: repetition penalty, top-k, top-p, min-p, temperature,
then a draw. temperature <= 0 means greedy (argmax of the raw logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import kargs

Sampler = Callable[[np.ndarray, Sequence[int]], int]


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty on tokens seen recently: positive logits divided, negative multiplied."""
    if penalty == 1.0 or not len(recent):
        return logits
    out = logits.copy()
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    v = out[ids]
    out[ids] = np.where(v > 0, v / penalty, v * penalty)
    return out


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
