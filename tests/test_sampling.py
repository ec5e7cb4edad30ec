"""Sampling functions against their definitions; sample_row (one row of a batched step) against
llama.cpp's chain written out in float64."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from fastllm.errors import ArgumentError
from fastllm.sampling import (
    DEVICE_BIAS,
    RowSampling,
    apply_penalties,
    apply_repeat_penalty,
    device_ok,
    draw,
    make_sampler,
    min_p_mask,
    sample_row,
    softmax,
    top_k_mask,
    top_p_mask,
)


def test_top_k_keeps_k_largest():
    x = np.random.default_rng().standard_normal(100).astype(np.float32)
    kept = np.isfinite(top_k_mask(x, 7))
    assert kept.sum() == 7 and set(np.flatnonzero(kept)) == set(np.argsort(-x)[:7])


def test_top_p_smallest_set_reaching_p():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert np.isfinite(top_p_mask(x, 0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(top_p_mask(x, 0.85)).tolist() == [True, True, True, False]


def test_min_p_relative_to_max():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert np.isfinite(min_p_mask(x, 0.2)).tolist() == [True, True, True, False]


def test_repeat_penalty_sign_aware():
    x = np.array([2.0, -2.0, 1.0], np.float32)
    y = apply_repeat_penalty(x, [0, 1], 2.0)
    assert y.tolist() == [1.0, -4.0, 1.0]


def test_greedy_and_seed():
    x = np.random.default_rng().standard_normal(50).astype(np.float32)
    assert make_sampler(temperature=0)(x, []) == int(np.argmax(x))
    a = [make_sampler(temperature=1.0, seed=3)(x, []) for _ in range(5)]
    assert len(set(a)) == 1
    s = make_sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    draws = np.bincount([s(x, []) for _ in range(4000)], minlength=50) / 4000
    assert np.abs(draws - softmax(x)).max() < 0.05


def test_draw_is_numpy_choice_of_the_chain():
    """draw(x, ..., u) with u from Generator.random() picks what Generator.choice over the
    chain's probabilities picks with the same generator state, so the device's sampling (which
    draws with the host generator's numbers) can be checked against it; make_sampler draws so."""
    rng = np.random.default_rng()
    chain = {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05}
    for _ in range(200):
        x = (3 * rng.standard_normal(300)).astype(np.float32)
        seed = int(rng.integers(1 << 31))
        p = softmax(min_p_mask(top_p_mask(top_k_mask(x, 20), 0.9), 0.05) / 0.7)
        want = int(np.random.default_rng(seed).choice(300, p=p))
        assert draw(x, u=np.random.default_rng(seed).random(), **chain) == want
        assert make_sampler(seed=seed, **chain)(x, []) == want


def test_sampler_chain_for_the_device():
    """make_sampler exposes its chain (and generator) for the device loops: not for greedy
    decoding, nor for a penalty window past DEVICE_LAST_N ids."""
    s = make_sampler(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=2)
    assert s.chain == {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                       "penalty": 1.0, "last_n": 0}
    assert s.rng.random() == np.random.default_rng(2).random()
    assert make_sampler(repeat_penalty=1.1, repeat_last_n=32).chain["last_n"] == 32
    assert make_sampler(repeat_penalty=1.1, repeat_last_n=100).chain is None  # host only
    assert make_sampler(temperature=0).chain is None


def test_draw_with_the_penalty_is_the_sampler():
    """draw's penalty over the last last_n ids of `recent` is make_sampler's over history."""
    rng = np.random.default_rng()
    chain = {"temperature": 1.1, "top_k": 30, "top_p": 0.97, "min_p": 0.0}
    for _ in range(100):
        x = (2 * rng.standard_normal(200)).astype(np.float32)
        hist = [int(t) for t in rng.integers(0, 200, 90)]
        seed = int(rng.integers(1 << 31))
        s = make_sampler(seed=seed, repeat_penalty=1.3, repeat_last_n=24, **chain)
        u = np.random.default_rng(seed).random()
        assert s(x, hist) == draw(x, u=u, penalty=1.3, last_n=24, recent=hist, **chain)


# -- sample_row: one row of a batched step, against a float64 model written out here ----------
def chain_f64(logits, p, u, window):
    """llama.cpp's chain in float64, written out without fastllm.sampling: bias, penalties
    (counts over the last last_n ids), then greedy, or top_k (values equal to the k-th kept),
    top_p, min_p, temperature and the first token whose cumulative share passes u. Returns
    (token, the processed logits before the cuts)."""
    x = np.asarray(logits, np.float64).copy()
    for i, b in p.logit_bias:
        x[i] += b
    if p.last_n > 0:
        counts = collections.Counter(int(t) for t in list(window)[-p.last_n:])
        for i, c in counts.items():
            x[i] = x[i] / p.repeat_penalty if x[i] > 0 else x[i] * p.repeat_penalty
            x[i] -= c * p.frequency_penalty + p.presence_penalty
    if p.temperature <= 0:
        return int(np.argmax(x)), x
    keep = np.ones(len(x), bool)
    if 0 < p.top_k < len(x):
        keep &= x >= np.sort(x)[::-1][p.top_k - 1]
    e = np.where(keep, np.exp(x - x[keep].max()), 0.0)
    order = np.argsort(-e, kind="stable")
    cum = np.cumsum(e[order]) / e.sum()
    n_keep = int(np.argmax(cum >= p.top_p)) + 1 if p.top_p < 1 else int(keep.sum())
    keep2 = np.zeros(len(x), bool)
    keep2[order[:n_keep]] = True
    keep2 &= e >= p.min_p * e.max()
    w = np.where(keep2, np.exp((x - x[keep2].max()) / p.temperature), 0.0)
    cdf = np.cumsum(w) / w.sum()
    return int(np.argmax(cdf > u)), x


ROW_CHAINS = [
    RowSampling(),  # the defaults
    RowSampling(temperature=0.0, logprobs=5),
    RowSampling(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0),  # no cuts at all
    RowSampling(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, repeat_penalty=1.5, last_n=16),
    RowSampling(temperature=1.0, top_k=50, top_p=0.97, min_p=0.0, presence_penalty=1.2,
                frequency_penalty=0.6, last_n=30, logprobs=20),
    RowSampling(temperature=0.9, top_k=100, top_p=0.9, min_p=0.02, repeat_penalty=0.8,
                presence_penalty=-0.5, frequency_penalty=-0.3, last_n=200,
                logit_bias=((3, 4.0), (7, -100.0), (3, 1.5)), logprobs=0),
    RowSampling(temperature=0.0, repeat_penalty=1.3, frequency_penalty=2.0, last_n=8),
]


@pytest.mark.parametrize("p", ROW_CHAINS, ids=range(len(ROW_CHAINS)))
def test_sample_row_is_the_chain(p):
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 31))
    rng = np.random.default_rng(seed)
    for _ in range(300):
        x = (2.5 * rng.standard_normal(257)).astype(np.float32)
        window = [int(t) for t in rng.integers(0, 40, int(rng.integers(0, 80)))]
        u = float(rng.random())
        want, _ = chain_f64(x, p, u, window)
        got = sample_row(x, p, u, window)
        assert got.id == want, f"seed {seed}"
        if p.logprobs is None:
            assert got.logprob is None and got.top is None
            continue
        # the raw distribution: log of softmax, in float64 from the float32 row
        probs = np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum()
        assert got.logprob == pytest.approx(np.log(probs[want]), abs=1e-12)
        assert len(got.top) == p.logprobs
        ids = [i for i, _ in got.top]
        assert ids == list(np.argsort(-probs, kind="stable")[:p.logprobs])
        assert [v for _, v in got.top] == pytest.approx(np.log(probs[ids]), abs=1e-12)


