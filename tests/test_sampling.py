"""Sampling functions against their definitions."""

from __future__ import annotations

import numpy as np

from fastllm.sampling import (
    apply_repeat_penalty,
    draw,
    make_sampler,
    min_p_mask,
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
