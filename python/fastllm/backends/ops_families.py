"""The ops only some families of models use, as mixins of backends/base.py's Graph: mixtures of
experts (ExpertOps: qwen3moe, gpt-oss, the expert layers of llama, granite, mistral3,
qwen35moe) and recurrent layers (RecurrentOps: RWKV-6/7's time and channel mixing, Qwen3.5's
Gated DeltaNet). Each builder records a node through Graph._add; the reference backend defines
what it computes."""

from __future__ import annotations

import math

import numpy as np

from .ir import Value, Weight, _require


class ExpertOps:
    # -- mixture-of-experts ops ----------------------------------------------------------------
    # llama.cpp's build_moe_ffn (src/llama-graph.cpp) as separate ops: the router's choice
    # (moe_route), products over each row's chosen experts only (matmul_id, ggml's mul_mat_id),
    # per-expert biases and scales (add_id, mul_id) and the weighted sum (moe_sum). Values of
    # the experts are (n, k, m): row i, its j-th chosen expert. Element-wise ops (swiglu, ...)
    # take them as n*k rows.

    GATINGS = ("softmax", "sigmoid", "softmax_weight")

    def moe_route(self, logits: Value, k: int, *, gating: str = "softmax", norm: bool = False,
                  scale: float = 1.0, bias: Weight | None = None) -> tuple[Value, Value]:
        """The experts of each row of the router's logits (n, E) and their weights:
        (ids (n, k) int32, weights (n, k) float32). probs = softmax(logits) ("softmax"),
        sigmoid(logits) ("sigmoid") or the logits themselves ("softmax_weight", gpt-oss); the
        k experts of the largest probs + bias (bias: E values, DeepSeek V3's selection bias,
        which chooses but does not weigh), in descending order, the lower index first on ties;
        weights = probs of those experts ("softmax_weight": the softmax over the k chosen
        logits); with norm, weights / max(sum(weights), 2^-14) (ggml clamps the sum to the
        smallest normal f16); then * scale."""
        n_expert = logits.cols
        _require(gating in self.GATINGS, "gating in GATINGS", lambda: gating)
        _require(0 < k <= n_expert, "0 < k <= n_expert", lambda: (k, logits.shape))
        _require(bias is None or math.prod(bias.shape) == n_expert, "len(bias) == n_expert",
                 lambda: (bias.name, bias.shape, n_expert))
        n = logits.shape[0]
        weights = self._value((n, k))
        ids = self._add("moe_route", (logits, bias), (n, k), "i32", k=int(k), gating=gating,
                        norm=bool(norm), scale=float(scale), also_out=[weights])
        return ids, weights

    def matmul_id(self, x: Value, w: Weight, ids: Value) -> Value:
        """out[i, j] = w[ids[i, j]] @ x[i] (x (n, d)), or @ x[i, j] (x (n, k, d)): w is (E, m,
        d) in any supported type, ids (n, k) int32 -> (n, k, m). ggml's mul_mat_id: only the
        chosen experts' rows are read."""
        _require(len(w.shape) == 3 and w.shape[-1] == x.cols, "w is (E, m, x.cols)",
                 lambda: (w.name, w.shape, x.shape))
        n, k = ids.shape
        _require(ids.dtype == "i32" and x.shape[0] == n
                 and (len(x.shape) == 2 or tuple(x.shape[:2]) == (n, k)),
                 "x is (n, d) or (n, k, d) for ids (n, k)", lambda: (x.shape, ids.shape))
        out = self._add("mul_mat_id", (x, w, ids), (n, k, w.shape[1]))
        out.src = w.name
        return out

    def _per_expert(self, op: str, y: Value, b: Weight, ids: Value) -> Value:
        _require(len(y.shape) == 3 and tuple(y.shape[:2]) == tuple(ids.shape),
                 "y is (n, k, m) for ids (n, k)", lambda: (y.shape, ids.shape))
        m = math.prod(b.shape[1:])
        _require(len(b.shape) >= 1 and m in (1, y.cols), "b is (E, m) or (E,)",
                 lambda: (b.name, b.shape, y.shape))
        return self._add(op, (y, b, ids), y.shape)

    def add_id(self, y: Value, b: Weight, ids: Value) -> Value:
        """y[i, j] + b[ids[i, j]]: b is (E, m), the biases of each expert (gpt-oss)."""
        return self._per_expert("add_id", y, b, ids)

    def mul_id(self, y: Value, s: Weight, ids: Value) -> Value:
        """y[i, j] * s[ids[i, j]]: s is (E,) (one multiplier an expert, broadcast over the row:
        llama.cpp's per-expert `.scale`, build_lora_mm_id) or (E, m)."""
        return self._per_expert("mul_id", y, s, ids)

    def moe_sum(self, y: Value, weights: Value) -> Value:
        """sum over j of weights[i, j] * y[i, j]: y (n, k, d), weights (n, k) -> (n, d)."""
        _require(len(y.shape) == 3 and tuple(y.shape[:2]) == tuple(weights.shape),
                 "y is (n, k, d) for weights (n, k)", lambda: (y.shape, weights.shape))
        return self._add("moe_sum", (y, weights), (y.shape[0], y.cols))


