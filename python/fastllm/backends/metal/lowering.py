"""Metal op lowering: a recorded `Graph` becomes a fixed list of `Dispatch`es (kernel name,
kargs bytes, buffer references, grid) over one activation arena with static offsets. It knows the
kernels of metal/*.metal and nothing of the device; program.py runs the list on the GPU
(runtime.py) and tests/metal runs the same list under the MSL emulator.

MetalLowering holds the walk over the graph (arena offsets, each value freed after its last
reader) and the helpers every op uses; the ops themselves are one `_<op>` method each, in
mixins by kernel family: matmul.py, attention.py, elementwise.py, rwkv.py, delta.py, moe.py.
What a lowering produces (Plan, Dispatch, Ref, the arena) is plan.py's."""

from __future__ import annotations

import numpy as np

from ... import kargs
from ...errors import BackendError, UnsupportedError
from ...quants import GGMLType
from ..base import Graph, KVSpec, Value, Weight
from ..fuse import fuse as fuse_nodes
from .attention import AttentionLowering
from .delta import DeltaLowering  # Gated DeltaNet (Qwen3.5)
from .elementwise import ElementwiseLowering
from .matmul import MM_MIN_ROWS, MatmulLowering
from .moe import MoeLowering  # mixture of experts
from .plan import ALIGN, HEADER, Dispatch, Plan, Ref, _Arena, _type_name, _up
from .rwkv import RwkvLowering  # RWKV: the recurrent-model ops


