"""Rows with an allowed-token bitmask (a grammar's constraint) for the device samplers of a
batched step (RowSampler of the WebGPU and Metal backends): the rows and the checks shared by
tests/backends/test_sample_rows_masked.py and tests/metal/test_sample_rows_masked.py.

The masks are packed here word by word (bit t % 32 of word t // 32: llguidance's layout), not
by the code under test; the expected token is sample_row's with the same mask, and every token
must be one the mask allows."""

from __future__ import annotations

import numpy as np

from fastllm.sampling import RowSampling, apply_logit_bias, apply_penalties, device_ok, sample_row
from sampling_cases import near_edge

# (chain, kind of mask): "sparse" a few allowed tokens scattered over the row (a chunk holds
# fewer than top_k of them), "half" every other token, "no_argmax" all but the largest logits,
# "one" a single token, "all" every token (a mask that changes nothing)
MASKED_ROWS = [
    (RowSampling(temperature=0.0), "no_argmax"),
    (RowSampling(temperature=0.0, logprobs=2), "sparse"),
    (RowSampling(), "sparse"),
    (RowSampling(temperature=1.3, top_k=64, top_p=1.0, min_p=0.0), "sparse"),
    (RowSampling(temperature=0.7, top_k=20, top_p=0.9, min_p=0.1), "half"),
    (RowSampling(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0), "no_argmax"),
    (RowSampling(temperature=0.9, top_k=40), "one"),
    (RowSampling(temperature=0.0), "one"),
    (RowSampling(temperature=0.8, top_k=10, repeat_penalty=1.5, last_n=32,
                 presence_penalty=0.5), "half"),
    (RowSampling(temperature=0.0, logit_bias=((0, 50.0),)), "no_bias_id"),
    (RowSampling(temperature=0.6, top_k=30), "all"),
    (RowSampling(temperature=0.6, top_k=30), None),  # no mask beside masked rows
    # past the device: the host samples it, with its mask
    (RowSampling(temperature=0.9, top_k=0), "sparse"),
]


def pack_words(allowed: np.ndarray) -> np.ndarray:
    """uint32 words of a bool row, one bit a token (bit t % 32 of word t // 32)."""
    n = len(allowed)
    words = np.zeros(-(-n // 32), np.uint64)
    for t in np.flatnonzero(allowed):
        words[t // 32] |= np.uint64(1) << np.uint64(t % 32)
    return words.astype(np.uint32)


def make_mask(rng, kind: str | None, x: np.ndarray, p: RowSampling) -> np.ndarray | None:
    n = len(x)
    if kind is None:
        return None
    allowed = np.zeros(n, bool)
    if kind == "sparse":
        allowed[rng.choice(n, min(n, 7), replace=False)] = True
    elif kind == "half":
        allowed[int(rng.integers(0, 2))::2] = True
    elif kind == "no_argmax":
        allowed[:] = True
        allowed[np.argsort(-x)[:3]] = False
    elif kind == "one":
        allowed[int(rng.integers(0, n))] = True
    elif kind == "no_bias_id":  # the biased id (which would win by far) is not allowed
        allowed[:] = True
        allowed[p.logit_bias[0][0]] = False
    else:
        allowed[:] = True
    return pack_words(allowed)


def is_allowed(words: np.ndarray, t: int) -> bool:
    return bool((int(words[t // 32]) >> (t % 32)) & 1)


def check_masked(sample, rng, n: int, rounds: int, rows=MASKED_ROWS, seed=None) -> int:
    """sample(logits, params, uniforms, windows, masks) -> list of Sampled for each round of
    fresh rows: each token is allowed by its row's mask, equal to sample_row's with the same
    mask and uniform number (greedy: exactly; drawn: or differing only where near_edge allows),
    and a row without a mask is sample_row's without one. Returns how many drawn tokens
    differed near an edge."""
    differ = 0
    for _ in range(rounds):
        params, xs, windows, masks = [], [], [], []
        for p, kind in rows:
            x = (2 * rng.standard_normal(n)).astype(np.float32)
            if p.logit_bias:
                x[p.logit_bias[0][0]] = x.max()  # the bias would make it win
            params.append(p.check(n))
            xs.append(x)
            windows.append([int(t) for t in rng.integers(0, n, 40)])
            masks.append(make_mask(rng, kind, x, p))
        x = np.stack(xs)
        u = rng.random(len(params))
        got = sample(x, params, u, windows, masks)
        assert len(got) == len(params)
        for r, (p, s, m) in enumerate(zip(params, got, masks)):
            what = f"row {r} ({p}, {rows[r][1]}), seed {seed}"
            if m is not None:
                assert is_allowed(m, s.id), (what, s.id)
            host = sample_row(x[r], p, float(u[r]), windows[r], m)
            if p.greedy:
                assert s.id == host.id, (what, s.id, host.id)
            elif s.id != host.id:
                y = apply_logit_bias(x[r], p.logit_bias)
                if p.penalized:
                    y = apply_penalties(y, windows[r][-p.last_n:], p.repeat_penalty,
                                        p.frequency_penalty, p.presence_penalty)
                if m is not None:
                    keep = np.array([is_allowed(m, t) for t in range(n)])
                    y = np.where(keep, y, -np.inf).astype(np.float32)
                chain = {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                         "min_p": p.min_p}
                assert device_ok(p) and near_edge(y, chain, float(u[r])), (what, s.id, host.id)
                differ += 1
            if p.logprobs is not None:  # the raw distribution's, mask or not
                assert s.top[0][0] == int(np.argmax(x[r])), what
    return differ