class RecurrentOps:
    # -- recurrent-model ops -------------------------------------------------------------------
    # RWKV-6 and RWKV-7 (models/rwkv6.py, rwkv7.py). Rows are tokens in order. Ops marked
    # "state" read and update a named float32 buffer of KVSpec.state (zero at the start of a
    # sequence); each is one kernel over all n rows of a run, sequential in the rows inside it,
    # so a prefill of n tokens leaves the same state as n single-token decodes.

    UNARY_FNS = ("tanh", "sigmoid", "silu", "relu_sqr", "exp_neg_exp", "decay7", "softplus")

    def layer_norm(self, x: Value, w: Weight | None, b: Weight | None, eps: float,
                   group: int | None = None) -> Value:
        """(x - mean) / sqrt(var + eps) over each contiguous group of `group` values of a row
        (default: the whole row; the head size for RWKV's per-head GroupNorm), var being the
        biased variance mean((x - mean)^2) as in ggml_norm; then * w + b, where w and b (either
        may be None) hold a whole row's values, not one group's."""
        g = group or x.cols
        _require(x.cols % g == 0, "x.cols % g == 0")
        for t in (w, b):
            _require(
                t is None or int(np.prod(t.shape)) == x.cols,
                "t is None or int(np.prod(t.shape)) == x.cols",
                lambda t=t: (t.name, t.shape, x.shape))
        return self._add("layer_norm", (x, w, b), x.shape, eps=float(eps), group=int(g))

    def unary(self, x: Value, fn: str) -> Value:
        """fn(x) elementwise. fn is one of UNARY_FNS: tanh; sigmoid 1/(1+exp(-x)); silu
        x*sigmoid(x); relu_sqr max(x, 0)^2; exp_neg_exp exp(-exp(x)) (RWKV-6 decay); decay7
        exp(-0.606531 * sigmoid(x)) (RWKV-7 decay; the constant is exp(-1/2) as rwkv.cpp and
        llama.cpp write it); softplus log(1 + exp(x)), x itself above 20 (ggml's op_softplus;
        Gated DeltaNet's decay)."""
        _require(fn in self.UNARY_FNS, "fn in self.UNARY_FNS", lambda: fn)
        return self._add("unary", (x,), x.shape, fn=fn)

    def lerp(self, a: Value, b: Value, mu: Weight | None = None, *, mu_row: int = 0,
             mu_v: Value | None = None, mu_col: int = 0) -> Value:
        """a + (b - a) * m, elementwise over a's (n, d) shape, with m = mu[mu_row] + mu_v[:,
        mu_col:mu_col + d]: mu (a Weight whose values, in storage order, are taken as rows of d)
        gives one row broadcast over tokens, mu_v (a Value of n rows) a per-token part; either
        may be absent (then it counts as 0). RWKV's token shift mixes x with x_prev this way;
        RWKV-6's data-dependent mixes add a column block of a LoRA output as mu_v."""
        _require(mu is not None or mu_v is not None, "mu is not None or mu_v is not None")
        _require(b.shape == a.shape, "b.shape == a.shape", lambda: (a.shape, b.shape))
        d = a.cols
        if mu is not None:
            n_el = int(np.prod(mu.shape))
            _require(
                n_el % d == 0 and 0 <= mu_row < n_el // d,
                "n_el % d == 0 and 0 <= mu_row < n_el // d",
                lambda: (mu.name, mu.shape, d, mu_row))
        if mu_v is not None:
            _require(
                mu_v.shape[0] == a.shape[0] and 0 <= mu_col and mu_col + d <= mu_v.cols,
                "mu_v.shape[0] == a.shape[0] and 0 <= mu_col and mu_col + d <= mu_v.cols")
        return self._add("lerp", (a, b, mu, mu_v), a.shape, mu_row=int(mu_row),
                         mu_col=int(mu_col))

    def token_shift(self, x: Value, state: str) -> Value:
        """State op: x_prev (n, d), the row before each row of x. Row 0 is the state buffer
        `state` (d values: the last row of the previous run, zero for a new sequence); row i
        is x[i-1]. Afterwards the buffer holds x[n-1]."""
        return self._add("token_shift", (x,), x.shape, state=state)

    def l2_norm(self, x: Value, eps: float, group: int) -> Value:
        """x / max(sqrt(sum(x^2)), eps) over each contiguous group of `group` values of a row
        (ggml_l2_norm)."""
        _require(x.cols % group == 0, "x.cols % group == 0")
        return self._add("l2_norm", (x,), x.shape, eps=float(eps), group=int(group))

    def matmul_blocks(self, x: Value, w: Weight) -> Value:
        """Block-diagonal product: w is (B, m, k) in any supported type, x is (n, B*k); block i
        of the result, columns i*m..(i+1)*m-1 of (n, B*m), is x[:, i*k:(i+1)*k] @ w[i].T.
        RWKV-6's five token-mix LoRAs are one such product."""
        _require(
            len(w.shape) == 3 and x.cols == w.shape[0] * w.shape[2],
            "len(w.shape) == 3 and x.cols == w.shape[0] * w.shape[2]",
            lambda: (w.name, w.shape, x.shape))
        return self._add("mul_mat_blocks", (x, w), (x.shape[0], w.shape[0] * w.shape[1]))

    def wkv6(self, r: Value, k: Value, v: Value, w: Value, u: Weight, state: str,
             head_size: int) -> Value:
        """State op, RWKV-6 time mixing (ggml_rwkv_wkv6). r, k, v, w are (n, H*S) with S =
        head_size; u (time_first) holds H*S values. The buffer `state` holds H matrices of S x S,
        s[h, i, j] at (h*S + i)*S + j, i indexing keys and j values. For each row t in order
        and each head h (x_t meaning x[t, h*S:(h+1)*S]):
            out[t, h*S + j] = sum_i r_t[i] * (u[h*S + i] * k_t[i] * v_t[j] + s[h, i, j])
            s[h, i, j]      = s[h, i, j] * w_t[i] + k_t[i] * v_t[j]
        w is the decay factor itself (in (0, 1)). Returns out (n, H*S)."""
        _require(
            r.shape == k.shape == v.shape == w.shape and r.cols % head_size == 0,
            "r.shape == k.shape == v.shape == w.shape and r.cols % head_size == 0")
        _require(
            int(np.prod(u.shape)) == r.cols,
            "int(np.prod(u.shape)) == r.cols",
            lambda: (u.name, u.shape))
        return self._add("wkv6", (r, k, v, w, u), r.shape, state=state,
                         head_size=int(head_size))

    def wkv7(self, r: Value, w: Value, k: Value, v: Value, a: Value, b: Value, state: str,
             head_size: int) -> Value:
        """State op, RWKV-7 time mixing, the generalized delta rule (ggml_rwkv_wkv7). All inputs
        are (n, H*S) with S = head_size. The buffer `state` holds H matrices of S x S,
        s[h, i, j] at (h*S + i)*S + j, i indexing values and j keys. For each row t in order
        and each head h (x_t meaning x[t, h*S:(h+1)*S]):
            sa_i            = sum_j a_t[j] * s[h, i, j]          (with the state before row t)
            s[h, i, j]      = s[h, i, j] * w_t[j] + v_t[i] * k_t[j] + sa_i * b_t[j]
            out[t, h*S + i] = sum_j s[h, i, j] * r_t[j]          (with the updated state)
        w is the decay factor itself; RWKV-7 passes a = -kk and b = kk * iclr. Returns out."""
        _require(
            r.shape == w.shape == k.shape == v.shape == a.shape == b.shape,
            "r.shape == w.shape == k.shape == v.shape == a.shape == b.shape")
        _require(r.cols % head_size == 0, "r.cols % head_size == 0")
        return self._add("wkv7", (r, w, k, v, a, b), r.shape, state=state,
                         head_size=int(head_size))

    def wkv7_bonus(self, r: Value, k: Value, v: Value, r_k: Weight, head_size: int) -> Value:
        """RWKV-7's per-head r.k bonus: with S = head_size and r, k, v (n, H*S), r_k H*S values,
            out[t, h*S + i] = v[t, h*S + i] * sum_j r[t, h*S + j] * k[t, h*S + j] * r_k[h*S + j]
        """
        _require(
            r.shape == k.shape == v.shape and r.cols % head_size == 0,
            "r.shape == k.shape == v.shape and r.cols % head_size == 0")
        _require(
            int(np.prod(r_k.shape)) == r.cols,
            "int(np.prod(r_k.shape)) == r.cols",
            lambda: (r_k.name, r_k.shape))
        return self._add("wkv7_bonus", (r, k, v, r_k), r.shape, head_size=int(head_size))


    # -- Gated DeltaNet ops (models/qwen35.py) ------------------------------------------------

    def slice_cols(self, x: Value, start: int, width: int, period: int | None = None) -> Value:
        """Columns start..start+width-1 of every period-wide group of a row's columns (period:
        the whole row by default), groups side by side: out[t, g*width + i] =
        x[t, g*period + start + i]. Splits a fused projection (q, k, v after the convolution)
        and interleaved per-head halves (Qwen3.5's query and gate)."""
        p = period or x.cols
        _require(0 <= start and width > 0 and start + width <= p and x.cols % p == 0,
                 "0 <= start and start + width <= period and x.cols % period == 0",
                 lambda: (x.shape, start, width, p))
        return self._add("slice_cols", (x,), (*x.shape[:-1], x.cols // p * width),
                         start=int(start), width=int(width), period=int(p))

    def dot_gate(self, x: Value, h: Value, w: Weight) -> Value:
        """x * sigmoid(h @ w) row by row: each row of x (n, d) scaled by one gate made from the
        row of h (n, e) and w (e values). Qwen3.5's shared expert gate (ffn_gate_inp_shexp)."""
        _require(h.shape[0] == x.shape[0] and math.prod(w.shape) == h.cols
                 and math.prod(x.shape[1:-1]) == 1, "h is (n, len(w)) for x (n, d)",
                 lambda: (x.shape, h.shape, w.name, w.shape))
        return self._add("dot_gate", (x, h, w), x.shape)

    def ssm_conv(self, x: Value, w: Weight, state: str, silu: bool = False) -> Value:
        """State op, the causal depthwise convolution of Mamba-style layers (ggml_ssm_conv with
        llama.cpp's conv state). x is (n, C), w (C, K) float. The buffer `state` holds the K-1
        rows before x, channel by channel: prev[k, c] at c*(K-1) + k, k = 0 the oldest. With
        xin = prev stacked over x ((K-1+n, C)):
            out[t, c] = sum_k xin[t + k, c] * w[c, k]          (k = 0..K-1, in order)
        and afterwards the buffer holds the last K-1 rows of xin. With silu, out is silu(out)
        (the activation Mamba-style layers apply next)."""
        _require(len(w.shape) == 2 and w.shape[0] == x.cols and w.shape[1] >= 2,
                 "w.shape == (x.cols, K) with K >= 2", lambda: (w.name, w.shape, x.shape))
        return self._add("ssm_conv", (x, w), x.shape, state=state, silu=bool(silu))

    def norm_gate(self, x: Value, w: Weight, z: Value, eps: float, group: int) -> Value:
        """rms_norm(x, w, eps, group) * silu(z): the gated RMSNorm of Gated DeltaNet's output
        (w holds `group` values, z has x's shape)."""
        _require(tuple(z.shape) == tuple(x.shape) and x.cols % group == 0
                 and math.prod(w.shape) == group, "z.shape == x.shape, len(w) == group",
                 lambda: (x.shape, z.shape, w.name, w.shape, group))
        return self._add("norm_gate", (x, w, z), x.shape, eps=float(eps), group=int(group))

    def gated_delta(self, qkv: Value, alpha: Value, beta: Value, dt_bias: Weight, a: Weight,
                    state: str, *, head_dim: int, n_k_heads: int, eps: float) -> Value:
        """State op, Gated DeltaNet's recurrence with its inputs' preparation (llama.cpp's
        build_layer_attn_linear from the convolution's output through ggml_gated_delta_net).
        With S = head_dim, Hk = n_k_heads and Hv value heads: qkv is (n, 2*Hk*S + Hv*S), the
        queries, keys and values side by side; alpha and beta are (n, Hv); dt_bias and a hold
        Hv values. Per row t, q and k heads are l2-normalized (x / sqrt(sum(x^2) + eps), llama.cpp's
        build_gdn_l2_norm), g = softplus(alpha + dt_bias) * a (the log decay), b = sigmoid(beta),
        and value head h reads query/key head h % Hk (llama.cpp's head tiling). The buffer
        `state` holds Hv matrices of S x S, s[h, j, i] at (h*S + j)*S + i, j indexing values and
        i keys (llama.cpp's layout). For each row t in order and each head h:
            s[h]       = s[h] * exp(g[t, h])
            d_j        = (v_t[j] - sum_i s[h, j, i] * k_t[i]) * b[t, h]
            s[h, j, i] = s[h, j, i] + k_t[i] * d_j
            out[t, h*S + j] = sum_i s[h, j, i] * q_t[i] / sqrt(S)   (with the updated state)
        Returns out (n, Hv*S)."""
        s, hk = head_dim, n_k_heads
        _require(s > 0 and hk > 0 and (qkv.cols - 2 * hk * s) > 0
                 and (qkv.cols - 2 * hk * s) % (hk * s) == 0,
                 "qkv.cols == (2 + Hv / Hk) * Hk * head_dim", lambda: (qkv.shape, hk, s))
        hv = (qkv.cols - 2 * hk * s) // s
        n = qkv.shape[0]
        _require(alpha.shape == beta.shape == (n, hv), "alpha.shape == beta.shape == (n, Hv)",
                 lambda: (alpha.shape, beta.shape, hv))
        for w in (dt_bias, a):
            _require(math.prod(w.shape) == hv, "len(w) == Hv", lambda w=w: (w.name, w.shape, hv))
        return self._add("gated_delta", (qkv, alpha, beta, dt_bias, a), (n, hv * s), state=state,
                         head_dim=int(s), n_k_heads=int(hk), eps=float(eps))
