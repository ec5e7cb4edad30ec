"""Metal op lowering: a recorded `Graph` becomes a fixed list of `Dispatch`es (kernel name,
kargs bytes, buffer references, grid) over one activation arena with static offsets. It knows the
kernels of metal/*.metal and nothing of the device; backend.py runs the list on the GPU and
tests/metal runs the same list under the MSL emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import kargs
from ...errors import BackendError, UnsupportedError
from ...quants import GGMLType, row_bytes
from ..base import Graph, KVSpec, Value, Weight
from ..fuse import fuse as fuse_nodes
from .delta import DeltaLowering
from .moe import MoeLowering  # mixture of experts

# kernel-name suffix of each weight type: kernel_mul_mv_<t>_f32, kernel_get_rows_<t>, ...
TYPE_NAMES: dict[GGMLType, str] = {
    GGMLType.F32: "f32", GGMLType.F16: "f16", GGMLType.BF16: "bf16",
    GGMLType.Q8_0: "q8_0", GGMLType.Q4_0: "q4_0", GGMLType.Q4_1: "q4_1",
    GGMLType.Q5_0: "q5_0", GGMLType.Q5_1: "q5_1", GGMLType.Q2_K: "q2_K",
    GGMLType.Q3_K: "q3_K", GGMLType.Q4_K: "q4_K", GGMLType.Q5_K: "q5_K", GGMLType.Q6_K: "q6_K",
    GGMLType.MXFP4: "mxfp4",
}
KV_TYPES = {"f16": 2, "f32": 4}  # cache element type -> bytes

# Launch constants shared with the kernels (same names in metal/*.metal)
MV_NSG, MV_NR = 2, 4  # mul_mv: SIMD groups per threadgroup, rows per SIMD group
MM_TILE = 32  # mul_mm: 32 x 32 output tile per threadgroup of 128 threads
MM_MIN_ROWS = 8  # tokens from which mat-mat beats re-reading W per token in mat-vec
MM_EPILOGUES = {None: 0, "res": 1, "swiglu": 2, "geglu": 3}  # kargs_mul_mm.epilogue
ATTN_MAX_D = 256  # attention: largest head_dim
AP_Q = 8  # attention prefill: query rows per threadgroup
ATTN_SPLIT = 256  # decode attention: cache positions per split at full context
ATTN_MAX_SPLITS = 32
WKV_TG, WKV_MAX = 64, 64  # rwkv.metal: wkv threads per threadgroup, largest head size
MB_NSG = 2  # rwkv.metal: mul_mat_blocks SIMD groups per threadgroup
# sample.metal: threads per threadgroup (SAMPLE_TG), at most SAMPLE_PARTS chunks of the row of
# at least SAMPLE_CHUNK columns and at most SAMPLE_NK (its threadgroup arrays)
SAMPLE_TG, SAMPLE_PARTS, SAMPLE_CHUNK, SAMPLE_NK = 256, 64, 2048, 4096
ALIGN = 256  # arena offsets: ample for any vector load and for setBuffer offsets
# arena bytes 0..15: kargs_step; token ids start at HEADER, then in rows mode (Graph.rows) each
# row's (slot, position) pair (a uint2)
HEADER = 256


def _up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _threads(n: int, cap: int = 256) -> int:
    """A threadgroup width for n work items: whole SIMD groups, at most cap."""
    return max(32, min(cap, _up(n, 32)))


@dataclass(frozen=True)
class Ref:
    """A buffer argument: `kind` "arena" (offset from the arena start), "weight" (key: the weight's
    handle), "k"/"v" (key: layer), "state" (key: the name of a recurrent state buffer). nbytes is the extent the kernel may touch."""

    kind: str
    offset: int = 0
    nbytes: int = 0
    key: Any = None


@dataclass
class Dispatch:
    """One kernel launch: kargs at [[buffer(0)]] (set as bytes), `buffers` at 1, 2, ...;
    `grid` threadgroups of `threads` threads. `writes` are the positions in `buffers` whose
    contents the kernel defines entirely (the emulator poisons them before the launch)."""

    kernel: str
    kargs: bytes
    buffers: tuple[Ref, ...]
    grid: tuple[int, int, int]
    threads: tuple[int, int, int]
    writes: tuple[int, ...] = ()


@dataclass
class Plan:
    """A lowered graph: dispatches, arena size, and where each output lives; `rows` is where
    a rows-mode graph's (slot, position) pairs go (None in sequence mode)."""

    dispatches: list[Dispatch]
    arena_bytes: int
    tokens: Ref
    step: Ref
    outputs: dict[str, tuple[Ref, tuple[int, ...], str]] = field(default_factory=dict)
    rows: Ref | None = None


