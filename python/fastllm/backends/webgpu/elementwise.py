"""The elementwise and positional ops of WebGPUProgram (`_op_<name>` per graph op, as a mixin):
embedding rows, binary ops and GLUs, rms_norm, rope (alone, or with the KV-cache store:
rope_kv.wgsl), the KV store and argmax. Rows mode (Graph.rows) reads each row's slot and
position from the program's `rows` buffer (rows.wgsl, rope_kv.wgsl's ROWS)."""

from __future__ import annotations

import math

import numpy as np

from ...errors import UnsupportedError
from ..base import Node, Weight

EW_WG = 64  # workgroup size of elementwise.wgsl, rope.wgsl and kv.wgsl


class ElementwiseOps:
    """Uses WebGPUProgram's _arg, _dispatch, _grid1, buf, be, g and rows."""

    def _op_get_rows(self, node: Node) -> None:
        w, ids = node.args
        h = w.handle
        n = ids.shape[0]
        for part in h.parts:
            b = {0: self._arg(("kargs_get_rows", {"n_rows": n, "n_cols": h.k, "n_vocab": h.n}),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: self.buf(ids), 2: self.buf(node.out)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            self._dispatch("get_rows.wgsl", f"kernel_get_rows_{h.tname}", b,
                           (-(-8 * h.units // 64), n), wtype=h.tname)

    def _binary(self, node: Node, entry: str) -> None:
        a, b = node.args
        n = math.prod(a.shape)
        nb = math.prod(b.shape)
        if n % nb:
            raise UnsupportedError(f"webgpu: {node.op} of shapes {a.shape} and {b.shape}")
        self._dispatch("elementwise.wgsl", entry,
                       {0: self._arg(("kargs_binary", {"n": n, "b_period": nb})), 1: self.buf(a),
                        2: self.buf(b), 3: self.buf(node.out)}, self._grid1(n))

    def _op_add(self, node: Node) -> None:
        self._binary(node, "kernel_add_f32")

    def _op_mul(self, node: Node) -> None:
        self._binary(node, "kernel_mul_f32")

    def _op_scale(self, node: Node) -> None:
        (a,) = node.args
        n = math.prod(a.shape)
        args = {"n": n, "b_period": 1, "s": node.attrs["s"]}
        self._dispatch("elementwise.wgsl", "kernel_scale_f32",
                       {0: self._arg(("kargs_binary", args)), 1: self.buf(a),
                        3: self.buf(node.out)}, self._grid1(n))

    def _glu(self, node: Node, entry: str) -> None:
        gate, up = node.args
        n = math.prod(gate.shape)
        self._dispatch("elementwise.wgsl", entry,
                       {0: self._arg(("kargs_unary", {"n": n})), 1: self.buf(gate),
                        2: self.buf(up), 3: self.buf(node.out)}, self._grid1(n))

    def _op_swiglu(self, node: Node) -> None:
        if node.out.id in self.moe_glu:  # computed by its reader's quantize_x (moe.py)
            return
        self._glu(node, "kernel_swiglu_f32")

    def _op_geglu(self, node: Node) -> None:
        self._glu(node, "kernel_geglu_f32")

    def _op_swiglu_oai(self, node: Node) -> None:
        gate, up = node.args
        n = math.prod(gate.shape)
        args = {"n": n, "alpha": node.attrs["alpha"], "limit": node.attrs["limit"]}
        self._dispatch("elementwise.wgsl", "kernel_swiglu_oai_f32",
                       {0: self._arg(("kargs_swiglu_oai", args)), 1: self.buf(gate),
                        2: self.buf(up), 3: self.buf(node.out)}, self._grid1(n))

    def _op_last_row(self, node: Node) -> None:
        (x,) = node.args
        self._dispatch("elementwise.wgsl", "kernel_last_row_f32",
                       {0: self._arg(("kargs_unary", {"n": x.cols})), 1: self.buf(x),
                        3: self.buf(node.out), 4: self.step}, self._grid1(x.cols))

    def _op_rms_norm(self, node: Node) -> None:
        if node.out.id in self.rows_normed or node.out.id in self.id_normed:
            return  # normed by its readers themselves (matmul.py, moe.py)
        x, w = node.args
        at = node.attrs
        rows, cols = math.prod(x.shape[:-1]), x.cols
        args = {"n_rows": rows, "n_cols": cols, "group": at["group"],
                "has_weight": int(w is not None), "eps": at["eps"]}
        self._dispatch("norm.wgsl", "kernel_rms_norm_f32",
                       {0: self._arg(("kargs_rms_norm", args)), 1: self.buf(x),
                        2: self.buf(w) if w is not None else self.be.dummy,
                        3: self.buf(node.out)}, (cols // at["group"], rows))

    def _rope_table(self, n_rot: int, base: float, freq_scale: float, ff: Weight | None):
        """inv_freq[i] = freq_scale * base^(-2i/n_rot) / ff[i], computed in float64 once."""
        # the weight object itself, not id(): the key keeps it alive, so a later weight can never
        # reuse a freed one's id and be handed its stale table
        key = (n_rot, base, freq_scale, ff.handle if ff is not None else None)
        buf = self.be.rope_tables.get(key)
        if buf is None:
            inv = freq_scale * base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
            if ff is not None:
                self.be.vector(ff)
                inv = inv / ff.handle.host.reshape(-1)[: n_rot // 2].astype(np.float64)
            buf = self.be._upload(inv.astype(np.float32).view(np.uint8), "rope inv_freq")
            self.be.rope_tables[key] = buf
        return buf

    def _op_rope(self, node: Node) -> None:
        x, ff = node.args
        at = node.attrs
        rows = x.shape[0]
        if at["head_dim"] % 2:
            raise UnsupportedError(f"webgpu: rope with an odd head_dim {at['head_dim']}")
        args = {"n_rows": rows, "n_head": at["n_head"], "head_dim": at["head_dim"],
                "n_rot": at["n_rot"], "base": at["base"], "freq_scale": at["freq_scale"],
                "neox": int(at["neox"]), "has_freq_factors": int(ff is not None)}
        table = self._rope_table(at["n_rot"], at["base"], at["freq_scale"], ff)
        if self.g.rows:  # each row at its own position
            self._dispatch("rows.wgsl", "kernel_rope_rows_f32",
                           {0: self._arg(("kargs_rope", args)), 1: self.rows, 2: self.buf(x),
                            3: table, 4: self.buf(node.out)},
                           self._grid1(rows * at["n_head"] * at["head_dim"] // 2))
            return
        self._dispatch("rope.wgsl", "kernel_rope_f32",
                       {0: self._arg(("kargs_rope", args)), 1: self.step, 2: self.buf(x),
                        3: table, 4: self.buf(node.out)},
                       self._grid1(rows * at["n_head"] * at["head_dim"] // 2))

    def _op_rope_kv_store(self, node: Node) -> None:
        q, k, v, ff = node.args
        at = node.attrs
        ring, dim, (kc, vc) = self._kv(at["layer"])
        rows = q.shape[0]
        if at["head_dim"] % 2:
            raise UnsupportedError(f"webgpu: rope with an odd head_dim {at['head_dim']}")
        if k.cols != dim or v.cols != dim:
            raise UnsupportedError(f"webgpu: kv_store of {k.cols} values into a cache of {dim}")
        rope = {"n_rows": rows, "head_dim": at["head_dim"], "n_rot": at["n_rot"],
                "base": at["base"], "freq_scale": at["freq_scale"], "neox": int(at["neox"]),
                "has_freq_factors": int(ff is not None)}
        args = self._arg(("kargs_rope", {**rope, "n_head": at["n_head"]}),
                         ("kargs_rope", {**rope, "n_head": at["k_n_head"]}),
                         ("kargs_kv_store", {"n_rows": rows, "kv_dim": dim, "ring": ring}))
        table = self._rope_table(at["n_rot"], at["base"], at["freq_scale"], ff)
        half = at["head_dim"] // 2
        n = rows * (at["n_head"] + at["k_n_head"]) * half + rows * dim
        rows_mode = bool(self.g.rows)
        self._dispatch("rope_kv.wgsl", "kernel_rope_kv_store_f32",
                       {0: args, 1: self.step, 2: self.buf(q), 3: table, 4: self.buf(node.out),
                        5: self.buf(k), 6: self.buf(v), 7: kc, 8: vc,
                        11: self.rows if rows_mode else self.be.dummy}, self._grid1(n),
                       consts={"ROWS": rows_mode})

    def _kv(self, layer: int):
        spec = self.be.spec
        if spec is None or layer >= spec.n_layers:
            raise UnsupportedError(f"webgpu: layer {layer} has no KV cache (call init_kv first)")
        return spec.sizes[layer], spec.kv_dim[layer], self.be.kv[layer]

    def _op_kv_store(self, node: Node) -> None:
        k, v = node.args
        ring, dim, (kc, vc) = self._kv(node.attrs["layer"])
        n = k.shape[0]
        if k.cols != dim or v.cols != dim:
            raise UnsupportedError(f"webgpu: kv_store of {k.cols} values into a cache of {dim}")
        args = {"n_rows": n, "kv_dim": dim, "ring": ring}
        if self.g.rows:  # each row into its own slot, at its own position
            self._dispatch("rows.wgsl", "kernel_kv_store_rows_f32",
                           {0: self._arg(("kargs_kv_store", args)), 1: self.rows,
                            5: self.buf(k), 6: self.buf(v), 7: kc, 8: vc},
                           self._grid1(n * dim))
            return
        self._dispatch("kv.wgsl", "kernel_kv_store_f32",
                       {0: self._arg(("kargs_kv_store", args)), 1: self.step, 2: self.buf(k),
                        3: self.buf(v), 4: kc, 5: vc}, self._grid1(n * dim))

    def _op_argmax(self, node: Node) -> None:
        (x,) = node.args
        rows = math.prod(x.shape[:-1])
        self._dispatch("argmax.wgsl", "kernel_argmax_f32",
                       {0: self._arg(("kargs_argmax", {"n_rows": rows, "n_cols": x.cols})),
                        1: self.buf(x), 2: self.buf(node.out)}, (rows,))
