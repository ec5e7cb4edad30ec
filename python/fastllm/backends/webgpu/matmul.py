"""Mat-mul lowering of the WebGPU backend, as a mixin of WebGPUProgram: mul_mat and its fused
forms (mul_mv_fused, mul_mv_multi from fuse.py) become mat-vec dispatches (mul_mv.wgsl,
mul_mv_multi.wgsl) for up to MV_MAX_M token rows and tiled mat-mat dispatches (mul_mm.wgsl)
beyond; one-token rows of the Q8_TYPES take the integer mat-vec (quantize_x.wgsl, mul_mvq.wgsl).
The shapes and tuning constants are matmul_shapes.py's, read from that module at lowering time
so that a benchmark's or a test's setting of one reaches every dispatch.
"""

from __future__ import annotations

import math

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Node, Value, Weight
from ..fuse import reader_counts
from . import matmul_shapes as shapes
from . import repack, shaders


def _norm_args(k: int, eps: float) -> tuple[str, dict]:
    """kargs_rms_norm of a mat-vec that norms its one token row x itself."""
    return ("kargs_rms_norm", {"n_rows": 1, "n_cols": k, "group": k, "has_weight": 1,
                               "eps": eps})


NORM_GATE_MAX = 256  # delta.wgsl's NG_MAX: the largest group kernel_norm_gate_q8 takes


