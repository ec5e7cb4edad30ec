"""The element-wise and row-wise ops of the Metal lowering, as a mixin of MetalLowering:
embedding rows (metal/get_rows.metal), rms_norm (metal/norm.metal), add / mul / scale and the
gated activations (metal/elementwise.metal) and argmax (metal/argmax.metal). Each is one dispatch
with no state, over a flat range or one row a threadgroup."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedError
from .plan import _threads, _type_name


class ElementwiseLowering:
    """`_get_rows`, `_rms_norm`, `_add`, `_mul`, `_scale`, `_swiglu`, `_geglu`, `_swiglu_oai`,
    `_argmax` for MetalLowering (its _emit and _ref)."""

    def _get_rows(self, node) -> None:
        w, ids = node.args
        rows, cols = node.out.shape
        self._emit(f"kernel_get_rows_{_type_name(w)}",
                   [self._ref(w), self._ref(ids), self._ref(node.out)],
                   (rows,), _threads(-(-cols // 16)), (2,),
                   "kargs_get_rows", n_rows=rows, n_cols=cols, n_vocab=w.shape[0])

    def _rms_norm(self, node) -> None:
        x, w = node.args
        rows, cols = x.shape
        grp = node.attrs["group"]
        self._emit("kernel_rms_norm_f32",
                   [self._ref(x), self._ref(w if w is not None else x), self._ref(node.out)],
                   (rows * cols // grp,), _threads(grp), (2,),
                   "kargs_rms_norm", n_rows=rows, n_cols=cols, group=grp,
                   has_weight=int(w is not None), eps=node.attrs["eps"])

    def _binary(self, node, kernel: str) -> None:
        a, b = node.args
        n = int(np.prod(a.shape))
        nb = int(np.prod(b.shape))
        if n % nb:
            raise UnsupportedError(f"metal: {node.op} of shapes {a.shape} and {b.shape}")
        self._emit(kernel, [self._ref(a), self._ref(b), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_binary", n=n, b_period=nb)

    def _add(self, node) -> None:
        self._binary(node, "kernel_add_f32")

    def _mul(self, node) -> None:
        self._binary(node, "kernel_mul_f32")

    def _scale(self, node) -> None:
        (a,) = node.args
        n = int(np.prod(a.shape))
        self._emit("kernel_scale_f32", [self._ref(a), self._ref(node.out)],
                   (-(-n // 256),), 256, (1,), "kargs_binary", n=n, b_period=1,
                   s=node.attrs["s"])

    def _glu(self, node, kernel: str) -> None:
        gate, up = node.args
        n = int(np.prod(gate.shape))
        self._emit(kernel, [self._ref(gate), self._ref(up), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_unary", n=n)

    def _swiglu(self, node) -> None:
        self._glu(node, "kernel_swiglu_f32")

    def _geglu(self, node) -> None:
        self._glu(node, "kernel_geglu_f32")

    def _swiglu_oai(self, node) -> None:
        gate, up = node.args
        n = int(np.prod(gate.shape))
        self._emit("kernel_swiglu_oai_f32", [self._ref(gate), self._ref(up), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_swiglu_oai", n=n,
                   alpha=node.attrs["alpha"], limit=node.attrs["limit"])

    def _argmax(self, node) -> None:
        (x,) = node.args
        rows, cols = x.shape
        self._emit("kernel_argmax_f32", [self._ref(x), self._ref(node.out)],
                   (rows,), _threads(cols), (1,), "kargs_argmax", n_rows=rows, n_cols=cols)

