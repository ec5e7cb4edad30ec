"""Sampled decoding on a device against fastllm.sampling.draw: the chains and the check shared
by the WebGPU and Metal tests."""

from __future__ import annotations

import numpy as np

from fastllm.sampling import (
    apply_repeat_penalty,
    draw,
    min_p_mask,
    softmax,
    top_k_mask,
    top_p_mask,
)

SAMPLE_CHAINS = [  # make_sampler's default; no cuts; tight cuts; min_p alone; top_k 1;
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05},
    {"temperature": 1.7, "top_k": 64, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 0.5, "top_k": 7, "top_p": 0.6, "min_p": 0.3},
    {"temperature": 1.5, "top_k": 32, "top_p": 1.0, "min_p": 0.3},
    {"temperature": 1.0, "top_k": 1, "top_p": 0.9, "min_p": 0.0},
    # penalties
    {"temperature": 0.6, "top_k": 12, "top_p": 0.95, "min_p": 0.0, "penalty": 2.5, "last_n": 5},
    {"temperature": 0.4, "top_k": 64, "top_p": 0.99, "min_p": 0.01, "penalty": 0.7,
     "last_n": 64},
    # starts on the edge row: its largest (10) penalized by 1.3 stays above its second (7.3),
    # by 1.43 it does not
    {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "penalty": 1.3, "last_n": 64},
    # past what the device takes (top_k > DEVICE_TOP_K): the host loop, the same draws
    {"temperature": 0.9, "top_k": 100, "top_p": 0.9, "min_p": 0.0, "penalty": 1.2, "last_n": 8},
]
ON_DEVICE = sum(c["top_k"] <= 64 for c in SAMPLE_CHAINS)  # chains the device loops run


EDGE = -2  # the edge row of table_with_ties


def table_with_ties(rng, rows: int, cols: int) -> np.ndarray:
    """Logit rows; every other row has three equal largest values (in different chunks). The
    edge row is small but for a largest value of 10 and a second of 7.3, so a penalty's size
    decides between them."""
    table = (2 * rng.standard_normal((rows, cols))).astype(np.float32)
    for r in range(0, rows - 1, 2):
        table[r, rng.integers(0, cols, 3)] = float(table[r].max()) + 0.5
    table[EDGE] = 0.5 * rng.standard_normal(cols)
    a, b = rng.choice(cols, 2, replace=False)
    table[EDGE, a], table[EDGE, b] = 10.0, 7.3
    return table


def near_edge(row: np.ndarray, chain: dict, u: float, eps: float = 2e-5) -> bool:
    """Whether f32 rounding could change draw(row, u) with `chain` (row already penalized):
    u within eps of the cumulative probability at a token, or a top_p / min_p cut within eps
    of its limit."""
    x = top_k_mask(row.astype(np.float32), chain["top_k"])
    probs = np.sort(softmax(x))[::-1]
    cuts = np.abs(np.cumsum(probs) - chain["top_p"]).min() < eps
    x = top_p_mask(x, chain["top_p"])
    kept = softmax(x)
    cuts |= np.abs(kept[kept > 0] / kept.max() - chain["min_p"]).min() < eps
    cdf = np.cumsum(softmax(min_p_mask(x, chain["min_p"]) / chain["temperature"]))
    return bool(cuts or np.abs(cdf / cdf[-1] - u).min() < eps)


def check_sampled(run_sampled, table: np.ndarray, n: int, rng) -> int:
    """run_sampled(n, first, pos, chain, u, recent) over a program whose logits are the table
    row of the token (ids past the table read its last row, so the later steps share a row and
    a penalty bites), for each chain: each token is draw()'s on its row, number and window, or
    differs where near_edge allows. Returns how many differed."""
    rows = table.shape[0]
    differ = 0
    for chain in SAMPLE_CHAINS:
        edge = chain["top_k"] == 1 and chain.get("last_n", 0) > 0
        first = rows + EDGE if edge else int(rng.integers(0, rows))
        u = rng.random(n)
        # the window's ids before the steps: the edge row's largest column, then the input
        hist = [int(np.argmax(table[EDGE])), first]
        got = run_sampled(n, first, 0, chain, u, list(hist))
        assert len(got) == n
        tok = first
        for i in range(n):
            row = table[min(tok, rows - 1)]
            want = draw(row, u=u[i], recent=hist, **chain)
            if got[i] != want:
                last_n = chain.get("last_n", 0)
                pen = apply_repeat_penalty(row, hist[-last_n:] if last_n else (),
                                           chain.get("penalty", 1.0))
                assert near_edge(pen, chain, u[i]), (chain, i, got[i], want)
                differ += 1
            tok = got[i]
            hist.append(tok)
        if chain["top_k"] == 1:  # a largest value (equal ones all stay, as on the host)
            assert table[first, got[0]] == table[first].max()
    return differ
