"""A batched step's sampling on a device (RowSampler of the WebGPU and Metal backends) against
fastllm.sampling.sample_row and float64 NumPy: the rows and the checks shared by
tests/backends/test_sample_rows.py and tests/metal/test_sample_rows.py."""

from __future__ import annotations

import dataclasses

import numpy as np

from fastllm.sampling import (
    DEVICE_BIAS,
    RowSampling,
    apply_logit_bias,
    apply_penalties,
    device_ok,
    sample_row,
)
from sampling_cases import near_edge

# logprobs: |device - float64| of a log-probability (f32 logits, an f32 sum of exponentials)
LOGPROB_TOL = 2e-4

# a mix of chains in one batch: (chain, kind of row), the kind saying how its logits and window
# are made (make_row)
ROWS = [
    (RowSampling(), "plain"),  # the defaults
    # greedy: the first of equal largest values (and the first as the one alternative asked)
    (RowSampling(temperature=0.0, logprobs=1), "ties"),
    (RowSampling(temperature=1.7, top_k=64, top_p=1.0, min_p=0.0, logprobs=3), "plain"),
    (RowSampling(temperature=0.5, top_k=7, top_p=0.6, min_p=0.3), "plain"),
    (RowSampling(temperature=1.5, top_k=32, top_p=1.0, min_p=0.3, logprobs=0), "ties"),
    (RowSampling(temperature=1.0, top_k=1, top_p=0.9, min_p=0.0), "ties"),
    (RowSampling(temperature=0.6, top_k=12, top_p=0.95, min_p=0.0, repeat_penalty=2.5,
                 frequency_penalty=0.4, presence_penalty=0.3, last_n=64, logprobs=20), "hot"),
    (RowSampling(temperature=0.4, top_k=64, top_p=0.99, min_p=0.01, repeat_penalty=0.7,
                 presence_penalty=-0.5, frequency_penalty=-0.2, last_n=40), "hot"),
    # edge rows: the largest value (10, three times in the window) against the second (8,
    # absent); each penalty alone decides, by its size, which one wins
    (RowSampling(temperature=0.0, repeat_penalty=1.2, last_n=16), "edge_a"),
    (RowSampling(temperature=0.0, repeat_penalty=1.3, last_n=16), "edge_b"),
    (RowSampling(temperature=0.0, frequency_penalty=0.6, last_n=16, logprobs=2), "edge_a"),
    (RowSampling(temperature=0.0, frequency_penalty=0.7, last_n=16), "edge_b"),
    (RowSampling(temperature=1.0, top_k=1, presence_penalty=1.9, last_n=16), "edge_a"),
    (RowSampling(temperature=1.0, top_k=1, presence_penalty=2.0, frequency_penalty=0.1,
                 last_n=16), "edge_b"),
    # the bias comes before the penalty: (10 + 5) / 2 < 8, where 10 / 2 + 5 > 8
    (RowSampling(temperature=0.0, repeat_penalty=2.0, last_n=16, logit_bias=((0, 5.0),)),
     "edge_b"),
    # the window's last id only (last_n 1): the two earlier occurrences fall out
    (RowSampling(temperature=0.0, frequency_penalty=0.7, last_n=1), "edge_a"),
    # a bias that flips the argmax (greedy, and drawn with top_k 1), repeated ids adding up
    (RowSampling(temperature=0.0, logit_bias=((0, 1.0), (5, -1.0))), "bias"),
    # (id 0 needs both of its entries to pass id 5)
    (RowSampling(temperature=0.9, top_k=1, logit_bias=((0, 0.15), (3, -1.0), (0, 0.15))),
     "bias"),
    (RowSampling(temperature=1.2, top_k=40, top_p=0.9,
                 logit_bias=tuple((i, 3.0) for i in range(DEVICE_BIAS))), "plain"),
    # past the device (sampled on the host from the row's logits)
    (RowSampling(temperature=0.9, top_k=0, top_p=0.9, logprobs=1), "plain"),
    (RowSampling(temperature=0.9, top_k=100), "plain"),
    (RowSampling(temperature=0.0, repeat_penalty=1.1, last_n=65), "hot"),
    (RowSampling(temperature=0.0, logit_bias=tuple((i, 0.1) for i in range(DEVICE_BIAS + 1))),
     "plain"),
]
EDGE_A, EDGE_B = 10.0, 8.0  # edge rows: id A's value (in the window 3 times), id B's


