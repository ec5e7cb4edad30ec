"""The Gated DeltaNet ops (Qwen3.5) on WebGPU: their lowering, as a mixin of WebGPUProgram
(`_op_<name>` per graph op). Kernels are in shaders/delta.wgsl; the state buffers are those of
KVSpec.state (rwkv.py keeps them), and the state ops bind a slot as RWKV's do."""

from __future__ import annotations

import math

from ...errors import UnsupportedError
from ..base import Node

_FILE = "delta.wgsl"
_WG = 64  # delta.wgsl's WG
_CONV_MAX = 8  # delta.wgsl's CONV_MAX: the most previous inputs a conv thread keeps
_GD_MAX = 256  # the largest head size whose state row a thread keeps in registers
# gated_delta's chunked form (delta.wgsl's kernel_gated_delta_prep_f32 and _chunks_f32): rows of a
# chunk (its two C x C matrices fill 8 KiB of workgroup memory at 32), and the fewest rows of a
# run that take it (decode and short runs keep the per-row kernel; rows mode always does, its rows
# being of different slots). GD_CHUNK_MIN = 0 turns the chunked form off.
GD_CHUNK = 32
GD_CHUNK_MIN = 64


class DeltaOps:
    """`_op_*` methods for WebGPUProgram; they use its _arg, _dispatch, _grid1, buf and the
    state helpers of RwkvOps."""

    def _op_slice_cols(self, node: Node) -> None:
        (x,) = node.args
        at = node.attrs
        rows, out_cols = math.prod(x.shape[:-1]), node.out.cols
        args = {"n_rows": rows, "n_cols": x.cols, "start": at["start"], "width": at["width"],
                "period": at["period"], "out_cols": out_cols}
        self._dispatch(_FILE, "kernel_slice_cols_f32",
                       {0: self._arg(("kargs_slice_cols", args)), 1: self.buf(node.out),
                        3: self.buf(x)}, self._grid1(rows * out_cols, _WG))

    def _op_dot_gate(self, node: Node) -> None:
        x, h, w = node.args
        rows = x.shape[0]
        args = {"n_rows": rows, "n_cols": x.cols, "start": 0, "width": h.cols, "period": 1,
                "out_cols": x.cols}
        self._dispatch(_FILE, "kernel_dot_gate_f32",
                       {0: self._arg(("kargs_slice_cols", args)), 1: self.buf(node.out),
                        3: self.buf(x), 4: self.buf(h), 5: self.buf(w)},
                       (min(rows, 32768), -(-rows // 32768)))

    def _op_ssm_conv(self, node: Node) -> None:
        x, w = node.args
        rows, c = math.prod(x.shape[:-1]), x.cols
        k = w.shape[1]
        if k - 1 > _CONV_MAX:
            raise UnsupportedError(f"webgpu: ssm_conv with a kernel of {k} taps for {w.name!r} "
                                   f"(up to {_CONV_MAX + 1} are supported)")
        self._dispatch(_FILE, "kernel_ssm_conv_f32",
                       {0: self._arg(("kargs_rwkv", {"n_rows": rows, "n_cols": c, "group": k})),
                        1: self.buf(node.out), 2: self._state_of(node, c * (k - 1)),
                        3: self.buf(x), 4: self.buf(w), **self._slot_bindings()},
                       self._grid1(c, _WG),
                       consts={"ROWS": self.g.rows, "SILU": node.attrs["silu"]})

    def _op_norm_gate(self, node: Node) -> None:
        x, w, z = node.args
        g = node.attrs["group"]
        rows = math.prod(x.shape[:-1])
        args = {"n_rows": rows, "n_cols": x.cols, "group": g, "eps": node.attrs["eps"]}
        b = {0: self._arg(("kargs_rwkv", args)), 3: self.buf(x), 4: self.buf(w), 5: self.buf(z)}
        if node.out.id in self.prequantized:  # written as the output projection's x
            self._dispatch(_FILE, "kernel_norm_gate_q8", {**b, 11: self.buf(node.out)},
                           (x.cols // g, rows))
            return
        self._dispatch(_FILE, "kernel_norm_gate_f32", {**b, 1: self.buf(node.out)},
                       (x.cols // g, rows))

    @staticmethod
    def _gd_scratch(node: Node) -> int:
        """The chunked gated_delta's scratch bytes: U0, W and Q' (n x Hv*S each), a factor per
        row and head and one per chunk and head (delta.wgsl)."""
        n, cols = node.out.shape
        hv = cols // node.attrs["head_dim"]
        return 4 * (3 * n * cols + n * hv + -(-n // GD_CHUNK) * hv)

    def _chunked(self, node: Node) -> bool:
        """Whether a gated_delta runs chunked: a run of GD_CHUNK_MIN rows or more of one slot,
        whose scratch fits one binding (else the per-row kernel, which needs none)."""
        return (node.op == "gated_delta" and not self.g.rows and GD_CHUNK_MIN > 0
                and node.args[0].shape[0] >= GD_CHUNK_MIN
                and self._gd_scratch(node) <= self.be.max_binding)

    def _scratch_bytes(self, node: Node) -> int:
        return self._gd_scratch(node) if self._chunked(node) else 0

    def _op_gated_delta(self, node: Node) -> None:
        qkv = node.args[0]
        at = node.attrs
        s, hk = at["head_dim"], at["n_k_heads"]
        if s > _GD_MAX:
            raise UnsupportedError(f"webgpu: gated_delta with heads of {s} (up to {_GD_MAX})")
        hv = node.out.cols // s
        args = {"n_rows": qkv.shape[0], "n_k_heads": hk, "n_v_heads": hv, "head_dim": s,
                "scale": 1.0 / math.sqrt(s), "eps": at["eps"]}
        b = {0: self._arg(("kargs_gated_delta", args)), 1: self.buf(node.out),
             2: self._state_of(node, hv * s * s), **self._slot_bindings()}
        b.update({3 + i: self.buf(a) for i, a in enumerate(node.args)})
        if self._chunked(node):
            consts = {"GD_S": s, "GD_C": GD_CHUNK}
            b[8] = self.slots[self.scratch_of[node.out.id]]
            # each kernel binds only what it reads (the prep: no state, no step)
            self._dispatch(_FILE, "kernel_gated_delta_prep_f32",
                           {k: v for k, v in b.items() if k not in (2, 9, 10)},
                           (-(-qkv.shape[0] // GD_CHUNK), hv), consts=consts)
            self._dispatch(_FILE, "kernel_gated_delta_chunks_f32",
                           {k: v for k, v in b.items() if k not in (4, 5, 6, 7)},
                           (-(-s // _WG), hv), consts=consts)
            return
        self._dispatch(_FILE, "kernel_gated_delta_f32", b, (-(-s // _WG), hv),
                       consts={"ROWS": self.g.rows, "GD_S": s})
