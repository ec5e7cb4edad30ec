"""The RWKV ops of the Metal lowering (metal/rwkv.metal), as a mixin of MetalLowering: grouped
layer and L2 norms, the unary activations, lerp, token shift, the WKV recurrences (wkv6, wkv7)
and the block-diagonal mat-mul. The state ops bind a recurrent state buffer and a slot through
MetalLowering's _state and _state_kernel, as delta.py's do."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedError
from ...quants import row_bytes
from ..base import Weight
from .plan import _threads, _type_name

WKV_TG, WKV_MAX = 64, 64  # rwkv.metal: wkv threads per threadgroup, largest head size
MB_NSG = 2  # rwkv.metal: mul_mat_blocks SIMD groups per threadgroup


class RwkvLowering:
    """`_layer_norm`, `_l2_norm`, `_wkv7_bonus`, `_unary`, `_lerp`, `_token_shift`, `_wkv6`,
    `_wkv7`, `_mul_mat_blocks` for MetalLowering (its _emit, _ref, _vec, _state and
    _state_kernel)."""

    def _groups(self, node, group: int) -> tuple[int, int]:
        rows, cols = node.args[0].shape
        if cols % group:
            raise UnsupportedError(f"metal: {node.op} over groups of {group} of rows of {cols}")
        return rows, cols

    def _layer_norm(self, node) -> None:
        x, w, b = node.args
        g = node.attrs["group"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_layer_norm_f32",
                   [self._ref(x), self._vec(w, x), self._vec(b, x), self._ref(node.out)],
                   (rows * cols // g,), _threads(g), (3,), "kargs_layer_norm", n_rows=rows,
                   n_cols=cols, group=g, has_weight=int(w is not None),
                   has_bias=int(b is not None), eps=node.attrs["eps"])

    def _l2_norm(self, node) -> None:
        g = node.attrs["group"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_l2_norm_f32", [self._ref(node.args[0]), self._ref(node.out)],
                   (rows * cols // g,), _threads(g), (1,), "kargs_rwkv", n_rows=rows,
                   n_cols=cols, group=g, eps=node.attrs["eps"])

    def _wkv7_bonus(self, node) -> None:
        r, k, v, r_k = node.args
        g = node.attrs["head_size"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_wkv7_bonus_f32",
                   [self._ref(r), self._ref(k), self._ref(v), self._vec(r_k, r),
                    self._ref(node.out)], (rows * cols // g,), _threads(g), (4,), "kargs_rwkv",
                   n_rows=rows, n_cols=cols, group=g)

    def _unary(self, node) -> None:
        (x,) = node.args
        n = int(np.prod(x.shape))
        self._emit(f"kernel_unary_{node.attrs['fn']}_f32", [self._ref(x), self._ref(node.out)],
                   (-(-n // 256),), 256, (1,), "kargs_unary", n=n)

    def _lerp(self, node) -> None:
        a, b, mu, mu_v = node.args
        at = node.attrs
        rows, d = a.shape
        n = rows * d
        self._emit("kernel_lerp_f32",
                   [self._ref(a), self._ref(b), self._vec(mu, a),
                    self._ref(mu_v if mu_v is not None else a), self._ref(node.out)],
                   (-(-n // 256),), 256, (4,), "kargs_lerp", n_rows=rows, n_cols=d,
                   has_mu=int(mu is not None), mu_off=at["mu_row"] * d,
                   has_mu_v=int(mu_v is not None), mu_v_cols=mu_v.cols if mu_v is not None else 0,
                   mu_col=at["mu_col"])

    def _token_shift(self, node) -> None:
        (x,) = node.args
        rows, d = x.shape
        tp = _threads(d)
        kernel, where = self._state_kernel("token_shift")
        self._emit(kernel, [self._ref(x), self._state(node, d), self._ref(node.out), *where],
                   (-(-d // tp),), tp, (2,), "kargs_rwkv", n_rows=rows, n_cols=d)

    def _wkv(self, node, name: str) -> None:
        s = node.attrs["head_size"]
        rows, cols = self._groups(node, s)
        if s > WKV_MAX or WKV_TG % s:
            raise UnsupportedError(f"metal: {node.op} with head size {s} (a power of two up to "
                                   f"{WKV_MAX} is supported)")
        ins = [self._vec(a, node.args[0]) if isinstance(a, Weight) else self._ref(a)
               for a in node.args]
        kernel, where = self._state_kernel(name)
        bufs = ins + [self._state(node, cols * s), self._ref(node.out)]
        self._emit(kernel, bufs + where, (-(-cols // WKV_TG),), WKV_TG, (len(bufs) - 1,),
                   "kargs_rwkv", n_rows=rows, n_cols=cols, group=s)

    def _wkv6(self, node) -> None:
        self._wkv(node, "wkv6")

    def _wkv7(self, node) -> None:
        self._wkv(node, "wkv7")

    def _mul_mat_blocks(self, node) -> None:
        x, w = node.args
        nb, m, k = w.shape
        rows = x.shape[0]
        if k % 16:
            raise UnsupportedError(f"metal: mul_mat_blocks with blocks of {k} columns (a "
                                   f"multiple of 16 is needed) for {w.name!r}")
        self._emit(f"kernel_mul_mat_blocks_{_type_name(w)}_f32",
                   [self._ref(w), self._ref(x), self._ref(node.out)],
                   (-(-nb * m // MB_NSG), rows), 32 * MB_NSG, (2,), "kargs_mul_mat_blocks",
                   M=rows, n_blocks=nb, m=m, k=k, w_row_words=row_bytes(w.type, k) // 4)

