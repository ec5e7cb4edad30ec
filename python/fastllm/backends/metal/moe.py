"""Mixture-of-experts lowering of the Metal backend, as a mixin of MetalLowering: the router
(metal/moe.metal's kernel_moe_route_f32), products over each row's chosen experts
(metal/mul_mv.metal's kernel_mul_mv_id_*: a threadgroup per (row block, pair) for one token
row; beyond, the pairs listed expert by expert by kernel_moe_group_f32 and read
kernel_mul_mv_id_grouped_*), per-expert biases and multipliers and the weighted sum."""

from __future__ import annotations

import math

from ...errors import UnsupportedError
from ...quants import row_bytes

MAX_E = 512  # moe.metal's MOE_MAX_E (llama.cpp's LLAMA_MAX_EXPERTS)
MAX_K = 64  # moe.metal's MOE_MAX_K
MV_ID_C = 8  # mul_mv.metal's MV_ID_C: pairs of one expert per grouped threadgroup
GROUP_TG = 256  # moe.metal's MOE_GROUP_TG
GATING = {"softmax": 0, "sigmoid": 1, "softmax_weight": 2}  # kargs_moe_route.gating


class MoeLowering:
    """The MoE ops of MetalLowering (uses its _emit, _ref, _vec, _scratch, _free, _tname and
    the mat-vec shape MV_ROWS, MV_THREADS)."""

    def _moe_route(self, node) -> None:
        logits, bias = node.args
        at = node.attrs
        n, n_expert = logits.shape
        if n_expert > MAX_E or at["k"] > MAX_K:
            raise UnsupportedError(f"metal: moe_route over {n_expert} experts choosing "
                                   f"{at['k']} (at most {MAX_E} and {MAX_K})")
        self._emit("kernel_moe_route_f32",
                   [self._ref(logits), self._vec(bias, logits), self._ref(node.out),
                    self._ref(at["also_out"][0])], (n,), 32, (2, 3), "kargs_moe_route",
                   n_rows=n, n_expert=n_expert, k=at["k"], gating=GATING[at["gating"]],
                   norm=int(at["norm"]), has_bias=int(bias is not None), scale=at["scale"])

    def _mul_mat_id(self, node) -> None:
        x, w, ids = node.args
        n_expert, m, k = w.shape
        n, kk = ids.shape
        if n_expert > MAX_E:
            raise UnsupportedError(f"metal: {w.name!r} has {n_expert} experts, at most {MAX_E}")
        t = self._tname(w)
        # the chunk table's slots: each expert's pairs in runs of MV_ID_C take at most
        # ceil(pairs / MV_ID_C) + E of them
        n_chunks = -(-(n * kk) // MV_ID_C) + n_expert
        fields = {"n_pairs": n * kk, "k": kk, "m": m, "K": k, "x_per_pair": int(len(x.shape) == 3),
                  "n_expert": n_expert, "w_row_words": row_bytes(w.type, k) // 4,
                  "n_chunks": n_chunks, "chunk": MV_ID_C}
        row_blocks = -(-m // self.MV_ROWS)
        if n == 1:
            self._emit(f"kernel_mul_mv_id_{t}_f32",
                       [self._ref(w), self._ref(x), self._ref(ids), self._ref(node.out)],
                       (row_blocks, n * kk), self.MV_THREADS, (3,), "kargs_mul_mv_id", **fields)
            return
        nb = 4 * (n_expert + 1 + n * kk + 2 * n_chunks)  # firsts, list, chunk table
        groups = self._scratch(nb)
        self._emit("kernel_moe_group_f32", [self._ref(ids), groups], (1,), GROUP_TG, (1,),
                   "kargs_mul_mv_id", **fields)
        # the grouped kernel writes only the pairs of each expert's list: all of them together
        self._emit(f"kernel_mul_mv_id_grouped_{t}_f32",
                   [self._ref(w), self._ref(x), groups, self._ref(node.out)],
                   (row_blocks, n_chunks), self.MV_THREADS, (3,), "kargs_mul_mv_id",
                   **fields)
        self._free(groups)

    def _per_expert(self, node, kernel: str) -> None:
        y, b, ids = node.args
        n, kk, m = y.shape
        total = n * kk * m
        self._emit(kernel, [self._ref(y), self._vec(b, y), self._ref(ids), self._ref(node.out)],
                   (-(-total // 256),), 256, (3,), "kargs_moe_ew", n_pairs=n * kk, k=kk, m=m,
                   b_cols=math.prod(b.shape[1:]))

    def _add_id(self, node) -> None:
        self._per_expert(node, "kernel_add_id_f32")

    def _mul_id(self, node) -> None:
        self._per_expert(node, "kernel_mul_id_f32")

    def _moe_sum(self, node) -> None:
        y, weights = node.args
        n, kk, m = y.shape
        self._emit("kernel_moe_sum_f32", [self._ref(y), self._ref(weights), self._ref(node.out)],
                   (-(-(n * m) // 256),), 256, (2,), "kargs_moe_ew", n_pairs=n * kk, k=kk, m=m,
                   b_cols=1)
