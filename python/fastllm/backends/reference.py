"""The NumPy reference backend: every op of base.py written plainly in float32.

It defines what the ops mean (the GPU kernels are tested against it) and is the fallback when no
GPU backend can run. Quantized weights are dequantized on first use and kept as float32 (a choice
the op set allows: this backend is for correctness, not memory).
"""

from __future__ import annotations

import math

import numpy as np

from ..gguf import TensorInfo
from ..quants import GGMLType, dequantize, dequantize_rows
from .base import Backend, Graph, KVSpec, Program, Value, Weight


class _RefWeight:
    """Raw GGUF bytes plus a lazily dequantized float32 copy."""

    def __init__(self, info: TensorInfo):
        self.info = info
        self._f32: np.ndarray | None = None

    def f32(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = dequantize(self.info.data, self.info.type, self.info.shape)
        return self._f32

    def rows(self, ids: np.ndarray) -> np.ndarray:
        if self._f32 is not None or self.info.type == GGMLType.F32:
            return self.f32()[ids]
        return dequantize_rows(self.info.data, self.info.type, self.info.shape[-1], ids)


def rope_angles(pos: np.ndarray, n_rot: int, base: float, freq_scale: float,
                freq_factors: np.ndarray | None) -> np.ndarray:
    """theta (n, n_rot/2) of positions pos, in float64 then rounded once: ggml computes
    theta_i = p * freq_scale * base^(-2i/n_rot) by repeated multiplication in float32; float64
    here keeps the reference at least as accurate as any kernel it judges."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
    return np.outer(pos.astype(np.float64) * freq_scale, inv)


def apply_rope(x: np.ndarray, pos: np.ndarray, n_head: int, head_dim: int, n_rot: int,
               base: float, freq_scale: float, neox: bool, freq_factors) -> np.ndarray:
    n = x.shape[0]
    h = x.reshape(n, n_head, head_dim).astype(np.float32, copy=True)
    theta = rope_angles(pos, n_rot, base, freq_scale, freq_factors)
    cos = np.cos(theta).astype(np.float32)[:, None, :]
    sin = np.sin(theta).astype(np.float32)[:, None, :]
    if neox:
        a, b = h[..., : n_rot // 2].copy(), h[..., n_rot // 2: n_rot].copy()
        h[..., : n_rot // 2] = a * cos - b * sin
        h[..., n_rot // 2: n_rot] = a * sin + b * cos
    else:
        a, b = h[..., 0:n_rot:2].copy(), h[..., 1:n_rot:2].copy()
        h[..., 0:n_rot:2] = a * cos - b * sin
        h[..., 1:n_rot:2] = a * sin + b * cos
    return h.reshape(n, n_head * head_dim)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, n_head: int,
              n_kv_head: int, head_dim: int, scale: float, window: int = 0,
              softcap: float = 0.0) -> np.ndarray:
    """Causal GQA attention. q (n, H*D) at positions pos..pos+n-1; k, v (T, KV*D) hold
    positions 0..T-1 (T = pos + n). Row i attends to positions max(0, p-window+1)..p, p = pos+i."""
    n, t = q.shape[0], k.shape[0]
    qh = q.reshape(n, n_head, head_dim).transpose(1, 0, 2)  # (H, n, D)
    group = n_head // n_kv_head
    kh = np.repeat(k.reshape(t, n_kv_head, head_dim).transpose(1, 0, 2), group, axis=0)
    vh = np.repeat(v.reshape(t, n_kv_head, head_dim).transpose(1, 0, 2), group, axis=0)
    s = (qh @ kh.transpose(0, 2, 1)) * np.float32(scale)  # (H, n, T)
    if softcap:
        s = np.tanh(s / softcap) * softcap
    p = pos + np.arange(n)[:, None]
    j = np.arange(t)[None, :]
    masked = j > p
    if window:
        masked |= j <= p - window
    s = np.where(masked[None], -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    w = e / e.sum(axis=-1, keepdims=True)
    return (w @ vh).transpose(1, 0, 2).reshape(n, n_head * head_dim).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))


class _RefProgram(Program):
    def __init__(self, backend: ReferenceBackend, graph: Graph):
        self.b, self.g = backend, graph

    def run(self, tokens: np.ndarray, pos: int) -> dict[str, np.ndarray]:
        g, b = self.g, self.b
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        assert tokens.shape[0] == g.n_tokens
        env: dict[int, np.ndarray] = {g.tokens.id: tokens}

        def val(a):
            if isinstance(a, Value):
                return env[a.id]
            if isinstance(a, Weight):
                return a.handle.f32()
            return a

        n = g.n_tokens
        positions = np.arange(pos, pos + n)
        for node in g.nodes:
            op, at, args = node.op, node.attrs, node.args
            if op == "get_rows":
                r = args[0].handle.rows(val(args[1]))
            elif op == "rms_norm":
                x = val(args[0])
                gs = at["group"]
                xg = x.reshape(x.shape[0], -1, gs)
                ms = np.mean(xg.astype(np.float64) ** 2, axis=-1, keepdims=True)
                r = (xg / np.sqrt(ms + at["eps"])).astype(np.float32)
                if args[1] is not None:
                    r = r * val(args[1])
                r = r.reshape(x.shape)
            elif op == "mul_mat":
                r = val(args[0]) @ val(args[1]).T
            elif op == "add":
                r = val(args[0]) + val(args[1])
            elif op == "mul":
                r = val(args[0]) * val(args[1])
            elif op == "scale":
                r = val(args[0]) * np.float32(at["s"])
            elif op == "rope":
                ff = val(args[1]) if args[1] is not None else None
                r = apply_rope(val(args[0]), positions, at["n_head"], at["head_dim"],
                               at["n_rot"], at["base"], at["freq_scale"], at["neox"], ff)
            elif op == "kv_store":
                b.kv_write(at["layer"], positions, val(args[0]), val(args[1]))
                continue
            elif op == "attention":
                k, v = b.kv_read(at["layer"], pos + n)
                r = attention(val(args[0]), k, v, pos, at["n_head"], at["n_kv_head"],
                              at["head_dim"], at["scale"], at["window"], at["softcap"])
            elif op == "swiglu":
                gt = val(args[0])
                r = gt / (1.0 + np.exp(-gt)) * val(args[1])
            elif op == "geglu":
                r = gelu_tanh(val(args[0])) * val(args[1])
            elif op == "last_row":
                r = val(args[0])[-1:]
            elif op == "argmax":
                r = np.argmax(val(args[0]), axis=-1).astype(np.int32)
            else:
                raise NotImplementedError(f"reference backend: op {op!r}")
            env[node.out.id] = np.ascontiguousarray(r, dtype=np.int32 if node.out.dtype == "i32"
                                                    else np.float32)
        return {k: env[v.id] for k, v in g.outputs.items()}


class ReferenceBackend(Backend):
    """NumPy, float32: the oracle for every other backend."""

    name = "reference"

    def __init__(self):
        self.spec: KVSpec | None = None
        self.state: dict[str, np.ndarray] = {}
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []

    def load_weight(self, info: TensorInfo) -> Weight:
        return Weight(info.name, info.type, info.shape, _RefWeight(info))

    def init_kv(self, spec: KVSpec) -> None:
        self.spec = spec
        self.state = {name: np.zeros(n, np.float32) for name, n in spec.state}
        # NaN, not zero: a read of a row never written shows up in the output
        self.k = [np.full((s, d), np.nan, np.float32) for s, d in zip(spec.sizes, spec.kv_dim)]
        self.v = [np.full((s, d), np.nan, np.float32) for s, d in zip(spec.sizes, spec.kv_dim)]

    def kv_write(self, layer: int, positions: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        size = self.spec.sizes[layer]
        self.k[layer][positions % size] = k
        self.v[layer][positions % size] = v

    def kv_read(self, layer: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of positions 0..t-1 in position order. Ring layers return the stored positions
        with the ones that were overwritten as NaN-free placeholders that the window masks."""
        size = self.spec.sizes[layer]
        if t <= size:
            return self.k[layer][:t], self.v[layer][:t]
        idx = np.arange(t) % size
        return self.k[layer][idx], self.v[layer][idx]

    def compile(self, graph: Graph) -> Program:
        return _RefProgram(self, graph)

    def reset_state(self) -> None:
        for v in self.state.values():
            v[:] = 0.0

    def get_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            self.state[k][:] = v
