"""Slots and rows mode (the batched engine, issue 22) on the WebGPU backend against the NumPy
reference (tests/rows_checks.py): the shaders that add the run's slot (kv.wgsl, rope_kv.wgsl,
attention.wgsl, attn_decode.wgsl, rwkv.wgsl) and the rows-mode ones (rows.wgsl, rwkv.wgsl's ROWS)
from fresh random inputs, activation buffers poisoned with NaN before each run, NaN caches and an
unused slot's NaN state; with the adapter's optional features and with them forced off."""

from __future__ import annotations

import pytest

from fastllm.backends.base import Graph
from rows_checks import (
    ATTN_SHAPES,
    Twin,
    attention_case,
    run_attention_case,
    run_rwkv_case,
    rwkv_case,
)

from .pairs import ATTN_F16_TOL, F32_TOL, ROPE_TOL


def _ops(twin: Twin, build, n: int, rows: bool) -> list[str]:
    """The ops the device program of n rows runs (after fusion)."""
    g = Graph(n, rows=rows)
    build(g, twin.w[twin.dev])
    prog = twin.dev.compile(g)
    ops = [node.op for node in prog.nodes]
    prog.release()
    return ops


# "split": decode attention through the split kernels (attn_decode.wgsl's kernel_attn_decode_f32
# and the reduce) instead of the one-dispatch kernel; "rope": a whole head rotated, so that a
# one-row run folds the rotations and the store into decode attention (attn_decode_rope);
# "sinks": a sink logit per head (gpt-oss), joined in the one-dispatch kernel (its rope form)
# and in rows mode in the split kernels' reduce (test_ops.py's test_attention_sinks: the rest)
# "norm": Qwen3's per-head norms of q and k, folded into attn_decode_rope's prologue
CASES = {"plain": (0.0, 16, False, False, False), "softcap_split": (8.0, 16, True, False, False),
         "rope": (0.0, None, False, False, False), "rope_split": (5.0, None, True, False, False),
         "sinks_rope": (0.0, None, False, True, False),
         "norm_rope": (0.0, None, False, False, True),
         "norm_rope_split": (0.0, None, True, False, True)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "h{}kv{}d{}".format(*s))
def test_attention_slots_and_rows(gpu, shape, case, rng, monkeypatch):
    """rope, kv_store and attention (full and windowed ring layers, GQA, softcap) in runs of one
    sequence in slots 0-2 (prefill, decode, fused rope_kv_store and attn_decode_rope) and in
    rows-mode steps over the three (rows.wgsl); slot 3 stays NaN in every cache."""
    from fastllm.backends.webgpu import attention as webgpu_attention

    softcap, n_rot, split, sinks, norm = CASES[case]
    if split:
        monkeypatch.setattr(webgpu_attention, "ATTN_DIRECT_MAX", 0)
    d = shape[2]
    infos, spec, build = attention_case(shape, rng, softcap, n_rot or d, sinks, norm)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())

    def tol(n, rows):
        # rope angles rounded once in f32; prefill tiles in f16 on a device with shader-f16;
        # the softcap cases' scores are small (scale head_dim^-1/2), no larger rounding
        return ATTN_F16_TOL if gpu.f16 and n > 1 and not rows else ROPE_TOL

    try:
        run_attention_case(twin, build, tol, rng)
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {rng.seed_value})") from None

    # rows mode fuses as one row does (rope_kv.wgsl's and attn_decode.wgsl's ROWS)
    rows_ops = _ops(twin, build, 3, True)
    assert rows_ops.count("rope_kv_store") + rows_ops.count("attn_decode_rope") == 2, rows_ops
    assert ("attn_decode_rope" in rows_ops) == (n_rot is None), rows_ops
    one = _ops(twin, build, 1, False)
    assert one.count("rope_kv_store") + one.count("attn_decode_rope") == 2, one
    assert ("attn_decode_rope" in one) == (n_rot is None), one
    if norm:  # layer 1's norms went into its attention (layer 0's roped q is an output)
        assert one.count("rms_norm") == rows_ops.count("rms_norm") == 2, (one, rows_ops)


def test_attention_rows_unfused(gpu, rng, monkeypatch):
    """Rows mode without its fusions (matmul_shapes.ROWS_FUSE off): rope and kv_store one
    dispatch each (rows.wgsl's kernel_rope_rows_f32 and kernel_kv_store_rows_f32)."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "ROWS_FUSE", False)
    infos, spec, build = attention_case(ATTN_SHAPES[0], rng)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())
    rows_ops = _ops(twin, build, 3, True)
    assert rows_ops.count("rope") == 4 and rows_ops.count("kv_store") == 2, rows_ops
    try:
        run_attention_case(twin, build, lambda n, rows: (ATTN_F16_TOL if gpu.f16 and n > 1
                                                         and not rows else ROPE_TOL), rng)
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {rng.seed_value})") from None


def test_attention_slots_unfused(rng):
    """Without fusion a run of one sequence stores through kv.wgsl and rotates through
    rope.wgsl (kernel_kv_store_f32 and kernel_rope_f32 with the run's slot)."""
    from fastllm.backends.webgpu import WebGPUBackend
    from fastllm.errors import BackendError

    try:
        be = WebGPUBackend(fuse=False)
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU adapter: {e}")
    try:
        infos, spec, build = attention_case(ATTN_SHAPES[0], rng)
        twin = Twin(be, infos, spec, prepare=lambda p: p.poison())
        assert "rope_kv_store" not in _ops(twin, build, 3, False)
        try:
            run_attention_case(twin, build, lambda n, rows: (ATTN_F16_TOL if be.f16 and n > 1
                                                             and not rows else ROPE_TOL), rng)
        except AssertionError as e:
            raise AssertionError(f"{e} (seed {rng.seed_value})") from None
    finally:
        be.close()


def test_rwkv_state_ops_slots_and_rows(gpu, rng):
    """token_shift, wkv6 and wkv7 (heads of 8 and 64) in runs of one sequence in slots 3, 1 and
    0 and in rows-mode steps (rwkv.wgsl with ROWS): every used slot's state equals the
    reference's after each run, the unused slot's stays NaN."""
    infos, spec, states, build = rwkv_case(rng)
    twin = Twin(gpu, infos, spec, prepare=lambda p: p.poison())
    try:
        run_rwkv_case(twin, build, states, 2 * F32_TOL, rng)
    except AssertionError as e:
        raise AssertionError(f"{e} (seed {rng.seed_value})") from None