def test_sample_row_draws_as_numpy_choice():
    """With plain defaults and no penalties, sample_row(u) is draw(u), so a row sampled alone
    with a seed draws what make_sampler draws with it."""
    rng = np.random.default_rng()
    p = RowSampling(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)
    for _ in range(100):
        x = (3 * rng.standard_normal(300)).astype(np.float32)
        seed = int(rng.integers(1 << 31))
        want = make_sampler(seed=seed, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)(x, [])
        assert sample_row(x, p, np.random.default_rng(seed).random()).id == want


def test_penalties_as_llama_cpp():
    """The repetition penalty once per id (CTRL: > 0 divided, <= 0 multiplied), then minus
    count * frequency + presence; ids outside the row are not tokens."""
    x = np.array([2.0, -2.0, 1.0, 0.0, 3.0], np.float32)
    y = apply_penalties(x, [0, 0, 0, 1, 3, 9, -1], 2.0, 0.5, 0.25)
    assert y.tolist() == [2.0 / 2 - (3 * 0.5 + 0.25), -2.0 * 2 - (0.5 + 0.25), 1.0,
                          0.0 - (0.5 + 0.25), 3.0]
    assert apply_penalties(x, [0, 1], 1.0, 0.0, 0.0) is x


def test_bias_and_penalties_decide_greedy():
    x = np.array([1.0, 5.0, 4.9, -3.0], np.float32)
    assert sample_row(x, RowSampling(temperature=0), 0.0).id == 1
    # a bias flips the argmax; repeated ids add up
    p = RowSampling(temperature=0, logit_bias=((3, 4.5), (3, 4.5)))
    assert sample_row(x, p, 0.0).id == 3  # -3 + 9 > 5
    assert sample_row(x, RowSampling(temperature=0, logit_bias=((3, 4.5),)), 0.0).id == 1
    # the window's counts matter: 1 appears twice, 2 once; frequency 0.15 makes 1 lose
    p = RowSampling(temperature=0, frequency_penalty=0.15, last_n=4)
    assert sample_row(x, p, 0.0, [1, 2, 1]).id == 2
    assert sample_row(x, p, 0.0, [1, 2]).id == 1
    # only the last last_n ids count: 1's early occurrences fall out of the window
    p = RowSampling(temperature=0, repeat_penalty=1.1, last_n=2)
    assert sample_row(x, p, 0.0, [1, 1, 1, 0, 3]).id == 1
    assert sample_row(x, p, 0.0, [0, 1]).id == 2
    # last_n 0: no window
    p = RowSampling(temperature=0, repeat_penalty=5.0, last_n=0)
    assert sample_row(x, p, 0.0, [1]).id == 1


