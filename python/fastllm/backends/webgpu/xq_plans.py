"""Which of a WebGPU program's products read their x already quantized to bytes, and who
writes it (a mixin of WebGPUProgram, used by matmul.py, moe.py, attention.py and delta.py):
the integer mat-vec's predicates, and the plans made once per program before lowering:
producers that write their reader's quantized x (attention, norm_gate, the gate-up glu kernel,
the mat-vec + residual that writes the next norm's: PRENORM), the batched step's folded norms,
multi-weight groups and bias adds. Each plan only merges work into fewer dispatches; the kernels
compute what the unfused ones do (tests compare both)."""

from __future__ import annotations

import math

from ..base import Node, Value, Weight
from . import matmul_shapes as shapes

NORM_GATE_MAX = 256  # delta.wgsl's NG_MAX: the largest group kernel_norm_gate_q8 takes


class XqPlans:
    """Uses WebGPUProgram's be, g, nodes, rows_normed, glu_multi and prequantized."""

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
        reads = self.reads
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
        reads = self.reads
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
        reads = self.reads
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

    def _bindings_fit(self, ws, others: int) -> bool:
        """Whether one dispatch can bind all of these weights (each of one part) besides
        `others` storage buffers, within the device's storage bindings per shader stage."""
        arrays = sum(len(w.handle.parts[0].buffers) for w in ws)
        storage = self.be.limits.get("max-storage-buffers-per-shader-stage", 8)
        return all(len(w.handle.parts) == 1 for w in ws) and others + arrays <= storage
