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
              softcap: float = 0.0, sinks: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA attention. q (n, H*D) at positions pos..pos+n-1; k, v (T, KV*D) hold
    positions 0..T-1 (T = pos + n). Row i attends to positions max(0, p-window+1)..p, p = pos+i.
    sinks (H,): a logit per head that joins each row's softmax denominator only."""
    n, t = q.shape[0], k.shape[0]
    group = n_head // n_kv_head
    p = pos + np.arange(n)[:, None]
    j = np.arange(t)[None, :]
    masked = j > p
    if window:
        masked |= j <= p - window
    out = np.empty((n, n_head, head_dim), np.float32)
    qh = q.reshape(n, n_head, head_dim)
    kh = k.reshape(t, n_kv_head, head_dim)
    vh = v.reshape(t, n_kv_head, head_dim)
    for h in range(n_head):  # 2-D products: numpy's stacked matmul takes a slow path here
        kv = h // group
        s = (qh[:, h] @ kh[:, kv].T) * np.float32(scale)  # (n, T)
        if softcap:
            s = np.tanh(s / softcap) * softcap
        s = np.where(masked, -np.inf, s)
        mx = s.max(axis=-1, keepdims=True)
        if sinks is not None:
            mx = np.maximum(mx, sinks[h])
        e = np.exp(s - mx)
        den = e.sum(axis=-1, keepdims=True)
        if sinks is not None:
            den += np.exp(sinks[h] - mx)
        out[:, h] = (e / den) @ vh[:, kv]
    return out.reshape(n, n_head * head_dim)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))


# -- recurrent-model ops (RWKV); their exact meaning is in the Graph docstrings of base.py ----

def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -88 gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-x))


def unary(x: np.ndarray, fn: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        if fn == "tanh":
            return np.tanh(x)
        if fn == "sigmoid":
            return _sigmoid(x)
        if fn == "silu":
            return x * _sigmoid(x)
        if fn == "relu_sqr":
            return np.square(np.maximum(x, 0.0))
        if fn == "exp_neg_exp":
            return np.exp(-np.exp(x))
        if fn == "decay7":
            return np.exp(np.float32(-0.606531) * _sigmoid(x))
        if fn == "softplus":
            return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))
    raise NotImplementedError(f"reference backend: unary {fn!r}")


def layer_norm(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float,
               group: int) -> np.ndarray:
    xg = x.reshape(x.shape[0], -1, group).astype(np.float64)
    xc = xg - xg.mean(axis=-1, keepdims=True)
    r = (xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + eps)).astype(np.float32)
    r = r.reshape(x.shape)
    if w is not None:
        r = r * w.reshape(-1)
    if b is not None:
        r = r + b.reshape(-1)
    return r


def l2_norm(x: np.ndarray, eps: float, group: int) -> np.ndarray:
    xg = x.reshape(x.shape[0], -1, group)
    norm = np.sqrt(np.sum(xg.astype(np.float64) ** 2, axis=-1, keepdims=True))
    return (xg / np.maximum(norm, eps)).astype(np.float32).reshape(x.shape)


def lerp(a: np.ndarray, b: np.ndarray, mu: np.ndarray | None, mu_row: int,
         mu_v: np.ndarray | None, mu_col: int) -> np.ndarray:
    d = a.shape[1]
    m = np.zeros(d, np.float32) if mu is None else mu.reshape(-1, d)[mu_row]
    if mu_v is not None:
        m = m + mu_v[:, mu_col:mu_col + d]
    return a + (b - a) * m


def token_shift(x: np.ndarray, buf: np.ndarray) -> np.ndarray:
    prev = np.concatenate([buf.reshape(1, -1), x[:-1]])
    buf[:] = x[-1]
    return prev


def mul_mat_blocks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    nb, m, k = w.shape
    xb = x.reshape(x.shape[0], nb, k).transpose(1, 0, 2)  # (B, n, k)
    return (xb @ w.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(x.shape[0], nb * m)


def wkv6(r: np.ndarray, k: np.ndarray, v: np.ndarray, w: np.ndarray, u: np.ndarray,
         buf: np.ndarray, head_size: int) -> np.ndarray:
    n, c = r.shape
    h, s = c // head_size, head_size
    st = buf.reshape(h, s, s).copy()  # s[h, i (key), j (value)]
    uh = u.reshape(h, s, 1)
    r3, k3, w3 = r.reshape(n, h, 1, s), k.reshape(n, h, s, 1), w.reshape(n, h, s, 1)
    v3 = v.reshape(n, h, 1, s)
    out = np.empty((n, h, 1, s), np.float32)
    for t in range(n):
        kv = k3[t] * v3[t]  # (h, i, j)
        out[t] = r3[t] @ (uh * kv + st)
        st = st * w3[t] + kv
    buf[:] = st.reshape(-1)
    return out.reshape(n, c)


def wkv7(r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray,
         b: np.ndarray, buf: np.ndarray, head_size: int) -> np.ndarray:
    n, c = r.shape
    h, s = c // head_size, head_size
    st = buf.reshape(h, s, s).copy()  # s[h, i (value), j (key)]
    r3, a3, v3 = r.reshape(n, h, s, 1), a.reshape(n, h, s, 1), v.reshape(n, h, s, 1)
    w3, k3, b3 = w.reshape(n, h, 1, s), k.reshape(n, h, 1, s), b.reshape(n, h, 1, s)
    out = np.empty((n, h, s, 1), np.float32)
    for t in range(n):
        # sa (h, i, 1) = s @ a_t with the state before the update
        st = st * w3[t] + v3[t] * k3[t] + (st @ a3[t]) * b3[t]
        out[t] = st @ r3[t]
    buf[:] = st.reshape(-1)
    return out.reshape(n, c)


def wkv7_bonus(r: np.ndarray, k: np.ndarray, v: np.ndarray, r_k: np.ndarray,
               head_size: int) -> np.ndarray:
    n, c = r.shape
    dots = (r * k * r_k.reshape(-1)).reshape(n, c // head_size, head_size).sum(-1, keepdims=True)
    return (v.reshape(n, -1, head_size) * dots).reshape(n, c)


# -- Gated DeltaNet ops (Qwen3.5); their meaning is in the Graph docstrings of base.py ---------

def slice_cols(x: np.ndarray, start: int, width: int, period: int) -> np.ndarray:
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1] // period, period)[:, :, start:start + width].reshape(
        *lead, -1)


