"""The Gated DeltaNet ops (shaders/delta.wgsl) on WebGPU against the NumPy reference: fresh
random inputs (tests/delta_cases.py), activation buffers poisoned with NaN before each run, with
the adapter's optional features and with them forced off. The state ops run in slots and in rows
mode from random states, each run starting from what the previous one left on the device."""

from __future__ import annotations

import numpy as np
import pytest

from delta_cases import delta_case
from fastllm.backends.base import Graph, KVSpec
from fastllm.errors import UnsupportedError
from rows_checks import Twin, run_rwkv_case

from .pairs import F32_TOL, f32_info


def test_delta_ops_slots_and_rows(gpu, rng):
    infos, spec, states, build = delta_case(rng)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())
    try:
        run_rwkv_case(twin, build, states, 2 * F32_TOL, rng)
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {rng.seed_value})") from None


def test_delta_errors(gpu):
    gpu.init_kv(KVSpec(8, (), (), (("s", 16),)))
    w = gpu.load_weight(f32_info("x", np.zeros((2, 3 * 512))))
    one = gpu.load_weight(f32_info("one", np.zeros(1)))
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    ab = g.slice_cols(x, 0, 1)
    g.output("y", g.gated_delta(x, ab, ab, one, one, "s", head_dim=512, n_k_heads=1, eps=1e-6))
    with pytest.raises(UnsupportedError, match="heads of 512"):
        gpu.compile(g)
    cw = gpu.load_weight(f32_info("cw", np.zeros((3 * 512, 12))))
    g = Graph(2)
    g.output("y", g.ssm_conv(g.get_rows(w, g.tokens), cw, "s"))
    with pytest.raises(UnsupportedError, match="12 taps"):
        gpu.compile(g)
