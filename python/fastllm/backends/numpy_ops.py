"""What the ops of backends/base.py mean, as NumPy functions over float32 arrays (rope, attention,
norms, the RWKV and Gated DeltaNet recurrences, routing and products over experts): the
reference backend (reference.py) runs graphs with them, and the GPU kernels are tested against
them through it."""

from __future__ import annotations

import math

import numpy as np


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
