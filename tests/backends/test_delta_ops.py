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


def test_norm_gate_writes_the_projections_x(rng, monkeypatch):
    """norm_gate read by an integer mat-vec writes that mat-vec's quantized x itself
    (kernel_norm_gate_q8: no quantize_x dispatch), giving the products of the norm_gate output
    quantized by quantize_x (the same bytes: Q8_0 reads no block sums)."""
    from fastllm.backends.webgpu import xq_plans
    from fastllm.quants import GGMLType, random_blocks

    from .pairs import _backend, info

    be = _backend(None, False, int_dot=True)
    d, n_out, group = 256, 96, 128
    w = {n: be.load_weight(f32_info(n, a)) for n, a in (
        ("x", rng.standard_normal((8, d))), ("z", rng.standard_normal((8, d))),
        ("nw", rng.uniform(0.5, 1.5, group)))}
    w["o"] = be.load_weight(info("o", GGMLType.Q8_0, (n_out, d),
                                 random_blocks(GGMLType.Q8_0, n_out, d, rng)))

    def run():
        g = Graph(1)
        y = g.norm_gate(g.get_rows(w["x"], g.tokens), w["nw"], g.get_rows(w["z"], g.tokens),
                        1e-6, group)
        g.output("o", g.matmul(y, w["o"]))
        prog = be.compile(g)
        labels = [p.label for p, _bg, _grid in prog.dispatches]
        prog.poison()
        out = prog.run(np.array([3], np.int32), 0)["o"].copy()
        prog.release()
        return labels, out

    labels, got = run()
    assert "kernel_norm_gate_q8" in labels and "kernel_quantize_x_f32" not in labels, labels
    monkeypatch.setattr(xq_plans, "NORM_GATE_MAX", 0)
    labels, want = run()
    assert "kernel_norm_gate_f32" in labels and "kernel_quantize_x_f32" in labels, labels
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    be.close()
