"""The mat-vec and mat-mat ops of the Metal lowering (metal/mul_mv.metal, metal/mul_mm.metal), as
a mixin of MetalLowering: plain products, the fused mat-vec (a norm or SwiGLU before it, the
residual after it, up to three weights of one type in one dispatch) and the mat-mat with its
epilogues. A product of fewer than MM_MIN_ROWS tokens takes the mat-vec, which reads each weight
row once for all of them."""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedError
from ...quants import row_bytes
from ..base import Value, Weight
from .plan import _type_name

# Launch constants shared with the kernels (same names in metal/*.metal)
MV_NSG, MV_NR = 2, 4  # mul_mv: SIMD groups per threadgroup, rows per SIMD group
MM_TILE = 32  # mul_mm: 32 x 32 output tile per threadgroup of 128 threads
MM_MIN_ROWS = 8  # tokens from which mat-mat beats re-reading W per token in mat-vec
MM_EPILOGUES = {None: 0, "res": 1, "swiglu": 2, "geglu": 3}  # kargs_mul_mm.epilogue


class MatmulLowering:
    """`_mul_mat`, `_mul_mv_fused`, `_mul_mv_multi`, `_mul_mm_glu` for MetalLowering (its _emit,
    _ref and _vec)."""

    # the mat-vec launch shape, for the mixins (moe.py): rows a threadgroup, its threads
    MV_ROWS, MV_THREADS = MV_NSG * MV_NR, 32 * MV_NSG

    def _mul_mat(self, node) -> None:
        x, w = node.args
        m, k = x.shape
        nw = w.shape[0]
        t = _type_name(w)
        if m >= MM_MIN_ROWS:
            self._mul_mm(x, w, node.out)
            return
        # w_row_words describes WebGPU's repacked rows; Metal reads GGUF rows as they are
        self._emit(f"kernel_mul_mv_{t}_f32", [self._ref(w), self._ref(x), self._ref(node.out)],
                   (-(-nw // (MV_NSG * MV_NR)), m), 32 * MV_NSG, (2,), "kargs_mul_mat",
                   M=m, N=nw, K=k, w_row_words=row_bytes(w.type, k) // 4)

    def _mul_mm(self, x: Value, w: Weight, out: Value, epilogue: str | None = None,
                ep: Value | None = None) -> None:
        """The mat-mat; `epilogue` ("res", "swiglu", "geglu") applies ep as results leave."""
        m, k = x.shape
        nw = w.shape[0]
        xr = self._ref(x)
        self._emit(f"kernel_mul_mm_{_type_name(w)}_f32",
                   [self._ref(w), xr, self._ref(out), self._ref(ep) if ep is not None else xr],
                   (-(-nw // MM_TILE), -(-m // MM_TILE)), 128, (2,), "kargs_mul_mm",
                   M=m, N=nw, K=k, epilogue=MM_EPILOGUES[epilogue])

    def _mul_mv(self, x: Value, ws: list[Weight], outs: list[Value], x_mode: int = 0,
                aux: Any = None, res: Value | None = None, eps: float = 0.0) -> None:
        """kernel_mul_mv_fused over up to three weights of one type (kargs_mul_mv_fused); aux is
        the norm weight (x_mode 1) or the up rows (2)."""
        m, k = x.shape
        per = MV_NSG * MV_NR
        ends, total = [], 0
        for w in ws:
            total += -(-w.shape[0] // per)
            ends.append(total)
        pad = 3 - len(ws)  # unused slots: no threadgroups, bound to slot 0's buffers
        ends += [total] * pad
        xr = self._ref(x)
        a = xr if aux is None else self._vec(aux, x) if isinstance(aux, Weight) else self._ref(aux)
        bufs = [xr, a, self._ref(res) if res is not None else xr,
                *(self._ref(w) for w in ws), *[self._ref(ws[0])] * pad,
                *(self._ref(o) for o in outs), *[self._ref(outs[0])] * pad]
        rows = [w.shape[0] for w in ws] + [0] * pad
        self._emit(f"kernel_mul_mv_fused_{_type_name(ws[0])}_f32", bufs, (total, m),
                   32 * MV_NSG, tuple(6 + s for s in range(len(outs))), "kargs_mul_mv_fused",
                   M=m, K=k, x_mode=x_mode, has_res=int(res is not None), eps=eps,
                   **{f"n_rows{s}": rows[s] for s in range(3)},
                   **{f"tg_end{s}": ends[s] for s in range(3)})

    def _mul_mv_fused(self, node) -> None:
        """mul_mat with the norm before it (nw), the SwiGLU before it (up: x is the gate) or
        the residual after it (res) folded in (backends/fuse.py)."""
        x, w, up, res, nw = node.args
        if x.shape[0] >= MM_MIN_ROWS:
            if up is not None or nw is not None:
                raise UnsupportedError("metal: a norm or SwiGLU folded into a mat-mat")
            self._mul_mm(x, w, node.out, "res" if res is not None else None, res)
            return
        x_mode, aux = (1, nw) if nw is not None else (2, up) if up is not None else (0, None)
        self._mul_mv(x, [w], [node.out], x_mode, aux, res, node.attrs.get("eps", 0.0))

    def _mul_mv_multi(self, node) -> None:
        """q, k, v (or gate, up) of one normed token row: one dispatch where the weights share
        a type, else one norm mat-vec each."""
        x, nw, *ws = node.args
        outs = [node.out, *node.attrs["also_out"]]
        eps = node.attrs["eps"]
        if len({w.handle.type for w in ws}) == 1:
            self._mul_mv(x, ws, outs, 1, nw, eps=eps)
            return
        for w, out in zip(ws, outs):
            self._mul_mv(x, [w], [out], 1, nw, eps=eps)

    def _mul_mm_glu(self, node) -> None:
        x, w, gate = node.args
        self._mul_mm(x, w, node.out, node.attrs["act"], gate)

