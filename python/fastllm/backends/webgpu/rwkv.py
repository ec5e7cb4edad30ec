"""The recurrent-model ops (RWKV-6 / RWKV-7) on WebGPU: their lowering, as a mixin of
WebGPUProgram (`_op_<name>` per graph op), and the state buffers of KVSpec.state on the device.

Kernels are in shaders/rwkv.wgsl (bindings: args 0, output 1, state 2, inputs 3..) and
shaders/rwkv_blocks.wgsl (the block-diagonal product, per weight type). A state op is one
dispatch over all rows of a run, sequential in the rows inside it, as base.py requires.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Node, Value
from . import repack
from .device import Device

_FILE = "rwkv.wgsl"
_WG = 64  # rwkv.wgsl's WG
_WKV_MAX = 64  # rwkv.wgsl's WKV_MAX: the most state values a thread keeps in registers


# -- state buffers (called from WebGPUBackend) -------------------------------------------------

def init_state(be: Device, spec) -> None:
    """One zeroed float32 buffer per name of spec.state, in be.state: spec.n_seq slots of the
    name's n values one after another (be.state_sizes holds n, one slot's share)."""
    be.state = {}
    be.state_sizes = dict(spec.state)
    be.state_slots = spec.n_seq
    for name, n in spec.state:
        be.state[name] = be.buffer(4 * n * spec.n_seq, "STORAGE|COPY_SRC|COPY_DST",
                                   f"state {name}")
    reset_state(be)


def free_state(be: Device) -> None:
    for b in getattr(be, "state", {}).values():
        be.free(b)
    be.state, be.state_sizes = {}, {}


def reset_state(be: Device, slot: int | None = None) -> None:
    with be.errors("zeroing the recurrent state"):
        for name, buf in getattr(be, "state", {}).items():
            n = be.state_sizes[name]
            if slot is None:
                be.queue.write_buffer(buf, 0, np.zeros(n * be.state_slots, np.float32))
            else:
                be.queue.write_buffer(buf, 4 * n * slot, np.zeros(n, np.float32))


def get_state(be: Device, slot: int = 0) -> dict[str, np.ndarray]:
    out = {}
    with be.errors("reading the recurrent state"):
        for name, buf in getattr(be, "state", {}).items():
            n = be.state_sizes[name]
            data = be.queue.read_buffer(buf, 4 * n * slot, 4 * n)
            out[name] = np.frombuffer(data, np.float32).copy()
    return out


def set_state(be: Device, state: dict[str, np.ndarray], slot: int = 0) -> None:
    with be.errors("writing the recurrent state"):
        for name, v in state.items():
            if name not in be.state:
                raise KeyError(f"webgpu: no state buffer {name!r}")
            v = np.ascontiguousarray(v, np.float32).reshape(-1)
            if v.size != be.state_sizes[name]:
                raise ValueError(f"state {name!r} has {be.state_sizes[name]} values, got {v.size}")
            be.queue.write_buffer(be.state[name], 4 * v.size * slot, v)


# -- lowering ----------------------------------------------------------------------------------

class RwkvOps:
    """`_op_*` methods for WebGPUProgram; they use its _arg, _dispatch, _grid1 and buf."""

    be: Device

    def _state(self, name: str) -> Any:
        buf = getattr(self.be, "state", {}).get(name)
        if buf is None:
            raise UnsupportedError(f"webgpu: no recurrent state buffer {name!r} (init_kv with "
                                   f"a KVSpec that declares it first)")
        return buf

    def _opt(self, v) -> Any:
        return self.buf(v) if v is not None else self.be.dummy

    def _rows(self, node: Node, group: int) -> tuple[int, int]:
        x = node.args[0]
        rows = math.prod(x.shape[:-1])
        if x.cols % group:
            raise UnsupportedError(f"webgpu: {node.op} over groups of {group} of rows of "
                                   f"{x.cols}")
        return rows, x.cols

    def _op_layer_norm(self, node: Node) -> None:
        x, w, b = node.args
        g = node.attrs["group"]
        rows, cols = self._rows(node, g)
        args = {"n_rows": rows, "n_cols": cols, "group": g, "has_weight": int(w is not None),
                "has_bias": int(b is not None), "eps": node.attrs["eps"]}
        self._dispatch(_FILE, "kernel_layer_norm_f32",
                       {0: self._arg(("kargs_layer_norm", args)), 1: self.buf(node.out),
                        3: self.buf(x), 4: self._opt(w), 5: self._opt(b)}, (cols // g, rows))

    def _op_l2_norm(self, node: Node) -> None:
        g = node.attrs["group"]
        rows, cols = self._rows(node, g)
        args = {"n_rows": rows, "n_cols": cols, "group": g, "eps": node.attrs["eps"]}
        self._dispatch(_FILE, "kernel_l2_norm_f32",
                       {0: self._arg(("kargs_rwkv", args)), 1: self.buf(node.out),
                        3: self.buf(node.args[0])}, (cols // g, rows))

    def _op_wkv7_bonus(self, node: Node) -> None:
        r, k, v, r_k = node.args
        g = node.attrs["head_size"]
        rows, cols = self._rows(node, g)
        self._dispatch(_FILE, "kernel_wkv7_bonus_f32",
                       {0: self._arg(("kargs_rwkv", {"n_rows": rows, "n_cols": cols,
                                                     "group": g})),
                        1: self.buf(node.out), 3: self.buf(r), 4: self.buf(k), 5: self.buf(v),
                        6: self.buf(r_k)}, (cols // g, rows))

    def _op_unary(self, node: Node) -> None:
        (x,) = node.args
        n = math.prod(x.shape)
        self._dispatch(_FILE, f"kernel_unary_{node.attrs['fn']}_f32",
                       {0: self._arg(("kargs_unary", {"n": n})), 1: self.buf(node.out),
                        3: self.buf(x)}, self._grid1(n, _WG))

    def _op_lerp(self, node: Node) -> None:
        a, b, mu, mu_v = node.args
        at = node.attrs
        rows, d = math.prod(a.shape[:-1]), a.cols
        args = {"n_rows": rows, "n_cols": d, "has_mu": int(mu is not None),
                "mu_off": at["mu_row"] * d, "has_mu_v": int(mu_v is not None),
                "mu_v_cols": mu_v.cols if mu_v is not None else 0, "mu_col": at["mu_col"]}
        self._dispatch(_FILE, "kernel_lerp_f32",
                       {0: self._arg(("kargs_lerp", args)), 1: self.buf(node.out),
                        3: self.buf(a), 4: self.buf(b), 5: self._opt(mu), 6: self._opt(mu_v)},
                       self._grid1(rows * d, _WG))

    def _op_token_shift(self, node: Node) -> None:
        (x,) = node.args
        rows, d = math.prod(x.shape[:-1]), x.cols
        self._dispatch(_FILE, "kernel_token_shift_f32",
                       {0: self._arg(("kargs_rwkv", {"n_rows": rows, "n_cols": d})),
                        1: self.buf(node.out), 2: self._state_of(node, d), 3: self.buf(x),
                        **self._slot_bindings()},
                       self._grid1(d, _WG), consts={"ROWS": self.g.rows})

    def _slot_bindings(self) -> dict[int, Any]:
        """The state ops' slot: the step (one slot for the run) and the rows' (slot, position)
        pairs in rows mode (rwkv.wgsl's slot_base)."""
        return {9: self.step, 10: self.rows if self.g.rows else self.be.dummy}

    def _state_of(self, node: Node, n: int) -> Any:
        name = node.attrs["state"]
        buf = self._state(name)
        if self.be.state_sizes[name] != n:
            raise UnsupportedError(f"webgpu: {node.op} needs {n} state values in {name!r}, "
                                   f"which holds {self.be.state_sizes[name]}")
        return buf

    def _wkv(self, node: Node, entry: str, inputs: list[Value]) -> None:
        s = node.attrs["head_size"]
        rows, cols = self._rows(node, s)
        if s > _WKV_MAX or _WG % s:
            raise UnsupportedError(f"webgpu: {node.op} with head size {s} (a power of two up "
                                   f"to {_WKV_MAX} is supported)")
        b = {0: self._arg(("kargs_rwkv", {"n_rows": rows, "n_cols": cols, "group": s})),
             1: self.buf(node.out), 2: self._state_of(node, cols * s), **self._slot_bindings()}
        b.update({3 + i: self.buf(v) for i, v in enumerate(inputs)})
        self._dispatch(_FILE, entry, b, (-(-cols // _WG),), consts={"ROWS": self.g.rows})

    def _op_wkv6(self, node: Node) -> None:
        self._wkv(node, "kernel_wkv6_f32", list(node.args))

    def _op_wkv7(self, node: Node) -> None:
        self._wkv(node, "kernel_wkv7_f32", list(node.args))

    def _op_mul_mat_blocks(self, node: Node) -> None:
        x, w = node.args
        h = w.handle
        nb, m, k = w.shape
        if k % 4:
            raise UnsupportedError(f"webgpu: mul_mat_blocks with blocks of {k} columns (a "
                                   f"multiple of 4 is needed) for {w.name!r}")
        rows = x.shape[0]
        words = sum(repack.array_sizes(GGMLType(w.type), 2, k)) // 8
        for part in h.parts:
            b = {0: self._arg(("kargs_mul_mat_blocks", {"M": rows, "n_blocks": nb, "m": m,
                                                        "k": k, "w_row_words": words}),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: self.buf(x), 2: self.buf(node.out)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            self._dispatch("rwkv_blocks.wgsl", f"kernel_mul_mat_blocks_{h.tname}_f32", b,
                           self._grid1(rows * part.n_rows, _WG), wtype=h.tname)
