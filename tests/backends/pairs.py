"""What the op tests share: tolerances, the backend variants, seeded random data, tensor
infos, and Pair (the same weights on the reference and a WebGPU backend) with its checks."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.reference import ReferenceBackend
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType, random_blocks

FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
# max |gpu - ref| / max |ref| of a mat-mul. Float weights are read exactly (f32 sums in another
# order); quantized prefill may round its tiles to f16 (shader-f16), ~2^-11 per value.
MATMUL_TOL = {t: 1e-5 if t in FLOATS else 2e-3 for t in SUPPORTED_TYPES}
# prefill tiles with shader-f16 (F16 and BF16 weights too; F32 stays f32): x rounded to f16 and
# each unit's 32 products summed in f16 before the f32 sums: ~1e-3 of the largest output over
# thousands of values (rows of only two or three units: up to 3.0e-3, test_mul_mat_odd_units);
# a lost or doubled unit, or a wrong element, is off by a large fraction of it
MM_F16_TOL = 4e-3


def mm_tol(gpu, t: GGMLType, m: int) -> float:
    from fastllm.backends.webgpu.matmul_shapes import MV_MAX_M

    f16 = gpu.f16 and m > MV_MAX_M and t != GGMLType.F32
    return max(MATMUL_TOL[t], MM_F16_TOL if f16 else 0.0)
F32_TOL = 1e-5  # element-wise ops and norms: f32 rounding only
ROPE_TOL = 2e-4  # angles p * inv_freq rounded once in f32, and the GPU's sin/cos
ATTN_TOL = 2e-5
# prefill attention with shader-f16 keeps its Q, K and V tiles in f16 (as a cache in f16 would),
# products and softmax in f32: scores move by ~|s| 2^-11 (observed up to 1.1e-3 of the largest
# output over 280 prefill checks of test_attention_runs)
ATTN_F16_TOL = 5e-3


def attn_tol(gpu, n: int, tol: float = ATTN_TOL, f16_tol: float = ATTN_F16_TOL) -> float:
    """f16_tol for prefill (n > 1) on a device with shader-f16, else tol."""
    return max(tol, f16_tol) if gpu.f16 and n > 1 else tol

# (features left off, naga's run-time checks on): the adapter's features with the kernels as the
# backend compiles them by default, and the fallback paths with naga's checks (the other way
# shaders can be compiled). These backends keep one-token mat-vecs in floats (int_dot off):
# the integer mat-vec rounds x to bytes, and test_int_dot.py checks it against a float64 model
# of that rounding instead of this file's float tolerances.
VARIANTS = {"features": (None, False), "plain": ({"shader-f16", "subgroup"}, True)}


def _backend(disable, checked=None, int_dot=False):
    from fastllm.errors import BackendError

    try:
        from fastllm.backends.webgpu import WebGPUBackend

        return WebGPUBackend(disable=disable, checked=checked, int_dot=int_dot)
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU adapter: {e}")


class SeededRng:
    """A numpy Generator that remembers its seed (printed when a check fails; set
    FASTLLM_TEST_SEED to it to run the failing case again on the same data)."""

    def __init__(self):
        self.seed_value = int(os.environ.get("FASTLLM_TEST_SEED") or secrets.randbits(63))
        self._gen = np.random.default_rng(self.seed_value)

    def __getattr__(self, name):
        return getattr(self._gen, name)


def info(name: str, t: GGMLType, shape: tuple[int, ...], data: np.ndarray) -> TensorInfo:
    return TensorInfo(name, t, shape, np.ascontiguousarray(data).view(np.uint8).reshape(-1), "")


def f32_info(name: str, a: np.ndarray) -> TensorInfo:
    a = np.ascontiguousarray(a, np.float32)
    return info(name, GGMLType.F32, a.shape, a)


def quant_info(name: str, t: GGMLType, rows: int, cols: int, rng) -> TensorInfo:
    return info(name, t, (rows, cols), random_blocks(t, rows, cols, rng))


class Pair:
    """The same weights and KV cache on the reference and a WebGPU backend."""

    def __init__(self, gpu, infos: dict[str, TensorInfo], kv: KVSpec | None = None):
        self.ref, self.gpu = ReferenceBackend(), gpu
        self.w = {b: {n: b.load_weight(i) for n, i in infos.items()} for b in (self.ref, gpu)}
        if kv is not None:
            self.ref.init_kv(kv)
            gpu.init_kv(kv)

    def run(self, build, n: int, tokens: np.ndarray, pos: int = 0):
        """build(graph, weights) records the graph; returns (gpu outputs, reference outputs)."""
        out = []
        for b in (self.gpu, self.ref):
            g = Graph(n)
            build(g, self.w[b])
            prog = b.compile(g)
            if b is self.gpu:
                prog.poison()
            out.append(prog.run(tokens, pos))
        return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.isfinite(a).all(), "non-finite values (a skipped write?)"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(got: dict, want: dict, tol: float, rng, what: str = "") -> None:
    for name, ref in want.items():
        e = rel_err(got[name], ref)
        assert e <= tol, (f"{what} {name}: relative error {e:.2e} > {tol:.0e} "
                          f"(seed {rng.seed_value})")