class MetalLowering(MatmulLowering, AttentionLowering, ElementwiseLowering, RwkvLowering,
                    MoeLowering, DeltaLowering):
    """Graph -> Plan. `kv` is the backend's KV spec and `kv_type` its cache element type."""

    def __init__(self, graph: Graph, kv: KVSpec | None, kv_type: str = "f16",
                 redzone: int = 0, fuse: bool = True):
        self.g, self.kv, self.kv_type, self.redzone = graph, kv, kv_type, redzone
        # the fused ops of backends/fuse.py (a mat-mul takes the mat-vec kernel below
        # MM_MIN_ROWS tokens; decode attention keeps its own rope_kv_store before it; rows mode
        # keeps rope, kv_store and attention apart)
        self.nodes = (fuse_nodes(graph.nodes, graph.outputs.values(), MM_MIN_ROWS - 1,
                                 attn_rope=False, rows=graph.rows) if fuse
                      else list(graph.nodes))
        self.out: list[Dispatch] = []
        self.rows: Ref | None = None  # rows mode: the rows' (slot, position) pairs (lower())

    # -- values ----------------------------------------------------------------------------
    @staticmethod
    def _nbytes(v: Value) -> int:
        return int(np.prod(v.shape)) * 4  # f32 and i32 alike

    def lower(self) -> Plan:
        g = self.g
        n = g.n_tokens
        top = HEADER + _up(4 * n + self.redzone, ALIGN)
        self.rows = None
        if g.rows:  # each row's (slot, position), written per run like the token ids
            self.rows = Ref("arena", top, 8 * n)
            top += _up(8 * n + self.redzone, ALIGN)
        arena = _Arena(top, self.redzone)
        self.refs: dict[int, Ref] = {g.tokens.id: Ref("arena", HEADER, 4 * n)}
        alias: dict[int, int] = {}  # view value id -> the value id that owns the memory
        last: dict[int, int] = {}
        for i, node in enumerate(self.nodes):
            for a in node.args:
                if isinstance(a, Value):
                    last[alias.get(a.id, a.id)] = i
            if node.op == "last_row":
                alias[node.out.id] = alias.get(node.args[0].id, node.args[0].id)
        for v in g.outputs.values():
            last[alias.get(v.id, v.id)] = len(self.nodes)
        self.arena = arena
        for i, node in enumerate(self.nodes):
            outs = [] if node.out is None else [node.out, *node.attrs.get("also_out", ())]
            if node.op == "last_row":
                x = self.refs[node.args[0].id]
                row = node.out.cols * 4
                self.refs[node.out.id] = Ref("arena", x.offset + x.nbytes - row, row)
            else:
                for v in outs:
                    nb = self._nbytes(v)
                    self.refs[v.id] = Ref("arena", arena.alloc(nb), nb)
                lower_op = getattr(self, "_" + node.op, None)
                if lower_op is None:
                    raise UnsupportedError(f"metal: op {node.op!r} has no Metal kernel yet "
                                           f"(use backend='webgpu' or 'reference')")
                lower_op(node)
            done = {alias.get(a.id, a.id) for a in node.args if isinstance(a, Value)}
            if node.op != "last_row":
                done.update(v.id for v in outs)  # an output nothing reads is dead at once
            for vid in done:
                if last.get(vid, -1) <= i and vid != g.tokens.id and vid in self.refs:
                    r = self.refs[vid]
                    arena.release(r.offset, r.nbytes)
        outs = {k: (self.refs[v.id], v.shape, v.dtype) for k, v in g.outputs.items()}
        return Plan(self.out, arena.top, self.refs[g.tokens.id], Ref("arena", 0, 16), outs,
                    self.rows)

    # -- what the op mixins build with (an op method is `_<op>`, found by name in lower()) ----
    def _emit(self, kernel: str, buffers: list[Ref], grid: tuple[int, ...], threads: int,
              writes: tuple[int, ...], struct: str, **fields) -> None:
        """Append a dispatch; `fields` fill the kargs struct `struct`."""
        grid3 = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        self.out.append(Dispatch(kernel, kargs.pack(struct, **fields), tuple(buffers), grid3,
                                 (int(threads), 1, 1), writes))

    def _ref(self, a) -> Ref:
        if isinstance(a, Value):
            return self.refs[a.id]
        h = a.handle
        return Ref("weight", h.offset, h.nbytes, h)

    def _step(self) -> Ref:
        return Ref("arena", 0, 16)

    def _scratch(self, nbytes: int) -> Ref:
        """An arena block for a node's intermediate (release it with _free once used)."""
        return Ref("arena", self.arena.alloc(nbytes), nbytes)

    def _free(self, r: Ref) -> None:
        self.arena.release(r.offset, r.nbytes)

    @staticmethod
    def _tname(w: Weight) -> str:
        return _type_name(w)

    def _vec(self, w, like: Value) -> Ref:
        """A weight read element-wise: f32 (1-D weights are made f32 at load)."""
        if w is None:
            return self._ref(like)  # bound, never read
        if w.handle.type != GGMLType.F32:
            raise UnsupportedError(f"metal: tensor {w.name!r} of type {w.handle.type.name} is "
                                   f"used element-wise; only f32 is read that way")
        return self._ref(w)

    # -- recurrent state (rwkv.py, delta.py) ------------------------------------------------
    def _state(self, node, n: int) -> Ref:
        """The state buffer `node.attrs["state"]`, n floats per slot (all slots bound; the
        kernels add the slot's base). It is read and written by the kernel, so never among a
        dispatch's `writes` (those are poisoned)."""
        name = node.attrs["state"]
        have = dict(self.kv.state).get(name) if self.kv is not None else None
        if have is None:
            raise BackendError(f"metal: no recurrent state buffer {name!r} (init_kv with a KVSpec "
                               f"that declares it first)")
        if have != n:
            raise UnsupportedError(f"metal: {node.op} needs {n} state values in {name!r}, which "
                                   f"holds {have}")
        return Ref("state", 0, 4 * n * self.kv.n_seq, name)

    def _state_kernel(self, name: str) -> tuple[str, list[Ref]]:
        """A state op's kernel (kernel_X_f32, or kernel_X_rows_f32 in rows mode) and its last
        two buffers: the step (whose slot a run of one sequence uses) and the rows' (slot,
        position) pairs, the step again in sequence mode (bound, not read)."""
        if self.rows:
            return f"kernel_{name}_rows_f32", [self._step(), self.rows]
        return f"kernel_{name}_f32", [self._step(), self._step()]

