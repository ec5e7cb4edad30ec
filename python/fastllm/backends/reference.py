"""The NumPy reference backend: every op of base.py written plainly in float32.

It defines what the ops mean (the GPU kernels are tested against it) and is the fallback when no
GPU backend can run. Quantized weights are dequantized on first use and kept as float32 (a choice
the op set allows: this backend is for correctness, not memory).
"""

from __future__ import annotations

import numpy as np

from ..gguf import TensorInfo
from ..quants import GGMLType, dequantize, dequantize_rows
from .base import Backend, Graph, KVSpec, Program, Value, Weight
from .numpy_ops import (
    apply_rope,
    attention,
    dot_gate,
    gated_delta,
    gelu_tanh,
    l2_norm,
    layer_norm,
    lerp,
    moe_route,
    mul_mat_blocks,
    mul_mat_id,
    per_expert,
    rms_norm,
    slice_cols,
    ssm_conv,
    token_shift,
    unary,
    wkv6,
    wkv7,
    wkv7_bonus,
)


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


class _RefProgram(Program):
    def __init__(self, backend: ReferenceBackend, graph: Graph):
        self.b, self.g = backend, graph

    def run(self, tokens: np.ndarray, pos: int, slot: int = 0) -> dict[str, np.ndarray]:
        if self.g.rows:
            raise ValueError("a rows-mode graph runs with run_rows")
        n = self.g.n_tokens
        return self._exec(tokens, np.full(n, slot), np.arange(pos, pos + n))

    def run_rows(self, tokens: np.ndarray, slots: np.ndarray,
                 positions: np.ndarray) -> dict[str, np.ndarray]:
        if not self.g.rows:
            raise ValueError("run_rows needs a rows-mode graph (Graph.rows)")
        return self._exec(tokens, np.asarray(slots).reshape(-1),
                          np.asarray(positions).reshape(-1))

    def _exec(self, tokens: np.ndarray, slots: np.ndarray,
              positions: np.ndarray) -> dict[str, np.ndarray]:
        """Row i is at position positions[i] of the sequence in slot slots[i]: in sequence mode
        one slot and consecutive positions, in rows mode one row per sequence."""
        g, b = self.g, self.b
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        assert tokens.shape[0] == g.n_tokens == len(slots) == len(positions)
        slots, positions = slots.astype(np.int64), positions.astype(np.int64)
        env: dict[int, np.ndarray] = {g.tokens.id: tokens}

        def val(a):
            if isinstance(a, Value):
                return env[a.id]
            if isinstance(a, Weight):
                return a.handle.f32()
            return a

        n = g.n_tokens
        for node in g.nodes:
            op, at, args = node.op, node.attrs, node.args
            if op == "get_rows":
                r = args[0].handle.rows(val(args[1]))
            elif op == "rms_norm":
                w_ = val(args[1]) if args[1] is not None else None
                r = rms_norm(val(args[0]), w_, at["eps"], at["group"])
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
                b.kv_write(at["layer"], slots, positions, val(args[0]), val(args[1]))
                continue
            elif op == "attention":
                sinks = at.get("sinks")
                attn = (at["n_head"], at["n_kv_head"], at["head_dim"], at["scale"], at["window"],
                        at["softcap"], None if sinks is None else val(sinks).reshape(-1))
                q = val(args[0])
                # sequence mode: all rows over one slot; rows mode: each row over its own
                spans = [(0, n)] if not g.rows else [(i, i + 1) for i in range(n)]
                r = np.empty_like(q)
                for i0, i1 in spans:
                    k, v = b.kv_read(at["layer"], int(slots[i0]), int(positions[i1 - 1]) + 1)
                    r[i0:i1] = attention(q[i0:i1], k, v, int(positions[i0]), *attn)
            elif op == "swiglu":
                gt = val(args[0])
                with np.errstate(over="ignore"):  # exp(-g) = inf below g = -88: silu -> -0
                    r = gt / (1.0 + np.exp(-gt)) * val(args[1])
            elif op == "swiglu_oai":
                lim, alpha = np.float32(at["limit"]), np.float32(at["alpha"])
                x = np.minimum(val(args[0]), lim)
                y = np.clip(val(args[1]), -lim, lim)
                with np.errstate(over="ignore"):  # x < -52 (alpha 1.702): exp -> inf, out -> -0
                    r = x / (np.float32(1) + np.exp(alpha * -x)) * (y + np.float32(1))
            elif op == "geglu":
                r = gelu_tanh(val(args[0])) * val(args[1])
            elif op == "last_row":
                r = val(args[0])[-1:]
            elif op == "argmax":
                r = np.argmax(val(args[0]), axis=-1).astype(np.int32)
            elif op == "layer_norm":
                w_, b_ = (val(t) if t is not None else None for t in args[1:3])
                r = layer_norm(val(args[0]), w_, b_, at["eps"], at["group"])
            elif op == "unary":
                r = unary(val(args[0]), at["fn"])
            elif op == "lerp":
                mu, mu_v = (val(t) if t is not None else None for t in args[2:4])
                r = lerp(val(args[0]), val(args[1]), mu, at["mu_row"], mu_v, at["mu_col"])
            elif op == "token_shift":
                r = self._per_slot(token_shift, args[:1], val, at["state"], slots)
            elif op == "l2_norm":
                r = l2_norm(val(args[0]), at["eps"], at["group"])
            elif op == "mul_mat_blocks":
                r = mul_mat_blocks(val(args[0]), val(args[1]))
            elif op == "wkv6":
                r = self._per_slot(wkv6, args, val, at["state"], slots, at["head_size"])
            elif op == "wkv7":
                r = self._per_slot(wkv7, args, val, at["state"], slots, at["head_size"])
            elif op == "slice_cols":
                r = slice_cols(val(args[0]), at["start"], at["width"], at["period"])
            elif op == "dot_gate":
                r = dot_gate(*(val(t) for t in args))
            elif op == "ssm_conv":
                r = self._per_slot(ssm_conv, args, val, at["state"], slots, at["silu"])
            elif op == "norm_gate":
                x_, w_, z_ = (val(t) for t in args)
                r = rms_norm(x_, w_, at["eps"], at["group"]) * unary(z_, "silu")
            elif op == "gated_delta":
                r = self._per_slot(gated_delta, args, val, at["state"], slots, at["head_dim"],
                                   at["n_k_heads"], at["eps"])
            elif op == "wkv7_bonus":
                r = wkv7_bonus(*(val(t) for t in args), at["head_size"])
            elif op == "moe_route":
                bias = val(args[1]) if args[1] is not None else None
                r, env[at["also_out"][0].id] = moe_route(val(args[0]), bias, at["k"],
                                                         at["gating"], at["norm"], at["scale"])
            elif op == "mul_mat_id":
                r = mul_mat_id(val(args[0]), val(args[1]), val(args[2]))
            elif op == "add_id":
                r = val(args[0]) + per_expert(val(args[1]), val(args[2]))
            elif op == "mul_id":
                r = val(args[0]) * per_expert(val(args[1]), val(args[2]))
            elif op == "moe_sum":
                r = np.einsum("nkd,nk->nd", val(args[0]), val(args[1]))
            else:
                raise NotImplementedError(f"reference backend: op {op!r}")
            env[node.out.id] = np.ascontiguousarray(r, dtype=np.int32 if node.out.dtype == "i32"
                                                    else np.float32)
        return {k: env[v.id] for k, v in g.outputs.items()}

    def _per_slot(self, fn, args, val, state: str, slots: np.ndarray, *extra) -> np.ndarray:
        """A state op: in sequence mode fn over all rows with the slot's state buffer; in rows
        mode one step per row, each with its own slot's buffer. The activations (Values) are
        split by row; weights are passed whole, whatever their shape."""
        bufs = self.b.state[state]
        vals = [val(a) for a in args]
        if not self.g.rows:
            return fn(*vals, bufs[int(slots[0])], *extra)
        out = []
        for i in range(self.g.n_tokens):
            row = [v[i:i + 1] if isinstance(a, Value) else v for a, v in zip(args, vals)]
            out.append(fn(*row, bufs[int(slots[i])], *extra))
        return np.concatenate(out)


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
        ns = spec.n_seq
        self.state = {name: np.zeros((ns, n), np.float32) for name, n in spec.state}
        # NaN, not zero: a read of a row never written shows up in the output
        self.k = [np.full((ns * s, d), np.nan, np.float32)
                  for s, d in zip(spec.sizes, spec.kv_dim)]
        self.v = [np.full((ns * s, d), np.nan, np.float32)
                  for s, d in zip(spec.sizes, spec.kv_dim)]

    def kv_write(self, layer: int, slots: np.ndarray, positions: np.ndarray, k: np.ndarray,
                 v: np.ndarray) -> None:
        size = self.spec.sizes[layer]
        rows = slots * size + positions % size
        self.k[layer][rows] = k
        self.v[layer][rows] = v

    def kv_read(self, layer: int, slot: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of positions 0..t-1 of slot `slot` in position order. On a ring layer
        (size < t) an old position reads the row a newer one overwrote: finite values that the
        attention window masks out, since the ring holds window + batch rows."""
        size = self.spec.sizes[layer]
        idx = slot * size + np.arange(t) % size
        return self.k[layer][idx], self.v[layer][idx]

    def compile(self, graph: Graph) -> Program:
        return _RefProgram(self, graph)

    def reset_state(self, slot: int | None = None) -> None:
        for v in self.state.values():
            v[slice(None) if slot is None else slot] = 0.0

    def get_state(self, slot: int = 0) -> dict[str, np.ndarray]:
        return {k: v[slot].copy() for k, v in self.state.items()}

    def set_state(self, state: dict[str, np.ndarray], slot: int = 0) -> None:
        for k, v in state.items():
            self.state[k][slot] = v
