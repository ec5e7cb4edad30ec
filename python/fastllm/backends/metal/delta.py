"""The Gated DeltaNet ops (Qwen3.5) lowered to metal/delta.metal, as a mixin of MetalLowering
(one `_<op>` method per graph op). The state ops bind a state buffer and a slot as the RWKV ops
of rwkv.py do."""

from __future__ import annotations

import math

from ...errors import UnsupportedError

CONV_MAX = 8  # delta.metal: the most previous inputs a conv thread keeps
GD_TG, GD_MAX = 64, 128  # delta.metal: gated_delta threads per threadgroup, largest head size
# gated_delta's chunked form (delta.metal's kernel_gated_delta_prep_f32 and _chunks_f32): rows of
# a chunk (delta.metal's GD_C), and the fewest rows of a run that take it (decode and short runs
# keep the per-row kernel, as rows mode does); GD_CHUNK_MIN = 0 turns it off.
GD_C = 32
GD_CHUNK_MIN = 64


class DeltaLowering:
    """`_slice_cols`, `_dot_gate`, `_norm_gate`, `_ssm_conv`, `_gated_delta` for MetalLowering (its _emit, _ref, _vec,
    _state and _state_kernel)."""

    def _slice_cols(self, node) -> None:
        (x,) = node.args
        at = node.attrs
        rows, oc = math.prod(x.shape[:-1]), node.out.cols
        n = rows * oc
        self._emit("kernel_slice_cols_f32", [self._ref(x), self._ref(node.out)],
                   (-(-n // 256),), 256, (1,), "kargs_slice_cols", n_rows=rows, n_cols=x.cols,
                   start=at["start"], width=at["width"], period=at["period"], out_cols=oc)

    def _dot_gate(self, node) -> None:
        x, h, w = node.args
        rows = x.shape[0]
        self._emit("kernel_dot_gate_f32", [self._ref(x), self._ref(h), self._vec(w, x),
                                           self._ref(node.out)],
                   (rows,), 256, (3,), "kargs_slice_cols", n_rows=rows, n_cols=x.cols, start=0,
                   width=h.cols, period=1, out_cols=x.cols)

    def _norm_gate(self, node) -> None:
        x, w, z = node.args
        g = node.attrs["group"]
        rows, cols = x.shape
        self._emit("kernel_norm_gate_f32", [self._ref(x), self._vec(w, x), self._ref(z),
                                            self._ref(node.out)],
                   (rows * cols // g,), max(32, min(256, -(-g // 32) * 32)), (3,), "kargs_rwkv",
                   n_rows=rows, n_cols=cols, group=g, eps=node.attrs["eps"])

    def _ssm_conv(self, node) -> None:
        x, w = node.args
        rows, c = x.shape
        k = w.shape[1]
        if k - 1 > CONV_MAX:
            raise UnsupportedError(f"metal: ssm_conv with a kernel of {k} taps for {w.name!r} "
                                   f"(up to {CONV_MAX + 1} are supported)")
        kernel, where = self._state_kernel("ssm_conv_silu" if node.attrs["silu"] else "ssm_conv")
        self._emit(kernel, [self._ref(x), self._vec(w, x), self._state(node, c * (k - 1)),
                            self._ref(node.out), *where],
                   (-(-c // 64),), 64, (3,), "kargs_rwkv", n_rows=rows, n_cols=c, group=k)

    def _gated_delta(self, node) -> None:
        qkv, alpha, beta, dt_bias, a = node.args
        at = node.attrs
        s = at["head_dim"]
        if s > GD_MAX:
            raise UnsupportedError(f"metal: gated_delta with heads of {s} (up to {GD_MAX})")
        hv = node.out.cols // s
        n = qkv.shape[0]
        fields = {"n_rows": n, "n_k_heads": at["n_k_heads"], "n_v_heads": hv, "head_dim": s,
                  "scale": 1.0 / math.sqrt(s), "eps": at["eps"]}
        if not self.rows and 0 < GD_CHUNK_MIN <= n:
            # U0, W, Q', P U0 (n x Hv*S each), a factor per row and head, one per chunk and head
            nc = -(-n // GD_C)
            sc = self._scratch(4 * (4 * n * hv * s + n * hv + nc * hv))
            self._emit("kernel_gated_delta_prep_f32",
                       [self._ref(qkv), self._ref(alpha), self._ref(beta),
                        self._vec(dt_bias, qkv), self._vec(a, qkv), sc],
                       (nc, hv), GD_TG, (5,), "kargs_gated_delta", **fields)
            self._emit("kernel_gated_delta_chunks_f32",
                       [self._ref(qkv), sc, self._state(node, hv * s * s), self._ref(node.out),
                        self._step()], (-(-s // GD_TG), hv), GD_TG, (3,), "kargs_gated_delta",
                       **fields)
            self._free(sc)
            return
        kernel, where = self._state_kernel("gated_delta")
        bufs = [self._ref(qkv), self._ref(alpha), self._ref(beta), self._vec(dt_bias, qkv),
                self._vec(a, qkv), self._state(node, hv * s * s), self._ref(node.out)]
        self._emit(kernel, bufs + where, (-(-s // GD_TG), hv), GD_TG, (len(bufs) - 1,),
                   "kargs_gated_delta", n_rows=qkv.shape[0], n_k_heads=at["n_k_heads"],
                   n_v_heads=hv, head_dim=s, scale=1.0 / math.sqrt(s), eps=at["eps"])
