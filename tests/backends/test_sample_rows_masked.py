"""The WebGPU row sampler with allowed-token bitmasks (a grammar's constraint: the masks
buffer and kargs_sample_row.mask of shaders/sample_rows.wgsl) against fastllm.sampling.sample_row
with the same masks, on fresh random rows with the outputs poisoned before each call; masked
and free rows in one batch (tests/mask_cases.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.sampling import RowSampling
from mask_cases import MASKED_ROWS, check_masked, pack_words


@pytest.fixture(scope="module")
def sampler(gpu):
    from fastllm.backends.webgpu.sample_rows import RowSampler

    made = {}

    def get(n_vocab: int, max_rows: int):
        if (n_vocab, max_rows) not in made:
            made[n_vocab, max_rows] = RowSampler(gpu, n_vocab, max_rows)
        return made[n_vocab, max_rows]

    yield get
    for s in made.values():
        s.close()


def poisoned(s):
    def sample(x, params, u, windows, masks):
        s.poison()
        return s.sample(x, params, u, windows, masks)
    return sample


# 300: one part, the last word half used; 4999: three parts, a word across two of them
@pytest.mark.parametrize("n_vocab", [300, 4999])
def test_masked_rows_as_sample_row(sampler, rng, n_vocab):
    s = sampler(n_vocab, len(MASKED_ROWS) + 1)
    differ = check_masked(poisoned(s), rng, n_vocab, 3, seed=rng.seed_value)
    assert differ <= 2


def test_a_mask_is_for_its_step_only(sampler, rng):
    """A row masked in one call and free in the next: the old mask's words stay in the buffer
    but the flag is off, so the free row takes its argmax."""
    s = sampler(300, 4)
    x = rng.standard_normal((2, 300)).astype(np.float32)
    best = int(np.argmax(x[0]))
    allowed = np.ones(300, bool)
    allowed[best] = False
    p = [RowSampling(temperature=0)] * 2
    got = s.sample(x, p, [0.0, 0.0], [[], []], [pack_words(allowed), None])
    assert got[0].id != best and got[1].id == int(np.argmax(x[1]))
    got = s.sample(x, p, [0.0, 0.0], [[], []])
    assert got[0].id == best


def test_bad_masks(sampler):
    s = sampler(300, 2)
    p = [RowSampling()] * 2
    with pytest.raises(ValueError, match="10 32-bit words"):
        s.prepare(p, [0.5] * 2, [[]] * 2, [np.zeros(9, np.uint32), None])
    with pytest.raises(ValueError, match="as many masks"):
        s.prepare(p, [0.5] * 2, [[]] * 2, [None])