@pytest.mark.parametrize("field,value,words", [
    ("temperature", -0.1, ">= 0"), ("temperature", float("nan"), "finite"),
    ("top_k", -1, ">= 0"), ("top_k", 2.5, "integer"), ("top_p", 1.01, "[0.0, 1.0]"),
    ("min_p", -0.2, "[0.0, 1.0]"), ("repeat_penalty", 0.0, "> 0"),
    ("presence_penalty", 2.5, "[-2.0, 2.0]"), ("frequency_penalty", -3, "[-2.0, 2.0]"),
    ("last_n", -1, ">= 0"), ("logprobs", 21, "[0, 20]"), ("logprobs", True, "[0, 20]"),
    ("logit_bias", ((100, 1.0),), "[0, 99]"), ("logit_bias", ((-1, 1.0),), "[0, 99]"),
    ("logit_bias", ((5, float("inf")),), "finite"), ("logit_bias", (5,), "pairs"),
])
def test_row_sampling_check_names_the_field(field, value, words):
    with pytest.raises(ArgumentError) as e:
        RowSampling(**{field: value}).check(100)
    assert isinstance(e.value, ValueError)
    assert field in str(e.value) and words in str(e.value)


def test_row_sampling_check_accepts_the_edges():
    RowSampling(temperature=0, top_k=0, top_p=0.0, min_p=1.0, repeat_penalty=1e-3,
                presence_penalty=-2, frequency_penalty=2, last_n=0,
                logit_bias=((0, -100.0), (99, 100)), logprobs=20).check(100)
    RowSampling(logprobs=0).check(1)


def test_device_ok():
    assert device_ok(RowSampling())
    assert device_ok(RowSampling(top_k=64)) and not device_ok(RowSampling(top_k=65))
    assert not device_ok(RowSampling(top_k=0))
    assert device_ok(RowSampling(temperature=0, top_k=0))  # greedy needs no cut
    assert device_ok(RowSampling(last_n=1000))  # no penalty: the window is not read
    assert not device_ok(RowSampling(repeat_penalty=1.1, last_n=65))
    assert device_ok(RowSampling(presence_penalty=0.5, last_n=64))
    assert device_ok(RowSampling(logit_bias=tuple((i, 1.0) for i in range(DEVICE_BIAS))))
    assert not device_ok(RowSampling(logit_bias=tuple((i, 1.0) for i in range(DEVICE_BIAS + 1))))
