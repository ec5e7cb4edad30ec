"""The Gated DeltaNet ops (metal/delta.metal) through MetalLowering against the reference backend:
fresh random inputs (tests/delta_cases.py) in slots and rows mode from random states, each run
starting from the state the previous one left in the device buffers. On Linux the kernels run in
the MSL emulator in strict mode (outputs poisoned before each dispatch) under the forward,
reverse and random schedules; on macOS arm64 on the GPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from metal_env import make_runtime

from delta_cases import TABLE, chunked_case, delta_case
from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.metal import MetalBackend
from fastllm.errors import UnsupportedError
from rows_checks import Twin, check, f32_info, rel_err, run_rwkv_case

rng = np.random.default_rng()
KERNELS = {"kernel_slice_cols_f32", "kernel_dot_gate_f32", "kernel_norm_gate_f32",
           "kernel_ssm_conv_f32", "kernel_ssm_conv_rows_f32", "kernel_ssm_conv_silu_f32",
           "kernel_ssm_conv_silu_rows_f32", "kernel_gated_delta_f32", "kernel_gated_delta_rows_f32",
           "kernel_unary_softplus_f32"}
CHUNKED = {"kernel_gated_delta_prep_f32", "kernel_gated_delta_chunks_f32"}


def metal(policy="forward") -> MetalBackend:
    return MetalBackend(runtime=make_runtime("emu", policy, seed=int(rng.integers(99))),
                        self_check=False)


@pytest.mark.parametrize("policy", ["forward", "reverse", "random"])
def test_delta_ops_slots_and_rows(policy):
    infos, spec, states, build = delta_case(rng)
    twin = Twin(metal(policy), infos, spec)
    run_rwkv_case(twin, build, states, 2e-5, rng)
    ran = {d.kernel for (b, _, _, _), p in twin.progs.items() if b == id(twin.dev)
           for d in p.plan.dispatches}
    assert KERNELS <= ran, sorted(KERNELS - ran)


@pytest.mark.parametrize("s,hk,hv,runs", [(128, 1, 2, [40]), (32, 2, 6, [70, 33])])
def test_gated_delta_chunked(monkeypatch, s, hk, hv, runs):
    """The chunked gated_delta (chunks of 32) against the reference's row-by-row recurrence, as
    tests/backends/test_delta_chunked.py on WebGPU (its docstring gives the 2e-5 bound): runs
    over 2 and 3 chunks ending in partial ones, the state carried from one run to the next, an
    unused slot's NaN state untouched; the emulator poisons each dispatch's outputs (the
    scratch of the prep among them)."""
    from fastllm.backends.metal import delta

    monkeypatch.setattr(delta, "GD_CHUNK_MIN", 1)
    infos, spec, states, build = chunked_case(rng, s, hk, hv)
    twin = Twin(metal("random"), infos, spec)
    twin.set_states(states)
    for n in runs:
        got, want = twin.run(build, rng.integers(0, TABLE, n), 0, 1)
        check(got, want, 2e-5, f"{n} rows")
        assert rel_err(twin.dev.get_state(1)["ssm"], twin.ref.get_state(1)["ssm"]) <= 2e-5
        assert np.isnan(twin.dev.get_state(2)["ssm"]).all(), "unused slot 2's state written"
    ran = {d.kernel for (b, _, _, _), p in twin.progs.items() if b == id(twin.dev)
           for d in p.plan.dispatches}
    assert CHUNKED <= ran and "kernel_gated_delta_f32" not in ran


def test_delta_errors():
    be = metal()
    be.init_kv(KVSpec(8, (), (), (("s", 16),)))
    w = be.load_weight(f32_info("x", np.zeros((2, 3 * 512))))
    one = be.load_weight(f32_info("one", np.zeros(1)))
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    ab = g.slice_cols(x, 0, 1)
    g.output("y", g.gated_delta(x, ab, ab, one, one, "s", head_dim=512, n_k_heads=1, eps=1e-6))
    with pytest.raises(UnsupportedError, match="heads of 512"):
        be.compile(g)
    cw = be.load_weight(f32_info("cw", np.zeros((3 * 512, 12))))
    g = Graph(2)
    g.output("y", g.ssm_conv(g.get_rows(w, g.tokens), cw, "s"))
    with pytest.raises(UnsupportedError, match="12 taps"):
        be.compile(g)


def test_delta_kernels_are_known():
    """Every kernel of metal/delta.metal is one this module runs (on the emulator, where the
    library's kernel list is at hand)."""
    if "mslemu_runtime" not in sys.modules:
        pytest.skip("the emulator's library list")
    libs = sys.modules["mslemu_runtime"].libraries()
    delta = libs["kernel_gated_delta_f32"]
    assert {k for k, lib in libs.items() if lib is delta} <= KERNELS | CHUNKED