class MatmulOps:
    """The mat-mul ops of WebGPUProgram (uses its _arg, _dispatch, _buf, buf and be)."""

    def _int_dot_rows(self, w: Weight, x: Value) -> bool:
        """Whether a rows-mode product of several token rows takes the integer mat-vec
        (mul_mvq.wgsl over MVQ_ROWS_C token rows a workgroup): a batched decode step reads the
        weights once for every row. Past MVQ_ROWS_MAX rows the mat-mat measured faster."""
        return (self.be.int_dot and self.g.rows and 1 < x.shape[0] <= shapes.MVQ_ROWS_MAX
                and x.cols % 32 == 0 and w.handle.tname in shapes.Q8_TYPES)

    def _int_dot(self, ws: list[Weight], x: Value) -> bool:
        """Whether one-token mat-vecs of these weights take the integer path."""
        return (self.be.int_dot and x.shape[0] == 1 and x.cols % 32 == 0
                and all(w.handle.tname in shapes.Q8_TYPES for w in ws))

    def _prequantized(self) -> tuple[set[int], set[int]]:
        """Values that their producer writes directly as the integer mat-vec's x, where their
        one reader is an integer mat-vec of them. The value's own buffer (4 bytes a value)
        holds the bytes and scales (1.5 bytes a value). Returns (those values' ids, ids of the
        mul_mv_multi nodes that become kernel_mul_mv_glu_q8):
          decode attention -> output projection (+ residual): kernel_attn_reduce_q8;
          norm_gate (Gated DeltaNet) -> output projection: kernel_norm_gate_q8;
          mul_mv_multi (gate, up) -> down projection of silu(gate) * up (+ residual): the glu
            kernel, writing silu(gate) * up quantized in the gate output's buffer."""
        produced = {n.out.id: n for n in self.nodes if n.out is not None}
        reads = reader_counts(self.nodes, self.g.outputs.values())
        values, glu = set(), set()
        for n in self.nodes:
            if n.op not in ("mul_mat", "mul_mv_fused"):
                continue
            x, w = n.args[0], n.args[1]
            up = n.args[2] if n.op == "mul_mv_fused" else None
            # rows mode: the reduce writes every row's x (the other producers are one-row only)
            rows = shapes.ROWS_FUSE and up is None and self._int_dot_rows(w, x)
            if (n.op == "mul_mv_fused" and n.args[4] is not None) or not (
                    self._int_dot([w], x) or rows):
                continue
            src = produced.get(x.id)
            if src is None or reads.get(x.id) != 1:
                continue
            # attention's reduce or direct kernel, or delta.wgsl's kernel_norm_gate_q8
            writes_q8 = (src.op in ("attention", "attn_decode_rope")
                         and src.attrs["head_dim"] % 32 == 0) or (
                src.op == "norm_gate" and src.attrs["group"] % 32 == 0
                and src.attrs["group"] <= NORM_GATE_MAX)
            if up is None and writes_q8:
                values.add(x.id)
            elif (up is not None and src.op == "mul_mv_multi" and src.out is x
                  and src.attrs["also_out"] == [up] and reads.get(up.id) == 1
                  and self._int_dot(list(src.args[2:]), src.args[0])
                  and self._bindings_fit(src.args[2:], 2)):
                values.add(x.id)
                glu.add(id(src))
        for _nrm, readers in self.rows_normed.values():
            if self._rows_glu(readers, reads):  # gate's output holds silu(gate) * up's bytes
                values.add(readers[0].out.id)
                glu.add(id(readers[0]))
        return values, glu

    def _bias_adds(self) -> dict[int, Node]:
        """Bias adds (add of a weight of one row's values, Qwen2's and gpt-oss's q, k and v)
        right after a multi-weight integer mat-vec of their one input: the mat-vec adds the
        bias as it stores and writes the add's output (mul_mv_multi.wgsl's BIAS_s), the add is
        not dispatched. Only the integer form, whose dispatch reads no activation slot (x is
        quantized in the scratch), so writing the adds' outputs cannot meet a slot it reads.
        {id of the mat-vec's output: the add node}."""
        reads = reader_counts(self.nodes, self.g.outputs.values())
        found = {}
        for i, n in enumerate(self.nodes):
            if n.op == "mul_mv_multi":
                x, _nw, *ws = n.args
                outs = [n.out, *n.attrs["also_out"]]
                if (id(n) in self.glu_multi or x.shape[0] != 1 or not self._int_dot(ws, x)
                        or not self._bindings_fit(ws, 2 + 2 * len(ws))):
                    continue
            elif n.op == "mul_mat" and n.args[0].id in self.rows_normed:
                readers = self.rows_normed[n.args[0].id][1]
                if n is not readers[0] or not self._rows_multi(readers, bias=True) or (
                        id(readers[0]) in self.glu_multi):
                    continue
                outs = [r.out for r in readers]
                i = self.nodes.index(readers[-1])  # adds after the last reader, as one row's
            else:
                continue
            for a in self.nodes[i + 1:i + 1 + len(outs)]:
                y = next((o for o in outs if self._bias_add_of(a, o, reads)), None)
                if y is None:
                    break
                found[y.id] = a
        for a in self.rows_bias_adds:  # interleaved with their readers (_rows_normed)
            y = a.args[0] if not isinstance(a.args[0], Weight) else a.args[1]
            found[y.id] = a
        return found

    def _rows_glu(self, readers: list[Node], reads: dict[int, int]) -> bool:
        """Rows mode: whether a folded norm's readers are gate and up whose one reader, right
        after them, is the down projection of silu(gate) * up (mul_mv_fused with glu): then
        kernel_mul_mv_glu_q8 over the token rows writes that product as the down projection's
        quantized x, and gate and up never reach memory."""
        if len(readers) != 2 or not self._bindings_fit([r.args[1] for r in readers], 2):
            return False
        gate, up = readers
        i = self.nodes.index(up) + 1
        nxt = self.nodes[i] if i < len(self.nodes) else None
        return (nxt is not None and nxt.op == "mul_mv_fused" and nxt.attrs.get("glu")
                and nxt.args[0] is gate.out and nxt.args[2] is up.out and nxt.args[4] is None
                and reads.get(gate.out.id) == 1 and reads.get(up.out.id) == 1
                and gate.out.cols % 32 == 0 and self._int_dot_rows(nxt.args[1], gate.out))

    def _rows_multi(self, readers: list[Node], bias: bool = False) -> bool:
        """Rows mode: whether a folded norm's 2-3 readers are one multi-weight dispatch (with
        `bias`: with room for a bias binding each too)."""
        return 2 <= len(readers) <= 3 and self._bindings_fit(
            [r.args[1] for r in readers], (2 if bias else 1) * len(readers) + 1)

    def _prenormed(self) -> dict[int, Node]:
        """Integer mat-vecs of a normed row whose producer writes their x (PRENORM): a mat-vec
        + residual (mul_mv_fused with res, over prequantized x, so it does not read the scratch
        it writes) right before the mul_mv_multi that norms its output. Returns {id of the
        producer node: the mul_mv_multi node}."""
        if not shapes.PRENORM:
            return {}
        out = {}
        for i in range(len(self.nodes) - 1):
            src, n = self.nodes[i], self.nodes[i + 1]
            if (src.op == "moe_sum" and len(src.args) == 3 and n.op == "mul_mv_multi"
                    and n.args[0] is src.out and src.out.shape[0] == 1
                    and src.out.cols % 64 == 0 and self._int_dot(n.args[2:], src.out)
                    and (id(n) in self.glu_multi
                         or self._bindings_fit(n.args[2:], 2 + len(n.args[2:])))):
                out[id(src)] = n  # the layer's weighted sum + residual (moe.wgsl's q8 form)
                continue
            if src.op != "mul_mv_fused" or n.op != "mul_mv_multi":
                continue
            sx, w, _up, res, nw = src.args  # with up, sx is prequantized as silu(sx) * up
            x, _nw, *ws = n.args
            if (x is not src.out or res is None or nw is not None
                    or sx.id not in self.prequantized or len(w.handle.parts) != 1
                    or w.handle.n % 32 or not self._int_dot([w], sx)
                    or not self._int_dot(ws, x)
                    or not (id(n) in self.glu_multi or self._bindings_fit(ws, 2 + len(ws)))):
                continue
            out[id(src)] = n
        for i in range(len(self.nodes) - 1):  # rows mode: the folded norm's group (below)
            src, n = self.nodes[i], self.nodes[i + 1]
            if (src.op != "mul_mv_fused" or n.op != "rms_norm"
                    or n.out.id not in self.rows_normed):
                continue
            readers = self.rows_normed[n.out.id][1]
            sx, w, _up, res, nw = src.args
            if (n.args[0] is not src.out or res is None or nw is not None
                    or sx.id not in self.prequantized or len(w.handle.parts) != 1
                    or w.handle.n % 32 or not self._int_dot_rows(w, sx)
                    or not (id(readers[0]) in self.glu_multi or self._rows_multi(readers))):
                continue
            out[id(src)] = n
        return out

    def _rows_normed(self) -> dict[int, tuple[Node, list[Node]]]:
        """Rows mode (ROWS_FUSE): rms_norm nodes whose readers are the integer mat-vecs right
        after them (q, k, v; gate, up). The first reader's quantize_x norms x itself (norm
        variant) and the others read what it wrote, so the norm and the others' quantize_x
        are not dispatched: 5 dispatches a transformer layer. Two or three readers whose
        weights the device can bind at once are one multi-weight dispatch (mul_mv_multi.wgsl's
        q8 form over C token rows): 3 more. The readers must follow the norm at once, so
        nothing writes the scratch or the norm's input between them, except each reader's bias
        add (Qwen2) where the readers are one multi-weight dispatch that does those adds too
        (_bias_adds; self.rows_bias_adds lists them): skipped, they write nothing in between
        either. Returns {id of the norm's output: (the norm node, its readers)}."""
        self.rows_bias_adds: list[Node] = []
        if not (self.g.rows and shapes.ROWS_FUSE):
            return {}
        reads = reader_counts(self.nodes, self.g.outputs.values())
        outs = {v.id for v in self.g.outputs.values()}
        found = {}
        for i, n in enumerate(self.nodes):
            if (n.op != "rms_norm" or n.args[1] is None or n.out.id in outs
                    or n.attrs["group"] != n.out.cols or n.out.cols % 32):
                continue
            r = reads.get(n.out.id, 0)
            readers, adds = [], []
            for m in self.nodes[i + 1:i + 1 + 2 * r]:
                if len(readers) == r:
                    break
                if (m.op == "mul_mat" and m.args[0] is n.out
                        and self._int_dot_rows(m.args[1], n.out)):
                    readers.append(m)
                elif readers and self._bias_add_of(m, readers[-1].out, reads):
                    adds.append(m)
                else:
                    break
            if not r or len(readers) != r:
                continue
            if adds and not self._rows_multi(readers, bias=True):
                continue  # interleaved adds must be done by the readers' one dispatch
            found[n.out.id] = (n, readers)
            self.rows_bias_adds += adds
        return found

    @staticmethod
    def _bias_add_of(a: Node, y: Value, reads: dict[int, int]) -> bool:
        """Whether node a adds a bias (a weight of one row's values) to y, y's one reader."""
        if a.op != "add" or y not in a.args or reads.get(y.id) != 1:
            return False
        b = a.args[1] if a.args[0] is y else a.args[0]
        return isinstance(b, Weight) and math.prod(b.shape) == y.cols and y.shape == a.out.shape

    def _rows_xq(self, x: Value):
        """The quantized x of a rows-mode integer mat-vec reading a folded norm's output x
        (_rows_normed): quantized (and normed) by the first reader, shared by the others."""
        if self._xq_holds != x.id:
            nrm = self.rows_normed[x.id][0]
            self._quantize_x(nrm.args[0], nw=nrm.args[1], eps=nrm.attrs["eps"])
            self._xq_holds = x.id
        return self._xq

    def _xq_scratch(self, k: int):
        """The scratch buffer of quantized x (quantize_x.wgsl's layout) for rows of k values.
        Programs run their dispatches in order, so one serves every mat-vec of a step."""
        self._xq_holds = None  # whoever asks for it is about to write it
        need = (k + k // 2) * max(1, self.n if self.g.rows else 1)  # bytes, a vec4 per 32
        if self._xq is None or self._xq.size < need:
            self._xq = self._buf(max(need, 256), "STORAGE", "quantized x")
        return self._xq

    def _bindings_fit(self, ws, others: int) -> bool:
        """Whether one dispatch can bind all of these weights (each of one part) besides
        `others` storage buffers, within the device's storage bindings per shader stage."""
        arrays = sum(len(w.handle.parts[0].buffers) for w in ws)
        storage = self.be.limits.get("max-storage-buffers-per-shader-stage", 8)
        return all(len(w.handle.parts) == 1 for w in ws) and others + arrays <= storage

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
