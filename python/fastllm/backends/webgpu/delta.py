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
        self._dispatch(_FILE, "kernel_norm_gate_f32",
                       {0: self._arg(("kargs_rwkv", args)), 1: self.buf(node.out),
                        3: self.buf(x), 4: self.buf(w), 5: self.buf(z)}, (x.cols // g, rows))

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
        self._dispatch(_FILE, "kernel_gated_delta_f32", b, (-(-s // _WG), hv),
                       consts={"ROWS": self.g.rows, "GD_S": s})
