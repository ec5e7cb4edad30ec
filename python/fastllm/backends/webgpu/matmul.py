"""Mat-mul lowering of the WebGPU backend, as a mixin of WebGPUProgram: mul_mat and its fused
forms (mul_mv_fused, mul_mv_multi from fuse.py) become mat-vec dispatches (mul_mv.wgsl,
mul_mv_multi.wgsl) for up to MV_MAX_M token rows and tiled mat-mat dispatches (mul_mm.wgsl)
beyond; one-token rows of the Q8_TYPES take the integer mat-vec (quantize_x.wgsl, mul_mvq.wgsl).
The shapes and tuning constants are matmul_shapes.py's, read from that module at lowering time
so that a benchmark's or a test's setting of one reaches every dispatch.
"""

from __future__ import annotations

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Node, Value, Weight
from . import matmul_shapes as shapes
from . import repack, shaders
from .xq_plans import XqPlans


def _norm_args(k: int, eps: float) -> tuple[str, dict]:
    """kargs_rms_norm of a mat-vec that norms its one token row x itself."""
    return ("kargs_rms_norm", {"n_rows": 1, "n_cols": k, "group": k, "has_weight": 1,
                               "eps": eps})




class MatmulOps(XqPlans):
    """The mat-mul ops of WebGPUProgram (uses its _arg, _dispatch, _buf, buf and be)."""

    def _rows_xq(self, x: Value):
        """The quantized x of a rows-mode integer mat-vec reading a folded norm's output x
        (_rows_normed): quantized (and normed) by the first reader, shared by the others
        (_quantize_x finds the scratch still holding it)."""
        nrm = self.rows_normed[x.id][0]
        return self._quantize_x(nrm.args[0], nw=nrm.args[1], eps=nrm.attrs["eps"])

    def _xq_scratch(self, k: int):
        """The scratch buffer of quantized x (quantize_x.wgsl's layout) for rows of k values.
        Programs run their dispatches in order, so one serves every mat-vec of a step."""
        self._xq_holds = None  # whoever asks for it is about to write it
        need = (k + k // 2) * max(1, self.n if self.g.rows else 1)  # bytes, a vec4 per 32
        if self._xq is None or self._xq.size < need:
            self._xq = self._buf(max(need, 256), "STORAGE", "quantized x")
        return self._xq

    def _quantize_x(self, x: Value, up: Value | None = None, nw: Weight | None = None,
                    eps: float = 0.0):
        """x (as silu(x) * up with `up`, rms_norm(x) * nw with `nw`) quantized to bytes by
        quantize_x.wgsl into the scratch buffer (_xq_scratch), which is returned."""
        k = x.cols
        # the scratch holds this very x already (a second reader of it right after the first,
        # nothing having asked for the scratch since: _xq_scratch forgets what it holds)
        key = (x.id, up.id if up is not None else None, id(nw) if nw is not None else None, eps)
        if self._xq is not None and self._xq_holds == key:
            return self._xq
        self._xq_scratch(k)
        variant = "norm" if nw is not None else "glu" if up is not None else "plain"
        b = {0: self._arg(("kargs_mul_mat", {"M": 1, "N": 0, "K": k, "w_row_words": 0}),
                          _norm_args(k, eps)),
             1: self.buf(x), 2: self._xq}
        if nw is not None:
            b[9] = self.buf(nw)
        if up is not None:
            b[7] = self.buf(up)
        gx, _, gz = self._mv_grid(-(-(k // 4) // shapes.QX_WG))
        self._dispatch("quantize_x.wgsl", "kernel_quantize_x_f32", b, (gx, x.shape[0], gz),
                       consts={"WG": shapes.QX_WG}, variant=variant)
        self._xq_holds = key
        return self._xq

    def _mm_tile_f16(self, t: GGMLType) -> bool:
        """Whether a prefill mat-mat over weights of type t keeps its tiles (and sums) in f16."""
        return bool(shapes.MM_F16_TILE and self.be.f16
                    and (t not in shapes._FLOATS or (shapes.MM_F16_FLOAT and t != GGMLType.F32)))

    def _mm_shape_of(self, x: Value, w: Weight, part) -> tuple[int, int, int, int, int, int]:
        shape = shapes.mm_shape(part.n_rows, x.shape[0], x.cols, GGMLType(w.type),
                         self._mm_tile_f16(GGMLType(w.type)), len(w.handle.parts),
                         self.be.limits.get("max-compute-workgroup-storage-size", 16384))
        if shape[5] * x.shape[0] * w.handle.n * 4 > self.be.max_binding:
            shape = (*shape[:5], 1)  # the planes would not fit one binding
        return shape

    def _scratch_bytes(self, node: Node) -> int:
        """Bytes of scratch a node needs while it runs (the planner gives it a slot): a split
        prefill mat-mat's planes of partial sums."""
        if node.op not in ("mul_mat", "mul_mv_fused", "mul_mm_glu"):
            return super()._scratch_bytes(node)  # the other ops' (delta.py)
        if node.args[0].shape[0] <= shapes.MV_MAX_M:
            return 0
        x, w = node.args[:2]
        splits = self._mm_shape_of(x, w, w.handle.parts[0])[5]
        return splits * x.shape[0] * w.handle.n * 4 if splits > 1 else 0

    def _mv_grid(self, n_wg: int) -> tuple[int, int, int]:
        """A mat-vec grid of n_wg workgroups as (x, 1, z): a huge vocabulary can pass the
        workgroups one dimension holds (the kernels rebuild z * x + x)."""
        gz = -(-n_wg // self.be.limits.get("max-compute-workgroups-per-dimension", 65535))
        return -(-n_wg // gz), 1, gz

    def _op_mul_mat(self, node: Node) -> None:
        x, w = node.args
        nrm = self.id_normed.get(x.id)
        if nrm is not None:  # a MoE router over the layer's norm, which it computes (moe.py)
            self._mul_mat(node, nrm.args[0], w, nw=nrm.args[1], eps=nrm.attrs["eps"])
            return
        nrm, readers = self.rows_normed.get(x.id, (None, []))
        glu = bool(readers) and id(readers[0]) in self.glu_multi
        if glu or self._rows_multi(readers):
            if node is readers[0]:  # the others' products come out of its dispatch
                prenorm = id(nrm) in self.prenormed  # its producer wrote x
                xq = self._xq_scratch(x.cols) if prenorm else self._rows_xq(x)
                ws = [r.args[1] for r in readers]
                if glu:
                    self._mul_mv_glu(node.out, xq, ws, x.shape[0], x.cols, prenorm)
                else:
                    self._multi(xq, ws, [r.out for r in readers], x.shape[0], x.cols, 0.0,
                                q8=True, prenorm=prenorm)
            return
        self._mul_mat(node, x, w)

    def _op_mul_mv_fused(self, node: Node) -> None:
        x, w, up, res, nw = node.args
        self._mul_mat(node, x, w, up, res, nw, node.attrs.get("eps", 0.0))

    def _op_mul_mm_glu(self, node: Node) -> None:
        """act(gate) * (x W^T), the activation applied as the mat-mat's results leave."""
        x, w, gate = node.args
        self._mul_mat(node, x, w, glu=(gate, node.attrs["act"]))

    def _op_mul_mv_multi(self, node: Node) -> None:
        """Several mat-vecs of one normed token row in one dispatch (fuse.py): args
        (x, nw, W_0, W_1, ...), outputs node.out and attrs["also_out"]. Where the device's
        bindings or a split weight rule it out, one norm mat-vec per weight instead."""
        x, nw, *ws = node.args
        outs = [node.out, *node.attrs["also_out"]]
        eps = node.attrs["eps"]
        k = x.cols
        if id(node) in self.glu_multi:  # its bindings were checked (x and its output)
            prenorm = id(node) in self.prenormed  # its producer wrote x
            xq = self._xq_scratch(k) if prenorm else self._quantize_x(x, nw=nw, eps=eps)
            self._mul_mv_glu(node.out, xq, ws, 1, k, prenorm)
            return
        if not self._bindings_fit(ws, 2 + len(ws)) or x.shape[0] != 1:  # x, nw, the outputs
            for w, out in zip(ws, outs):
                self._mul_mat(Node("mul_mv_fused", (x, w, None, None, nw), {"eps": eps}, out),
                              x, w, nw=nw, eps=eps)
            return
        q8 = self._int_dot(ws, x)
        prenorm = id(node) in self.prenormed  # its producer wrote x
        if q8:
            xbuf = self._xq_scratch(k) if prenorm else self._quantize_x(x, nw=nw, eps=eps)
        else:
            xbuf = (self.buf(x), self.buf(nw))
        self._multi(xbuf, ws, outs, 1, k, eps, q8, prenorm)

    def _multi(self, xbuf, ws: list[Weight], outs: list[Value], m: int, k: int, eps: float,
               q8: bool, prenorm: bool) -> None:
        """The mul_mv_multi.wgsl dispatch of y_s = W_s x for the weights ws into outs: over x
        quantized (q8: xbuf, m token rows, C a workgroup) or the float form of one row (xbuf:
        x's buffer and the norm weight's)."""
        units = ws[0].handle.units
        if q8:
            r, tpr, wg = shapes.mvq_shape(sum(w.handle.n for w in ws), units, ws[0].handle.tname)
        else:
            xbuf, nwbuf = xbuf
            r, tpr, _unr, wg = shapes.mv_shape(sum(w.handle.n for w in ws), units, 1)
        c = min(m, shapes.MVQ_ROWS_C)
        rows = r * (wg // tpr)
        ends, total = [], 0
        for w in ws:
            total += -(-w.handle.n // rows)
            ends.append(total)
        slots = {f"n_rows{i}": w.handle.n for i, w in enumerate(ws)}
        slots.update({f"wg_end{i}": e for i, e in enumerate(ends)})
        t0 = GGMLType(ws[0].type)
        words = sum(repack.array_sizes(t0, 2, k)) // 8
        b = {0: self._arg(("kargs_mul_mat", {"M": m, "N": ws[0].handle.n, "K": k,
                                              "w_row_words": words}),
                          _norm_args(k, eps), ("kargs_mv_slots", slots)),
             1: xbuf}
        if not q8:
            b[9] = nwbuf
        for s, (w, out) in enumerate(zip(ws, outs)):
            b[shaders.MULTI_OUT + s] = self.buf(out)
            b.update({shaders.MULTI_W + 4 * s + i: buf
                      for i, buf in enumerate(w.handle.parts[0].buffers)})
        guards = ({"PRENORM": prenorm} if q8 else
                  {f"GUARD_K_{s}": shapes._guard_k(GGMLType(w.type), k) for s, w in enumerate(ws)})
        for s, out in enumerate(outs):  # a bias add folded in: its output written instead
            add = self.bias_adds.get(out.id) if q8 else None
            if add is not None:
                bias = add.args[1] if isinstance(add.args[1], Weight) else add.args[0]
                b[shaders.MULTI_OUT + s] = self.buf(add.out)
                b[shaders.MULTI_BIAS + s] = self.buf(bias)
                guards[f"BIAS_{s}"] = True
        gx, _, gz = self._mv_grid(total)
        self._dispatch("mul_mv_multi.wgsl",
                       "kernel_mul_mv_multi_q8" if q8 else "kernel_mul_mv_multi_f32", b,
                       (gx, -(-m // c), gz), wtype=tuple(w.handle.tname for w in ws),
                       consts={"TPR": tpr, "R": r, "WG": wg, "C": c, **guards})

    def _mul_mv_glu(self, out: Value, xq, ws: list[Weight], m: int, k: int,
                    prenorm: bool) -> None:
        """Gate and up of m normed token rows (x quantized in xq; prenorm: not yet normed, its
        producer's sums of squares beside it), joined into the down projection's quantized x
        (mul_mv_multi.wgsl's kernel_mul_mv_glu_q8), written in the gate output's buffer."""
        n = ws[0].handle.n
        c = min(m, shapes.MVQ_ROWS_C)
        b = {0: self._arg(("kargs_mul_mat", {"M": m, "N": n, "K": k, "w_row_words": 0}),
                          _norm_args(k, 0.0), ("kargs_mv_slots", {})),
             1: xq, 10: self.buf(out)}
        for s, w in enumerate(ws):
            b.update({shaders.MULTI_W + 4 * s + i: buf
                      for i, buf in enumerate(w.handle.parts[0].buffers)})
        gx, _, gz = self._mv_grid(-(-n // 32))
        self._dispatch("mul_mv_multi.wgsl", "kernel_mul_mv_glu_q8", b,
                       (gx, -(-m // c), gz), wtype=tuple(w.handle.tname for w in ws),
                       consts={"TPR": (tpr := shapes.glu_tpr(k // 32)), "WG": 32 * tpr,
                               "PRENORM": prenorm, "C": c})

    def _mul_mat(self, node: Node, x: Value, w: Weight, up: Value | None = None,
                 res: Value | None = None, nw: Weight | None = None, eps: float = 0.0,
                 glu: tuple[Value, str] | None = None) -> None:
        """y = W x (mat-vec for up to MV_MAX_M token rows, tiled mat-mat beyond); with `up`,
        x is a gate and the kernel reads silu(x) * up; with `res`, it adds res to y; with `nw`,
        it reads rms_norm(x) * nw; with `glu` (gate, "swiglu" or "geglu"; mat-mats only), it
        stores act(gate) * y."""
        h = w.handle
        m, k = x.shape[0], x.cols
        if k % 4:
            raise UnsupportedError(f"webgpu: mul_mat with rows of {k} values (a multiple of 4 "
                                   f"is needed) for {w.name!r}")
        t = GGMLType(w.type)
        words = sum(repack.array_sizes(t, 2, k)) // 8
        guard = shapes._guard_k(t, k)
        variant = ("glu_" if up is not None else "") + ("res" if res is not None else "")
        variant = "norm" if nw is not None else variant.rstrip("_") or None
        rows_q8 = self._int_dot_rows(w, x)
        if (m <= shapes.MV_MAX_M and self._int_dot([w], x)) or rows_q8:
            if x.id in self.prequantized:
                xq = self.buf(x)
            elif x.id in self.rows_normed:
                xq = self._rows_xq(x)
            else:
                xq = self._quantize_x(x, up, nw, eps)
            c = min(m, shapes.MVQ_ROWS_C) if rows_q8 else 1
            for part in h.parts:
                b = {0: self._arg(("kargs_mul_mat", {"M": m if rows_q8 else 1, "N": h.n,
                                                     "K": k, "w_row_words": words}),
                                  ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                     1: xq, 2: self.buf(node.out)}
                b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
                if res is not None:
                    b[8] = self.buf(res)
                v = "res" if res is not None else "plain"
                r, tpr, wg = shapes.mvq_shape(part.n_rows, h.units, h.tname)
                # writes its reader's x too (the reader: a mul_mv_multi, or in rows mode the
                # folded norm whose readers' dispatch reads it)
                reader = self.prenorm.get(id(node))
                if reader is not None:
                    v = "resq"
                    b[9], b[10] = self.buf(reader.args[1]), self._xq_scratch(h.n)
                    lim = self.be.limits
                    r, tpr, wg = shapes.mvq_shape_blocks(
                        part.n_rows, h.units, h.tname,
                        min(lim.get("max-compute-invocations-per-workgroup", 256),
                            lim.get("max-compute-workgroup-size-x", 256)),
                        lim.get("max-compute-workgroup-storage-size", 16384) // c)
                gx, _, gz = self._mv_grid(-(-part.n_rows // (r * (wg // tpr))))
                self._dispatch("mul_mvq.wgsl", ("kernel_mul_mvq_" if v == "plain" else
                                                f"kernel_mul_mvq_{v}_") + f"{h.tname}_f32", b,
                               (gx, -(-m // c) if rows_q8 else 1, gz),
                               wtype=h.tname, consts={"TPR": tpr, "R": r, "WG": wg, "C": c},
                               variant=v)
            return
        for part in h.parts:
            structs = [("kargs_mul_mat", {"M": m, "N": h.n, "K": k, "w_row_words": words}),
                       ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})]
            if nw is not None:
                structs.append(_norm_args(k, eps))
            b = {0: self._arg(*structs), 1: self.buf(x), 2: self.buf(node.out)}
            if nw is not None:
                b[9] = self.buf(nw)
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            if up is not None:
                b[7] = self.buf(up)
            if res is not None:
                b[8] = self.buf(res)
            if m <= shapes.MV_MAX_M:
                r, tpr, unr, wg = shapes.mv_shape(part.n_rows, h.units, m, h.tname, nw is not None)
                rows = r * (wg // tpr)
                name = f"kernel_mul_mv_{variant}_" if variant else "kernel_mul_mv_"
                self._dispatch("mul_mv.wgsl", f"{name}{h.tname}_f32", b,
                               self._mv_grid(-(-part.n_rows // rows)), wtype=h.tname,
                               consts={"TPR": tpr, "R": r, "C": m, "UNR": unr, "WG": wg,
                                       "GUARD_K": guard}, variant=variant)
            else:
                if variant not in (None, "res"):
                    raise UnsupportedError(f"webgpu: fused mul_mat of {m} rows")  # _fuse's rule
                ep = res  # the epilogue's second array (binding 8): res, or the glu's gate
                if glu is not None:
                    variant, ep = glu[1], glu[0]
                    b[8] = self.buf(ep)
                f16_tile = self._mm_tile_f16(t)
                bm, bn, tq, rq, ups, splits = self._mm_shape_of(x, w, part)
                if splits > 1:  # partial sums into planes of the node's scratch, then summed
                    b[2] = planes = self.slots[self.scratch_of[node.out.id]]
                    b.pop(8, None)  # the residual: added by the sum
                consts = {"BM": bm, "BN": bn, "TQ": tq, "RQ": rq, "UPS": ups, "SPLITK": splits,
                          "WG": bm * bn // (16 * tq * rq), "GUARD_K": guard,
                          "KU": shapes.MM_KU,
                          "X_LAST": bool(shapes.MM_X_LAST and t not in shapes._FLOATS)}
                mm_variant = variant if variant and splits == 1 else None
                self._dispatch("mul_mm.wgsl", (f"kernel_mul_mm_{mm_variant}_" if mm_variant else
                                               "kernel_mul_mm_") + f"{h.tname}_f32", b,
                               (-(-part.n_rows // bn), -(-m // bm), splits), wtype=h.tname,
                               consts=consts, f16_tile=f16_tile, variant=mm_variant)
                if splits > 1:
                    sb = {0: b[0], 2: self.buf(node.out), 7: planes}
                    if variant:
                        sb[8] = self.buf(ep)
                    self._dispatch("mul_mm.wgsl", "kernel_mul_mm_sum_f32", sb,
                                   self._grid1(m * h.n, 256), wtype=h.tname,
                                   consts={"SPLITK": splits, "WG": 256},  # all the sum reads
                                   variant=variant)
