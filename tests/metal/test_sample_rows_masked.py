"""The Metal row sampler with allowed-token bitmasks (a grammar's constraint: the masks buffer
and kargs_sample_row.mask of metal/sample_rows.metal) against fastllm.sampling.sample_row with
the same masks: in the MSL emulator under the forward, reverse and random schedules (on macOS
arm64 on the GPU), masked and free rows in one batch (tests/mask_cases.py)."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from metal_env import POLICIES, RUNTIMES, make_runtime

from fastllm.backends.metal.backend import MetalBackend
from fastllm.backends.metal.sample_rows import RowSampler
from mask_cases import MASKED_ROWS, check_masked


def poisoned(s):
    def sample(x, params, u, windows, masks):
        s.poison()
        return s.sample(x, params, u, windows, masks)
    return sample


@pytest.mark.parametrize("policy", POLICIES)
def test_masked_rows_on_the_emulator(policy):
    """Rows of 4,999 logits (three parts, a mask word across two of them)."""
    rt = make_runtime("emu", policy, seed=11)
    s = RowSampler(MetalBackend(runtime=rt, self_check=False), 4999, len(MASKED_ROWS))
    seed = secrets.randbits(63)
    assert check_masked(poisoned(s), np.random.default_rng(seed), 4999, 1, seed=seed) <= 1


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_masked_rows_short_vocab(rt_kind):
    """One part of 300 columns, the last mask word half used."""
    s = RowSampler(MetalBackend(runtime=make_runtime(rt_kind), self_check=False), 300,
                   len(MASKED_ROWS))
    seed = secrets.randbits(63)
    assert check_masked(poisoned(s), np.random.default_rng(seed), 300, 1, seed=seed) <= 1


def test_stories_writes_json_on_the_emulator(stories260k):
    """stories260K constrained by a schema on the emulated Metal backend, greedy and sampled:
    valid JSON, and the greedy text the reference backend gives."""
    import json

    import jsonschema

    from fastllm import Model

    schema = {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1,
                 "maxItems": 2}}, "required": ["color", "n", "tags"],
        "additionalProperties": False}
    emu = Model.load(stories260k, n_ctx=128, quiet=True,
                     backend=MetalBackend(runtime=make_runtime("emu", "random", seed=3),
                                          self_check=False))
    ref = Model.load(stories260k, n_ctx=128, quiet=True, backend="reference")
    try:
        greedy = emu.generate("Once upon a time", max_tokens=60, temperature=0,
                              json_schema=schema)
        jsonschema.validate(json.loads(greedy), schema)
        assert greedy == ref.generate("Once upon a time", max_tokens=60, temperature=0,
                                      json_schema=schema)
        g = emu.generate("Once upon a time", max_tokens=60, temperature=0.8, seed=2,
                         json_schema=schema, stream=True)
        jsonschema.validate(json.loads("".join(g)), schema)
        assert g.finish_reason == "stop"
    finally:
        emu.close()
        ref.close()
