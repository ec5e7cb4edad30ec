"""Mixture-of-experts lowering of the WebGPU backend, as a mixin of WebGPUProgram: the router
(moe.wgsl's kernel_moe_route_f32), products over each row's chosen experts (mul_mv_id.wgsl: a
workgroup per pair for one token row, grouped by expert beyond), per-expert biases and
multipliers and the weighted sum (moe.wgsl)."""

from __future__ import annotations

import math

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Node, Value
from . import repack
from .matmul_shapes import MV_MAX_M, Q8_TYPES, QX_WG, _guard_k, glu_tpr, mv_shape, mvq_shape
from .shaders import MULTI_W

MAX_E = 512  # moe.wgsl's MAX_E (llama.cpp's LLAMA_MAX_EXPERTS)
MAX_K = 64  # moe.wgsl's MAX_K
GATING = {"softmax": 0, "sigmoid": 1, "softmax_weight": 2}  # kargs_moe_route.gating


class MoeOps:
    """The MoE ops of WebGPUProgram (uses its _arg, _dispatch, _grid1, buf, slots and be)."""

    @staticmethod
    def _grouped(node: Node) -> bool:
        """Whether a mul_mat_id takes the grouped kernel: more than one token row."""
        return node.op == "mul_mat_id" and node.args[2].shape[0] > 1

    def _scratch_bytes(self, node: Node) -> int:
        if self._grouped(node):  # kernel_moe_group_f32's E + 1 firsts, list and chunk table
            n_expert, n_pairs = node.args[1].shape[0], math.prod(node.args[2].shape)
            return 4 * (n_expert + 1 + n_pairs + 2 * self._slots(node))
        return super()._scratch_bytes(node)

    @staticmethod
    def _chunk(node: Node) -> int:
        """Pairs of one expert a grouped mat-vec workgroup takes (mul_mv_id.wgsl's C)."""
        return min(node.args[2].shape[0], MV_MAX_M)

    def _slots(self, node: Node) -> int:
        """The chunk table's slots: each expert's pairs in runs of C take at most
        ceil(pairs / C) + E of them."""
        return -(-math.prod(node.args[2].shape) // self._chunk(node)) + node.args[1].shape[0]

    def _moe_glu(self) -> dict[int, Node]:
        """swiglu nodes whose one reader, right after them, is a one-row expert product on the
        integer path (the down projection): its quantize_x reads silu(gate) * up itself (glu
        variant), one dispatch less a MoE layer. {id of the swiglu's output: the node}."""
        if not self.be.int_dot:
            return {}
        reads = self.reads
        found = {}
        for n, nxt in zip(self.nodes, self.nodes[1:]):
            if (n.op == "swiglu" and reads.get(n.out.id) == 1 and nxt.op == "mul_mat_id"
                    and nxt.args[0] is n.out and not self._grouped(nxt)
                    and n.out.cols % 32 == 0 and nxt.args[1].handle.tname in Q8_TYPES):
                found[n.out.id] = n
        return found

    def _moe_glu_id(self) -> dict[int, tuple[Node, Node, Node]]:
        """Gate and up products of one token row's experts (two integer-path mul_mat_id of one
        x and one ids, weights of one type in one part each, in either order), then swiglu of
        them, then the down projection reading it, all in a row: one dispatch of
        mul_mvq_id.wgsl's glu variant writes silu(gate) * up as the down projection's quantized
        x. {id of the first of the two nodes: (gate, up, swiglu, ())}, or for one weight of gate
        rows then up rows an expert whose halves slice_cols takes {id of its product: (product,
        None, swiglu, (the two slices))}; the swiglu's output is in self.prequantized_id."""
        if not self.be.int_dot:
            return {}
        reads = self.reads
        lim = self.be.limits.get("max-storage-buffers-per-shader-stage", 8)
        found = {}
        for a, s1, s2, sw, down in zip(*(self.nodes[i:] for i in range(5))):
            # one fused weight, its gate and up halves taken by slice_cols (Qwen3.5)
            if not (a.op == "mul_mat_id" and s1.op == s2.op == "slice_cols" and sw.op == "swiglu"
                    and down.op == "mul_mat_id" and down.args[0] is sw.out):
                continue
            half = a.out.cols // 2
            h, hd = a.args[1].handle, down.args[1].handle
            if (s1.args[0] is a.out and s2.args[0] is a.out and sw.args[0] is s1.out
                    and sw.args[1] is s2.out and a.out.cols % 64 == 0 and a.args[0].cols % 32 == 0
                    and (s1.attrs["start"], s1.attrs["width"], s1.attrs["period"])
                    == (0, half, a.out.cols)
                    and (s2.attrs["start"], s2.attrs["width"], s2.attrs["period"])
                    == (half, half, a.out.cols)
                    and reads.get(a.out.id) == 2
                    and all(reads.get(v.id) == 1 for v in (s1.out, s2.out, sw.out))
                    and not self._grouped(a) and not self._grouped(down)
                    and h.tname in Q8_TYPES and hd.tname in Q8_TYPES and len(h.parts) == 1
                    and 3 + 2 * len(h.parts[0].buffers) <= lim):
                found[id(a)] = (a, None, sw, (s1, s2))
        for a, b, sw, down in zip(self.nodes, self.nodes[1:], self.nodes[2:], self.nodes[3:]):
            if not (a.op == b.op == "mul_mat_id" and sw.op == "swiglu"
                    and down.op == "mul_mat_id" and down.args[0] is sw.out):
                continue
            if sw.args[0] is b.out:  # the up product recorded first
                a, b = b, a
            if (a.args[0] is not b.args[0] or a.args[2] is not b.args[2]
                    or sw.args[0] is not a.out or sw.args[1] is not b.out
                    or self._grouped(a) or self._grouped(down)
                    or any(reads.get(v.id) != 1 for v in (a.out, b.out, sw.out))):
                continue
            wg, wu, wd = a.args[1].handle, b.args[1].handle, down.args[1].handle
            if (wg.tname != wu.tname or wg.tname not in Q8_TYPES or wd.tname not in Q8_TYPES
                    or len(wg.parts) != 1 or len(wu.parts) != 1 or a.args[0].cols % 32
                    or sw.out.cols % 32
                    or 3 + len(wg.parts[0].buffers) + len(wu.parts[0].buffers) > lim):
                continue
            found[id(self.nodes[self.nodes.index(sw) - 2])] = (a, b, sw, ())
        return found

    def _id_normed(self) -> dict[int, Node]:
        """One-row rms_norm nodes read by a layer's router and its experts (the readers all
        mul_mat or integer-path mul_mat_id): the router's mat-vec norms x itself (its norm
        variant) and the experts' quantize_x too, one dispatch less a MoE layer. The norm's
        input must outlive its last reader (the residual does: the layer adds it at the end).
        {id of the norm's output: the norm node}."""
        if self.g.rows:
            return {}
        outs = {v.id for v in self.g.outputs.values()}
        readers: dict[int, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for a in n.args:
                if isinstance(a, Value):
                    readers.setdefault(a.id, []).append(i)
        found = {}
        for n in self.nodes:
            if (n.op != "rms_norm" or n.args[1] is None or n.out.shape[0] != 1
                    or n.out.id in outs or n.attrs["group"] != n.out.cols or n.out.cols % 32):
                continue
            rs = [self.nodes[i] for i in readers.get(n.out.id, [])]
            ids = [r for r in rs if r.op == "mul_mat_id"]
            if not ids or any(r.op not in ("mul_mat", "mul_mat_id") or r.args[0] is not n.out
                              for r in rs):
                continue
            if not all(self.be.int_dot and not self._grouped(r)
                       and r.args[1].handle.tname in Q8_TYPES for r in ids):
                continue
            last = max(readers[n.out.id])
            if max(readers.get(n.args[0].id, [-1])) <= last:  # x not read after: may be reused
                continue
            found[n.out.id] = n
        return found

    def _op_moe_route(self, node: Node) -> None:
        logits, bias = node.args
        at = node.attrs
        n, n_expert = logits.shape
        if n_expert > MAX_E or at["k"] > MAX_K:
            raise UnsupportedError(f"webgpu: moe_route over {n_expert} experts choosing "
                                   f"{at['k']} (at most {MAX_E} and {MAX_K})")
        args = {"n_rows": n, "n_expert": n_expert, "k": at["k"], "gating": GATING[at["gating"]],
                "norm": int(at["norm"]), "has_bias": int(bias is not None), "scale": at["scale"]}
        self._dispatch("moe.wgsl", "kernel_moe_route_f32",
                       {0: self._arg(("kargs_moe_route", args)), 1: self.buf(logits),
                        2: self.buf(bias) if bias is not None else self.be.dummy,
                        3: self.buf(node.out), 4: self.buf(at["also_out"][0])},
                       self._grid1(n, 1))

    def _op_mul_mat_id(self, node: Node) -> None:
        if id(node) in self.moe_glu_id:
            self._mul_mvq_id_glu(*self.moe_glu_id[id(node)])
            return
        x, w, ids = node.args
        h = w.handle
        n_expert, m, k = w.shape
        n, kk = ids.shape
        if k % 4:
            raise UnsupportedError(f"webgpu: mul_mat_id with rows of {k} values (a multiple of 4 "
                                   f"is needed) for {w.name!r}")
        if n_expert > MAX_E:
            raise UnsupportedError(f"webgpu: {w.name!r} has {n_expert} experts, at most {MAX_E}")
        t = GGMLType(w.type)
        grouped = self._grouped(node)
        c = self._chunk(node) if grouped else 1
        n_chunks = self._slots(node) if grouped else 0
        fields = {"n_pairs": n * kk, "k": kk, "m": m, "K": k, "x_per_pair": int(len(x.shape) == 3),
                  "n_expert": n_expert, "w_row_words": sum(repack.array_sizes(t, 2, k)) // 8,
                  "n_chunks": n_chunks, "chunk": c}
        if grouped:
            groups = self.slots[self.scratch_of[node.out.id]]
            self._dispatch("moe.wgsl", "kernel_moe_group_f32",
                           {0: self._arg(("kargs_mul_mv_id", fields)), 1: self.buf(ids),
                            2: groups}, (1,))
        if not grouped and self.be.int_dot and k % 32 == 0 and h.tname in Q8_TYPES:
            self._mul_mvq_id(node, fields)
            return
        r, tpr, _unr, wg = mv_shape(m, h.units, c, h.tname)
        rows = r * (wg // tpr)
        gx, _, gz = self._mv_grid(-(-m // rows))
        for part in h.parts:
            b = {0: self._arg(("kargs_mul_mv_id", fields),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: self.buf(x), 2: self.buf(node.out)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            if grouped:  # the list has the experts; the kernel reads no ids
                b[8] = groups
            else:
                b[7] = self.buf(ids)
            self._dispatch("mul_mv_id.wgsl", f"kernel_mul_mv_id_{'grouped_' if grouped else ''}"
                           f"{h.tname}_f32", b,
                           (gx, n_chunks if grouped else n * kk, gz), wtype=h.tname,
                           consts={"TPR": tpr, "R": r, "C": c, "WG": wg,
                                   "GUARD_K": _guard_k(t, k)},
                           variant="grouped" if grouped else None)

    def _mul_mvq_id_glu(self, gate: Node, up: Node | None, sw: Node, _slices=()) -> None:
        """Gate and up of the experts and silu(gate) * up, quantized as the down projection's
        x in the swiglu output's buffer (_moe_glu_id): mul_mvq_id.wgsl's glu variant (FUSED:
        up None, gate's weight holding both)."""
        x, w, ids = gate.args
        fused = up is None
        h = w.handle
        hu = h if fused else up.args[1].handle
        k, m = x.cols, w.shape[1] // (2 if fused else 1)
        n, kk = ids.shape
        fields = {"n_pairs": n * kk, "k": kk, "m": m, "K": k, "x_per_pair": int(len(x.shape) == 3),
                  "n_expert": w.shape[0], "w_row_words": 0, "n_chunks": 0, "chunk": 1}
        tpr = glu_tpr(k // 32)
        b = {0: self._arg(("kargs_mul_mv_id", fields),
                          ("kargs_part", {"row0": 0, "n_rows": h.parts[0].n_rows})),
             1: self._id_xq(x), 7: self.buf(ids), 10: self.buf(sw.out)}
        b.update({3 + i: buf for i, buf in enumerate(h.parts[0].buffers)})
        b.update({MULTI_W + 4 + i: buf for i, buf in enumerate(hu.parts[0].buffers)})
        gx, _, gz = self._mv_grid(-(-m // 32))
        self._dispatch("mul_mvq_id.wgsl", f"kernel_mul_mvq_id_glu_{h.tname}_f32", b,
                       (gx, n * kk, gz), wtype=h.tname,
                       consts={"TPR": tpr, "WG": 32 * tpr, "FUSED": fused}, variant="glu")

    def _id_xq(self, x):
        """x's rows (one, or one per pair) quantized to bytes by quantize_x.wgsl into the
        experts' scratch, unless it holds them already (or x is prequantized_id: its producer
        wrote them in x's own buffer)."""
        if x.id in self.prequantized_id:
            return self.buf(x)
        k = x.cols
        rows = math.prod(x.shape[:-1])
        need = (k + k // 2) * rows  # bytes: a vec4 of bytes per 16 values, one of scales per 32
        if self._xq_id is None or self._xq_id.size < need:
            self._xq_id = self._buf(max(need, 256), "STORAGE", "quantized expert x")
        # the gate product reads the x the up product quantized just before it (dispatches run
        # in order and only these write the scratch): quantized once
        if self._xq_id_holds != (x.id, self._xq_id):
            glu = self.moe_glu.get(x.id)  # x = silu(gate) * up, read from gate and up here
            nrm = self.id_normed.get(x.id)  # x = rms_norm(x') * nw, normed here
            src = glu.args[0] if glu else nrm.args[0] if nrm else x
            norm = ({"n_rows": 1, "n_cols": k, "group": k, "has_weight": 1,
                     "eps": nrm.attrs["eps"]} if nrm else {})
            b = {0: self._arg(("kargs_mul_mat", {"M": rows, "N": 0, "K": k, "w_row_words": 0}),
                              ("kargs_rms_norm", norm)),
                 1: self.buf(src), 2: self._xq_id}
            if glu:
                b[7] = self.buf(glu.args[1])
            if nrm:
                b[9] = self.buf(nrm.args[1])
            gx, _, gz = self._mv_grid(-(-(k // 4) // QX_WG))
            self._dispatch("quantize_x.wgsl", "kernel_quantize_x_f32", b, (gx, rows, gz),
                           consts={"WG": QX_WG},
                           variant="glu" if glu else "norm" if nrm else "plain")
            self._xq_id_holds = (x.id, self._xq_id)
        return self._xq_id

    def _mul_mvq_id(self, node: Node, fields: dict) -> None:
        """Decode's expert mat-vecs as integer dot products (mul_mvq_id.wgsl): x's rows (one,
        or one per pair) quantized to bytes by quantize_x.wgsl into a scratch of their own."""
        x, w, ids = node.args
        h = w.handle
        m = w.shape[1]
        xq = self._id_xq(x)
        r, tpr, wg = mvq_shape(m, h.units, h.tname)
        gx, _, gz = self._mv_grid(-(-m // (r * (wg // tpr))))
        for part in h.parts:
            b = {0: self._arg(("kargs_mul_mv_id", fields),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: xq, 2: self.buf(node.out), 7: self.buf(ids)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            self._dispatch("mul_mvq_id.wgsl", f"kernel_mul_mvq_id_{h.tname}_f32", b,
                           (gx, ids.shape[0] * ids.shape[1], gz), wtype=h.tname,
                           consts={"TPR": tpr, "R": r, "WG": wg})

    def _per_expert(self, node: Node, entry: str) -> None:
        y, b, ids = node.args
        n, kk, m = y.shape
        fields = {"n_pairs": n * kk, "k": kk, "m": m, "b_cols": math.prod(b.shape[1:])}
        self._dispatch("moe.wgsl", entry,
                       {0: self._arg(("kargs_moe_ew", fields)), 1: self.buf(y), 2: self.buf(b),
                        3: self.buf(ids), 4: self.buf(node.out)}, self._grid1(n * kk * m))

    def _op_add_id(self, node: Node) -> None:
        self._per_expert(node, "kernel_add_id_f32")

    def _op_mul_id(self, node: Node) -> None:
        self._per_expert(node, "kernel_mul_id_f32")

    def _op_moe_sum(self, node: Node) -> None:
        y, weights, *res = node.args  # res: the residual added on store (fuse.py's moe_res)
        n, kk, m = y.shape
        fields = {"n_pairs": n * kk, "k": kk, "m": m, "b_cols": 1}
        reader = self.prenorm.get(id(node))
        if reader is not None:  # and the next norm's reader's quantized x (matmul._prenormed)
            self._dispatch("moe.wgsl", "kernel_moe_sum_q8",
                           {0: self._arg(("kargs_moe_ew", fields)), 1: self.buf(y),
                            2: self.buf(weights), 4: self.buf(node.out), 5: self.buf(res[0]),
                            6: self.buf(reader.args[1]), 7: self._xq_scratch(m)},
                           self._grid1(n * m), consts={"RES": True})
            return
        self._dispatch("moe.wgsl", "kernel_moe_sum_f32",
                       {0: self._arg(("kargs_moe_ew", fields)), 1: self.buf(y),
                        2: self.buf(weights), 4: self.buf(node.out),
                        5: self.buf(res[0]) if res else self.be.dummy}, self._grid1(n * m),
                       consts={"RES": bool(res)})