def make_row(rng, p: RowSampling, kind: str, n: int):
    """(p, logits, window, the expected token or None) of a row of kind `kind`; p's logit_bias
    ids are moved to random columns of the row (the same permutation for all)."""
    perm = rng.permutation(n)
    if p.logit_bias:
        p = dataclasses.replace(p, logit_bias=tuple((int(perm[i]), b) for i, b in p.logit_bias))
    x = (2 * rng.standard_normal(n)).astype(np.float32)
    window = [int(t) for t in rng.integers(0, n, int(rng.integers(1, 100)))]
    want = None
    if kind == "ties":  # three equal largest values, in different chunks when n > 4096
        x[rng.choice(n, 3, replace=False)] = float(x.max()) + 0.5
    elif kind == "hot":  # the window holds the largest logits, several times each
        top = [int(i) for i in np.argsort(-x)[:6]]
        window = [int(t) for t in rng.choice(top + window[:10], 64)]
    elif kind.startswith("edge"):
        x = (0.5 * rng.standard_normal(n)).astype(np.float32)
        a, b = int(perm[0]), int(perm[1])  # (id 0 of a logit_bias is a)
        x[a], x[b] = EDGE_A, EDGE_B
        filler = [int(t) for t in perm[2:][rng.integers(0, n - 2, 23)]]
        # a three times among the last 16 ids, b never; the last id is neither
        window = filler[:20] + [a, filler[20], a, filler[21], a, filler[22]]
        want = a if kind == "edge_a" else b
    elif kind == "bias":  # ids perm[0] and perm[5]: a near-tie of the largest, 5 ahead
        a, b = int(perm[0]), int(perm[5])
        x[b] = float(x.max()) + 0.5
        x[a] = x[b] - 0.25
        want = a
    return p, x, window, want


def make_batch(rng, rows, n: int):
    params, xs, windows, want = [], [], [], []
    for p, kind in rows:
        p, x, w, tok = make_row(rng, p, kind, n)
        params.append(p.check(n))
        xs.append(x)
        windows.append(w)
        want.append(tok)
    return params, np.stack(xs), windows, want


def processed(x: np.ndarray, p: RowSampling, window) -> np.ndarray:
    """The row after bias and penalties (what top_k and the rest see)."""
    y = apply_logit_bias(x, p.logit_bias)
    if p.penalized:
        y = apply_penalties(y, list(window)[-p.last_n:], p.repeat_penalty,
                            p.frequency_penalty, p.presence_penalty)
    return y


def log_softmax64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    e = np.exp(z - z.max())
    return np.log(e / e.sum())


def check_rows(sample, rng, n: int, rounds: int, rows=ROWS, seed=None) -> int:
    """sample(logits, params, uniforms, windows) -> list of Sampled for each round of fresh
    rows: each token is sample_row's with the same uniform number (or differs only where
    near_edge allows: float32 rounding at a cut or at u), the edge and bias rows give the token
    their penalty or bias decides, and log-probabilities match float64 NumPy's of the raw
    logits. Returns how many tokens differed near an edge."""
    differ = 0
    for _ in range(rounds):
        params, x, windows, want = make_batch(rng, rows, n)
        u = rng.random(len(params))
        got = sample(x, params, u, windows)
        assert len(got) == len(params)
        for r, (p, s) in enumerate(zip(params, got)):
            what = f"row {r} ({p}), seed {seed}"
            host = sample_row(x[r], p, float(u[r]), windows[r])
            if want[r] is not None:
                assert s.id == want[r] == host.id, what
            if p.greedy:
                assert s.id == host.id, what  # the first largest: exact
            elif s.id != host.id:
                y = processed(x[r], p, windows[r])
                chain = {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                         "min_p": p.min_p}
                assert device_ok(p) and near_edge(y, chain, float(u[r])), (what, s.id, host.id)
                differ += 1
            if p.logprobs is None:
                assert s.logprob is None and s.top is None, what
                continue
            lp = log_softmax64(x[r])
            assert abs(s.logprob - lp[s.id]) <= LOGPROB_TOL, (what, s.logprob, lp[s.id])
            assert len(s.top) == p.logprobs, what
            ids = [i for i, _ in s.top]
            assert ids == [int(i) for i in np.argsort(-lp, kind="stable")[:p.logprobs]], what
            assert np.abs(np.array([v for _, v in s.top]) - lp[ids]).max(initial=0) \
                <= LOGPROB_TOL, what
    return differ