class _Arena:
    """First-fit allocator of static offsets; `redzone` bytes after each block stay unused (the
    emulator checks them for stray writes)."""

    def __init__(self, start: int, redzone: int = 0):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted
        self.top = start
        self.redzone = redzone

    def alloc(self, nbytes: int) -> int:
        size = _up(max(nbytes, 1) + self.redzone, ALIGN)
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                self.free[i:i + 1] = [(off + size, sz - size)] if sz > size else []
                return off
        off, self.top = self.top, self.top + size
        return off

    def release(self, off: int, nbytes: int) -> None:
        size = _up(max(nbytes, 1) + self.redzone, ALIGN)
        self.free.append((off, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


class MetalLowering(MoeLowering, DeltaLowering):
    """Graph -> Plan. `kv` is the backend's KV spec and `kv_type` its cache element type."""

    # the mat-vec launch shape, for the mixins (moe.py): rows a threadgroup, its threads
    MV_ROWS, MV_THREADS = MV_NSG * MV_NR, 32 * MV_NSG

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

    # -- ops (one method per op of base.py) -------------------------------------------------
    def _get_rows(self, node) -> None:
        w, ids = node.args
        rows, cols = node.out.shape
        self._emit(f"kernel_get_rows_{_type_name(w)}",
                   [self._ref(w), self._ref(ids), self._ref(node.out)],
                   (rows,), _threads(-(-cols // 16)), (2,),
                   "kargs_get_rows", n_rows=rows, n_cols=cols, n_vocab=w.shape[0])

    def _rms_norm(self, node) -> None:
        x, w = node.args
        rows, cols = x.shape
        grp = node.attrs["group"]
        self._emit("kernel_rms_norm_f32",
                   [self._ref(x), self._ref(w if w is not None else x), self._ref(node.out)],
                   (rows * cols // grp,), _threads(grp), (2,),
                   "kargs_rms_norm", n_rows=rows, n_cols=cols, group=grp,
                   has_weight=int(w is not None), eps=node.attrs["eps"])

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

    def _binary(self, node, kernel: str) -> None:
        a, b = node.args
        n = int(np.prod(a.shape))
        nb = int(np.prod(b.shape))
        if n % nb:
            raise UnsupportedError(f"metal: {node.op} of shapes {a.shape} and {b.shape}")
        self._emit(kernel, [self._ref(a), self._ref(b), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_binary", n=n, b_period=nb)

    def _add(self, node) -> None:
        self._binary(node, "kernel_add_f32")

    def _mul(self, node) -> None:
        self._binary(node, "kernel_mul_f32")

    def _scale(self, node) -> None:
        (a,) = node.args
        n = int(np.prod(a.shape))
        self._emit("kernel_scale_f32", [self._ref(a), self._ref(node.out)],
                   (-(-n // 256),), 256, (1,), "kargs_binary", n=n, b_period=1,
                   s=node.attrs["s"])

    def _glu(self, node, kernel: str) -> None:
        gate, up = node.args
        n = int(np.prod(gate.shape))
        self._emit(kernel, [self._ref(gate), self._ref(up), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_unary", n=n)

    def _swiglu(self, node) -> None:
        self._glu(node, "kernel_swiglu_f32")

    def _geglu(self, node) -> None:
        self._glu(node, "kernel_geglu_f32")

    def _swiglu_oai(self, node) -> None:
        gate, up = node.args
        n = int(np.prod(gate.shape))
        self._emit("kernel_swiglu_oai_f32", [self._ref(gate), self._ref(up), self._ref(node.out)],
                   (-(-n // 256),), 256, (2,), "kargs_swiglu_oai", n=n,
                   alpha=node.attrs["alpha"], limit=node.attrs["limit"])

    def _rope(self, node) -> None:
        x, ff = node.args
        at = node.attrs
        hd = at["head_dim"]
        tp = _threads(hd // 2, 64)
        # rows mode: each row at its own position (rows.metal)
        self._emit("kernel_rope_rows_f32" if self.rows else "kernel_rope_f32",
                   [self.rows or self._step(), self._ref(x),
                    self._ref(ff if ff is not None else x), self._ref(node.out)],
                   (-(-(hd // 2) // tp), at["n_head"], x.shape[0]), tp, (3,),
                   "kargs_rope", n_rows=x.shape[0], n_head=at["n_head"], head_dim=hd,
                   n_rot=at["n_rot"], base=at["base"], freq_scale=at["freq_scale"],
                   neox=int(at["neox"]), has_freq_factors=int(ff is not None))

    def _cache(self, layer: int) -> tuple[Ref, Ref, int, int]:
        if self.kv is None:
            raise BackendError("metal: the KV cache is not initialised (call init_kv first)")
        ring, dim = self.kv.sizes[layer], self.kv.kv_dim[layer]
        # every slot's rows: the kernels add the slot's base (step.slot, or the row's slot)
        nb = self.kv.n_seq * ring * dim * KV_TYPES[self.kv_type]
        return Ref("k", 0, nb, layer), Ref("v", 0, nb, layer), ring, dim

    def _kv_store(self, node) -> None:
        k, v = node.args
        kc, vc, ring, dim = self._cache(node.attrs["layer"])
        rows = k.shape[0]
        tp = _threads(dim)
        # rows mode: each row into its own slot, at its own position (rows.metal)
        self._emit(f"kernel_kv_store_rows_{self.kv_type}" if self.rows
                   else f"kernel_kv_store_{self.kv_type}",
                   [self.rows or self._step(), self._ref(k), self._ref(v), kc, vc],
                   (-(-dim // tp), rows), tp, (),
                   "kargs_kv_store", n_rows=rows, kv_dim=dim, ring=ring)

    def _rope_kv_store(self, node) -> None:
        q, k, v, ff = node.args
        at = node.attrs
        kc, vc, ring, dim = self._cache(at["layer"])
        hd = at["head_dim"]
        if k.cols != dim or v.cols != dim or at["k_n_head"] * hd != dim:
            raise UnsupportedError(f"metal: kv_store of {k.cols} values into a cache of {dim}")
        tp = _threads(hd // 2, 64)
        rows = q.shape[0]
        self._emit(f"kernel_rope_kv_store_{self.kv_type}",
                   [self._step(), self._ref(q), self._ref(k), self._ref(v),
                    self._ref(ff if ff is not None else q), self._ref(node.out), kc, vc],
                   (-(-(hd // 2) // tp), at["n_head"] + at["k_n_head"], rows), tp, (5,),
                   "kargs_rope_kv_store", n_rows=rows, n_head=at["n_head"],
                   k_n_head=at["k_n_head"], head_dim=hd, n_rot=at["n_rot"], base=at["base"],
                   freq_scale=at["freq_scale"], neox=int(at["neox"]),
                   has_freq_factors=int(ff is not None), kv_dim=dim, ring=ring)

    def _attention(self, node) -> None:
        (q,) = node.args
        at = node.attrs
        d, nh = at["head_dim"], at["n_head"]
        if d % 8 or d > ATTN_MAX_D or nh % at["n_kv_head"]:
            raise UnsupportedError(f"metal: attention with head_dim {d} (needs a multiple of 8 "
                                   f"up to {ATTN_MAX_D}) and {nh}/{at['n_kv_head']} heads")
        kc, vc, ring, _ = self._cache(at["layer"])
        rows = q.shape[0]
        sinks = at.get("sinks")
        sk = self._vec(sinks, q)  # gpt-oss's sink logits (q's buffer, never read, without)
        f = {"n_rows": rows, "n_head": nh, "n_kv_head": at["n_kv_head"], "head_dim": d,
             "scale": at["scale"], "softcap": at["softcap"], "window": at["window"], "ring": ring,
             "has_sinks": int(sinks is not None)}
        if rows >= AP_Q and not self.rows:
            self._emit(f"kernel_attn_prefill_{self.kv_type}",
                       [self._step(), self._ref(q), kc, vc, self._ref(node.out), sk],
                       (-(-rows // AP_Q), nh), 32, (4,), "kargs_attention", **f)
            return
        # split the visible positions so that a long context still fills the GPU; in rows
        # mode (rows.metal) each row over its own slot's cache, at its own position
        visible = min(self.kv.n_ctx, at["window"] or self.kv.n_ctx)
        ns = max(1, min(ATTN_MAX_SPLITS, -(-visible // ATTN_SPLIT)))
        nb = rows * nh * ns * (d + 2) * 4
        part = Ref("arena", self.arena.alloc(nb), nb)
        kind = "rows" if self.rows else "decode"
        self._emit(f"kernel_attn_{kind}_{self.kv_type}",
                   [self.rows or self._step(), self._ref(q), kc, vc, part],
                   (ns, nh, rows), 32, (4,), "kargs_attention", **f)
        self._emit("kernel_attn_reduce_f32", [part, self._ref(node.out), sk], (nh, rows), 32,
                   (1,), "kargs_attn_reduce", n_rows=rows, n_head=nh, head_dim=d, n_splits=ns,
                   has_sinks=f["has_sinks"])
        self.arena.release(part.offset, nb)

    def _argmax(self, node) -> None:
        (x,) = node.args
        rows, cols = x.shape
        self._emit("kernel_argmax_f32", [self._ref(x), self._ref(node.out)],
                   (rows,), _threads(cols), (1,), "kargs_argmax", n_rows=rows, n_cols=cols)

    # -- recurrent-model ops (RWKV; metal/rwkv.metal) ----------------------------------------
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

    def _vec(self, w, like: Value) -> Ref:
        """A weight read element-wise: f32 (1-D weights are made f32 at load)."""
        if w is None:
            return self._ref(like)  # bound, never read
        if w.handle.type != GGMLType.F32:
            raise UnsupportedError(f"metal: tensor {w.name!r} of type {w.handle.type.name} is "
                                   f"used element-wise; only f32 is read that way")
        return self._ref(w)

    def _groups(self, node, group: int) -> tuple[int, int]:
        rows, cols = node.args[0].shape
        if cols % group:
            raise UnsupportedError(f"metal: {node.op} over groups of {group} of rows of {cols}")
        return rows, cols

    def _layer_norm(self, node) -> None:
        x, w, b = node.args
        g = node.attrs["group"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_layer_norm_f32",
                   [self._ref(x), self._vec(w, x), self._vec(b, x), self._ref(node.out)],
                   (rows * cols // g,), _threads(g), (3,), "kargs_layer_norm", n_rows=rows,
                   n_cols=cols, group=g, has_weight=int(w is not None),
                   has_bias=int(b is not None), eps=node.attrs["eps"])

    def _l2_norm(self, node) -> None:
        g = node.attrs["group"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_l2_norm_f32", [self._ref(node.args[0]), self._ref(node.out)],
                   (rows * cols // g,), _threads(g), (1,), "kargs_rwkv", n_rows=rows,
                   n_cols=cols, group=g, eps=node.attrs["eps"])

    def _wkv7_bonus(self, node) -> None:
        r, k, v, r_k = node.args
        g = node.attrs["head_size"]
        rows, cols = self._groups(node, g)
        self._emit("kernel_wkv7_bonus_f32",
                   [self._ref(r), self._ref(k), self._ref(v), self._vec(r_k, r),
                    self._ref(node.out)], (rows * cols // g,), _threads(g), (4,), "kargs_rwkv",
                   n_rows=rows, n_cols=cols, group=g)

    def _unary(self, node) -> None:
        (x,) = node.args
        n = int(np.prod(x.shape))
        self._emit(f"kernel_unary_{node.attrs['fn']}_f32", [self._ref(x), self._ref(node.out)],
                   (-(-n // 256),), 256, (1,), "kargs_unary", n=n)

    def _lerp(self, node) -> None:
        a, b, mu, mu_v = node.args
        at = node.attrs
        rows, d = a.shape
        n = rows * d
        self._emit("kernel_lerp_f32",
                   [self._ref(a), self._ref(b), self._vec(mu, a),
                    self._ref(mu_v if mu_v is not None else a), self._ref(node.out)],
                   (-(-n // 256),), 256, (4,), "kargs_lerp", n_rows=rows, n_cols=d,
                   has_mu=int(mu is not None), mu_off=at["mu_row"] * d,
                   has_mu_v=int(mu_v is not None), mu_v_cols=mu_v.cols if mu_v is not None else 0,
                   mu_col=at["mu_col"])

    def _token_shift(self, node) -> None:
        (x,) = node.args
        rows, d = x.shape
        tp = _threads(d)
        kernel, where = self._state_kernel("token_shift")
        self._emit(kernel, [self._ref(x), self._state(node, d), self._ref(node.out), *where],
                   (-(-d // tp),), tp, (2,), "kargs_rwkv", n_rows=rows, n_cols=d)

    def _wkv(self, node, name: str) -> None:
        s = node.attrs["head_size"]
        rows, cols = self._groups(node, s)
        if s > WKV_MAX or WKV_TG % s:
            raise UnsupportedError(f"metal: {node.op} with head size {s} (a power of two up to "
                                   f"{WKV_MAX} is supported)")
        ins = [self._vec(a, node.args[0]) if isinstance(a, Weight) else self._ref(a)
               for a in node.args]
        kernel, where = self._state_kernel(name)
        bufs = ins + [self._state(node, cols * s), self._ref(node.out)]
        self._emit(kernel, bufs + where, (-(-cols // WKV_TG),), WKV_TG, (len(bufs) - 1,),
                   "kargs_rwkv", n_rows=rows, n_cols=cols, group=s)

    def _wkv6(self, node) -> None:
        self._wkv(node, "wkv6")

    def _wkv7(self, node) -> None:
        self._wkv(node, "wkv7")

    def _mul_mat_blocks(self, node) -> None:
        x, w = node.args
        nb, m, k = w.shape
        rows = x.shape[0]
        if k % 16:
            raise UnsupportedError(f"metal: mul_mat_blocks with blocks of {k} columns (a "
                                   f"multiple of 16 is needed) for {w.name!r}")
        self._emit(f"kernel_mul_mat_blocks_{_type_name(w)}_f32",
                   [self._ref(w), self._ref(x), self._ref(node.out)],
                   (-(-nb * m // MB_NSG), rows), 32 * MB_NSG, (2,), "kargs_mul_mat_blocks",
                   M=rows, n_blocks=nb, m=m, k=k, w_row_words=row_bytes(w.type, k) // 4)


def _type_name(w: Weight) -> str:
    t = w.handle.type
    if t not in TYPE_NAMES:
        raise UnsupportedError(f"metal: tensor {w.name!r} has type {t.name}, which no kernel reads")
    return TYPE_NAMES[t]