def dot_gate(x: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x * _sigmoid(h @ w.reshape(-1, 1))


def ssm_conv(x: np.ndarray, w: np.ndarray, buf: np.ndarray, silu: bool = False) -> np.ndarray:
    n = x.shape[0]
    c, k = w.shape
    xin = np.concatenate([buf.reshape(c, k - 1).T, x])  # (K-1+n, C), the oldest row first
    out = np.zeros_like(x)
    for j in range(k):  # in ggml's order, in float32
        out += xin[j:j + n] * w[:, j]
    buf[:] = xin[n:].T.reshape(-1)
    return unary(out, "silu") if silu else out


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float, group: int) -> np.ndarray:
    xg = x.reshape(x.shape[0], -1, group)
    ms = np.mean(xg.astype(np.float64) ** 2, axis=-1, keepdims=True)
    r = (xg / np.sqrt(ms + eps)).astype(np.float32)
    if w is not None:
        r = r * w.reshape(-1)
    return r.reshape(x.shape)


def gated_delta(qkv: np.ndarray, alpha: np.ndarray, beta: np.ndarray, dt_bias: np.ndarray,
                a: np.ndarray, buf: np.ndarray, head_dim: int, n_k_heads: int,
                eps: float) -> np.ndarray:
    n, s, hk = qkv.shape[0], head_dim, n_k_heads
    hv = (qkv.shape[1] - 2 * hk * s) // s
    x64 = qkv.astype(np.float64)

    def l2(x):  # (n, heads, S)
        return (x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)).astype(np.float32)

    heads = np.arange(hv) % hk  # value head h reads key head h % Hk
    qh = l2(x64[:, :hk * s].reshape(n, hk, s))[:, heads, :, None]  # (n, Hv, S, 1)
    kh = l2(x64[:, hk * s:2 * hk * s].reshape(n, hk, s))[:, heads, None, :]  # (n, Hv, 1, S)
    vh = qkv[:, 2 * hk * s:].reshape(n, hv, s, 1)
    g = unary(alpha + dt_bias.reshape(-1), "softplus") * a.reshape(-1)
    decay = np.exp(g.astype(np.float64)).astype(np.float32).reshape(n, hv, 1, 1)
    b = _sigmoid(beta).reshape(n, hv, 1, 1)
    st = buf.reshape(hv, s, s).copy()  # s[h, j (value), i (key)]
    out = np.empty((n, hv, s, 1), np.float32)
    scale = np.float32(1.0 / math.sqrt(s))
    for t in range(n):
        st = st * decay[t]
        d = (vh[t] - st @ kh[t].transpose(0, 2, 1)) * b[t]  # (Hv, S, 1)
        st = st + d * kh[t]
        out[t] = (st @ qh[t]) * scale
    buf[:] = st.reshape(-1)
    return out.reshape(n, hv * s)


# -- mixture-of-experts ops (their meaning is in the Graph docstrings of base.py) ------------

def moe_route(logits: np.ndarray, bias: np.ndarray | None, k: int, gating: str, norm: bool,
              scale: float) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float64)
    if gating == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
    elif gating == "sigmoid":
        probs = 1.0 / (1.0 + np.exp(-x))
    else:  # softmax_weight: chosen by logit, weighed by the softmax of the chosen
        probs = x
    sel = probs if bias is None else probs + bias.reshape(-1).astype(np.float64)
    # descending, the lower index first among equals (a stable sort of the negated values)
    ids = np.argsort(-sel, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, ids, axis=-1)
    if gating == "softmax_weight":
        e = np.exp(w - w.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True)
    if norm:
        w = w / np.maximum(w.sum(axis=-1, keepdims=True), 6.103515625e-5)
    return ids.astype(np.int32), (w * scale).astype(np.float32)


def mul_mat_id(x: np.ndarray, w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    n, k = ids.shape
    out = np.empty((n, k, w.shape[1]), np.float32)
    xs = x if x.ndim == 3 else np.broadcast_to(x[:, None, :], (n, k, x.shape[-1]))
    for e in np.unique(ids):  # each expert once, over the rows that chose it
        r, j = np.nonzero(ids == e)
        out[r, j] = xs[r, j] @ w[e].T
    return out


def per_expert(b: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """b (E, m) or (E,) -> (n, k, m or 1): b's row for each (i, j) of ids (broadcasts over a
    (n, k, m) value)."""
    return b.reshape(b.shape[0], -1)[ids]


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
