"""Lowering of a Graph to a fixed list of WebGPU dispatches, and its replay.

`compile` does all the work once: activation buffers (a value's buffer is reused by later values
once its last reader has run), kernel arguments (all in one uniform buffer, each at its own
aligned offset), pipelines, bind groups and the dispatch list. `run` writes the token ids and
the 16-byte step buffer (kargs_step), encodes the fixed list into one command buffer, submits it
and reads back only the graph's outputs (DESIGN.md, principle 5). Kernels read the step as
read-only storage, not as a uniform: greedy decoding advances it on the device between steps of
one compute pass, and a uniform rewritten in the pass cost the 1B model ~1.5% per token.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import kargs
from ...errors import ContextOverflowError, UnsupportedError
from ..base import Graph, Program, Value, Weight
from ..fuse import fuse, reader_counts
from . import matmul_shapes as shapes
from .attention import AttentionOps
from .delta import DeltaOps
from .device import Device
from .elementwise import EW_WG, ElementwiseOps
from .loops import DeviceLoops
from .matmul import MatmulOps
from .matmul_shapes import MV_MAX_M
from .moe import MoeOps  # mixture of experts
from .rwkv import RwkvOps  # RWKV: the recurrent-model ops' lowering

try:  # wgpu-native's raw C entry points: a dispatch costs ~0.5 us through them instead of ~8
    from wgpu.backends.wgpu_native._api import ffi as _ffi
    from wgpu.backends.wgpu_native._api import lib as _lib
except ImportError:  # another wgpu build: the public API
    _ffi = _lib = None

def _nbytes(v: Value) -> int:
    return math.prod(v.shape) * 4


class WebGPUProgram(MoeOps, MatmulOps, AttentionOps, RwkvOps, DeltaOps, ElementwiseOps,
                    DeviceLoops, Program):
    """A graph compiled for one WebGPU device; run() replays it."""

    def __init__(self, backend: Device, graph: Graph):
        self.be = backend
        self.g = graph
        self.n = graph.n_tokens
        self._own: list[Any] = []  # buffers this program allocated
        self._build()

    def _build(self) -> None:
        backend, graph = self.be, self.g
        self._kv_version = backend.kv_version  # bind groups hold the KV cache's buffers
        self._loops: dict[str, Any] | None = None
        self._pctl = None  # the persistent step's counters (loops.py), made on first use
        self._rows_sampler = self._rows_stage = None  # rows mode's device sampling (loops.py)
        self._rows_chain = None  # run_rows_chain's buffers (loops.py)
        self._xq = None  # quantize_x's scratch buffer (matmul.py), made on first use
        self._xq_holds = None  # (x, up, norm weight, eps) of what the scratch holds
        self._xq_id = None  # the experts' quantized x (moe.py), made on first use
        self._xq_id_holds = None  # (value id, buffer) of the x last quantized into it
        # (pipeline, entries, grid, when) until bind groups exist; `when` is None for a
        # dispatch of every step, else the list it belongs to ("short": steps at which at most
        # attn_direct_max positions are visible, "long": the others; attention.py)
        self._specs: list[tuple] = []
        self.attn_direct_max: int | None = None
        self._args = bytearray()
        with backend.errors("compiling a graph"):
            self.tokens = self._buf(self.n * 4, "STORAGE|COPY_DST|COPY_SRC", "tokens")
            # kernels read it as storage; greedy decoding's last dispatch also writes it
            self.step = self._buf(16, "STORAGE|COPY_DST", "step")
            # rows mode: each row's (slot, position), read by the ops that depend on them
            self.rows = (self._buf(8 * self.n, "STORAGE|COPY_DST", "rows") if graph.rows
                         else None)
            self.nodes = (fuse(graph.nodes, graph.outputs.values(), MV_MAX_M, rows=graph.rows,
                               rows_rope_kv=shapes.ROWS_FUSE, moe_res=True,
                               head_norm=True) if backend.fuse
                          else list(graph.nodes))
            self._plan()
            # how many nodes read each value (a graph output counting as one), for the plans
            self.reads = reader_counts(self.nodes, graph.outputs.values())
            self.rows_normed = self._rows_normed()  # norm output id -> norm, readers
            self.moe_glu = self._moe_glu()  # swiglu outputs read by an expert quantize_x
            self.id_normed = self._id_normed()  # norms read by a router and its experts
            self.moe_glu_id = self._moe_glu_id()  # gate node id -> gate, up, swiglu
            self.prequantized_id = {t[2].out.id for t in self.moe_glu_id.values()}
            self.prequantized, self.glu_multi = self._prequantized()
            self.prenorm = self._prenormed()  # producer id -> the reader it writes x for
            self.prenormed = {id(n) for n in self.prenorm.values()}
            self.bias_adds = self._bias_adds()  # mat-vec output id -> the bias add it does
            # nodes whose work another node's dispatch does (the second product, the slices,
            # the bias adds)
            self.skip = {id(n) for k, t in self.moe_glu_id.items()
                         for n in (*t[:2], *t[3]) if n is not None and id(n) != k}
            self.skip |= {id(a) for a in self.bias_adds.values()}
            for node in self.nodes:
                if id(node) not in self.skip:
                    getattr(self, "_op_" + node.op)(node)
            self._finish()
            self.outputs = {}
            for name, v in graph.outputs.items():
                stage = self._buf(_nbytes(v), "MAP_READ|COPY_DST", f"out {name}", binding=False)
                self.outputs[name] = (self.buf(v), stage, v)

    # -- buffers -------------------------------------------------------------------------------
    def _buf(self, size: int, usage: str, label: str, binding: bool = True):
        b = self.be.buffer(size, usage, label, binding)
        self._own.append(b)
        return b

    def _plan(self) -> None:
        """Give every value a slot; a slot is reused once all readers of its value have run.
        Graph outputs keep theirs. Slot sizes are the largest value they hold."""
        g = self.g
        last: dict[int, int] = {}
        for i, node in enumerate(self.nodes):
            for a in node.args:
                if isinstance(a, Value):
                    last[a.id] = i
        keep = {v.id for v in g.outputs.values()}
        sizes: list[int] = []
        free: list[int] = []
        slot_of: dict[int, int] = {}
        scratch_of: dict[int, int] = {}

        def take(need: int) -> int:  # the smallest free slot that fits, else the largest grown
            fits = [s for s in free if sizes[s] >= need]
            if fits:
                s = min(fits, key=lambda s: sizes[s])
            elif free:
                s = max(free, key=lambda s: sizes[s])
                sizes[s] = need
            else:
                s = len(sizes)
                sizes.append(need)
            if s in free:
                free.remove(s)
            return s

        for i, node in enumerate(self.nodes):
            unread = []  # freed after all of the node's outputs have their own slots
            for v in (node.out, *node.attrs.get("also_out", ())):
                if v is None:
                    continue
                s = slot_of[v.id] = take(_nbytes(v))
                if v.id not in keep and v.id not in last:
                    unread.append(s)
            need = self._scratch_bytes(node)
            if need:  # held while the node runs: not one of its inputs' or outputs' slots
                unread.append(take(need))
                scratch_of[node.out.id] = unread[-1]
            free += unread
            for a in node.args:
                if (isinstance(a, Value) and a.id in slot_of and last.get(a.id) == i
                        and a.id not in keep and slot_of[a.id] not in free):
                    free.append(slot_of[a.id])
        self.slots = [self._buf(s, "STORAGE|COPY_SRC|COPY_DST", f"act{i}")
                      for i, s in enumerate(sizes)]
        self.slot_of = slot_of
        self.scratch_of = scratch_of

    def buf(self, v: Value | Weight):
        if isinstance(v, Weight):
            return self.be.vector(v)
        if v is self.g.tokens:
            return self.tokens
        return self.slots[self.slot_of[v.id]]

    # -- dispatches ----------------------------------------------------------------------------
    def _arg(self, *structs: tuple[str, dict]) -> tuple[str, int, int]:
        """Kernel arguments (kargs structs, concatenated) placed in the uniform buffer."""
        data = b"".join(kargs.pack(name, **fields) for name, fields in structs)
        align = self.be.uniform_align
        off = -(-len(self._args) // align) * align
        self._args += bytes(off - len(self._args)) + data
        return ("args", off, len(data))

    def _dispatch(self, file: str, entry: str, bindings: dict[int, Any], grid: tuple[int, ...],
                  wtype: str | None = None, consts: dict | None = None,
                  f16_tile: bool = False, variant: str | None = None,
                  when: str | None = None) -> None:
        p = self.be.pipeline(file, entry, wtype, consts, f16_tile, variant)
        gx, gy, gz = (list(grid) + [1, 1])[:3]
        cap = self.be.limits.get("max-compute-workgroups-per-dimension", 65535)
        if max(gx, gy, gz) > cap:
            raise UnsupportedError(f"webgpu: {entry} needs a grid of {grid}, over the device's "
                                   f"{cap} per dimension")
        self._specs.append((p, bindings, (gx, gy, gz), when))

    def _grid1(self, threads: int, wg: int = EW_WG) -> tuple[int, int]:
        """A 2-D grid of at least `threads` threads (kernels rebuild the linear index)."""
        n = max(1, -(-threads // wg))
        x = min(n, 32768)
        return x, -(-n // x)

    def _finish(self) -> None:
        ubuf = self._buf(max(16, len(self._args)), "UNIFORM|COPY_DST", "kernel args")
        if self._args:
            self.be.queue.write_buffer(ubuf, 0, bytes(self._args)
                                       + bytes(-len(self._args) % 4))
        made = [((p, self._bind_group(p, bindings, ubuf), grid), when)
                for p, bindings, grid, when in self._specs]
        # kept for the persistent step (persist.py), which merges dispatches by their bindings
        self._ubuf, self._made = ubuf, self._specs
        self._specs = []
        # one list per kind of step (the dispatches of every step, and those of its kind)
        kinds = ("short", "long") if self.attn_direct_max is not None else ("short",)
        self._lists = {}
        for kind in kinds:
            d = [x for x, when in made if when in (None, kind)]
            self._lists[kind] = (d, self._raw_list(d))
        self.dispatches, self._raw = self._lists["short"]

    def _bind_group(self, p, bindings: dict[int, Any], ubuf=None):
        """Pipeline p's bind group: {binding: a buffer (bound whole), or ("args", offset, size)
        of the kernel arguments' buffer ubuf}."""
        entries = []
        for b, res in sorted(bindings.items()):
            if isinstance(res, tuple):
                res = {"buffer": ubuf, "offset": res[1], "size": res[2]}
            else:
                res = {"buffer": res}
            entries.append({"binding": b, "resource": res})
        return self.be.device.create_bind_group(layout=p.get_bind_group_layout(0), entries=entries)

    def _kind(self, pos: int) -> str:
        """The dispatch list of a one-token step at position pos (see _specs)."""
        if self.attn_direct_max is None or pos + 1 <= self.attn_direct_max:
            return "short"
        return "long"

    @staticmethod
    def _raw_list(dispatches) -> list[tuple]:
        """(pipeline handle or None when unchanged, bind group handle, x, y, z) per dispatch:
        what _record hands to wgpu-native, with nothing left to look up per token."""
        raw, last = [], None
        for p, bg, (x, y, z) in dispatches:
            raw.append((p._internal if p is not last else None, bg._internal, x, y, z))
            last = p
        return raw

    # -- running -------------------------------------------------------------------------------
    def _ready(self, pos: int, n: int, slot: int = 0) -> None:
        """Checks that positions pos..pos + n - 1 fit the context and that the slot exists, and
        binds the KV cache anew where init_kv replaced it (run and run_greedy)."""
        spec = self.be.spec
        if pos < 0 or (spec is not None and pos + n > spec.n_ctx):
            raise ContextOverflowError(f"positions {pos}..{pos + n - 1} do not fit the "
                                       f"context of {spec.n_ctx if spec else 0}")
        if not 0 <= slot < (spec.n_seq if spec is not None else 1):
            raise ValueError(f"slot {slot} is not one of the cache's "
                             f"{spec.n_seq if spec is not None else 1}")
        if self._kv_version != self.be.kv_version:
            self.release()
            self._build()

    def run(self, tokens: np.ndarray, pos: int, slot: int = 0) -> dict[str, np.ndarray]:
        if self.g.rows:
            raise ValueError("a rows-mode graph runs with run_rows")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if tokens.shape[0] != self.n:
            raise ValueError(f"this program runs {self.n} tokens, got {tokens.shape[0]}")
        self._ready(pos, self.n, slot)
        with self.be.errors("running a graph"):
            self.be.queue.write_buffer(self.tokens, 0, tokens)
            self.be.queue.write_buffer(self.step, 0, np.array([pos, self.n, pos + self.n, slot],
                                                              np.uint32))
            return self._submit_read(self._kind(pos + self.n - 1))

    def run_rows(self, tokens: np.ndarray, slots: np.ndarray,
                 positions: np.ndarray) -> dict[str, np.ndarray]:
        self._rows_ready(tokens, slots, positions)
        with self.be.errors("running a graph"):
            return self._submit_read(self._kind(int(np.max(positions))))

    def _rows_ready(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray) -> None:
        """Checks a rows-mode run's arguments and writes its tokens and rows."""
        if not self.g.rows:
            raise ValueError("run_rows needs a rows-mode graph (Graph.rows)")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        slots = np.asarray(slots, np.int64).reshape(-1)
        positions = np.asarray(positions, np.int64).reshape(-1)
        if not tokens.shape[0] == len(slots) == len(positions) == self.n:
            raise ValueError(f"this program runs {self.n} rows, got {tokens.shape[0]} tokens, "
                             f"{len(slots)} slots and {len(positions)} positions")
        for s, p in zip(slots, positions):
            self._ready(int(p), 1, int(s))
        with self.be.errors("running a graph"):
            q = self.be.queue
            q.write_buffer(self.tokens, 0, tokens)
            q.write_buffer(self.rows, 0, np.stack([slots, positions], 1).astype(np.uint32))
            q.write_buffer(self.step, 0, np.array([0, self.n, 0, 0], np.uint32))

    def _submit_read(self, kind: str) -> dict[str, np.ndarray]:
        """Record the step list of `kind`, copy the outputs out, submit, read them back."""
        be = self.be
        q = be.queue
        enc = be.device.create_command_encoder()
        dispatches, raw = self._lists[kind]
        self._record(enc, raw, dispatches)
        for src, stage, v in self.outputs.values():
            enc.copy_buffer_to_buffer(src, 0, stage, 0, _nbytes(v))
        q.submit([enc.finish()])
        out = {}
        for name, (_, stage, v) in self.outputs.items():
            stage.map_sync("READ")
            data = stage.read_mapped(0, _nbytes(v), copy=True)
            stage.unmap()
            dt = np.int32 if v.dtype == "i32" else np.float32
            out[name] = np.frombuffer(data, dt).reshape(v.shape).copy()
        return out

    def _record(self, enc, raw: list[tuple], dispatches: list[tuple], repeat: int = 1) -> None:
        """One compute pass of the dispatch list, `repeat` times. Per-token cost is all here (a
        step is re-encoded every token: command buffers are single-use), so the loop calls
        wgpu-native's C functions directly; validation happens when the pass ends, as through
        wgpu-py."""
        cp = enc.begin_compute_pass()
        if _lib is not None:
            c, null = cp._internal, _ffi.NULL
            set_p = _lib.wgpuComputePassEncoderSetPipeline
            set_bg = _lib.wgpuComputePassEncoderSetBindGroup
            go = _lib.wgpuComputePassEncoderDispatchWorkgroups
            for _ in range(repeat):
                for p, bg, x, y, z in raw:
                    if p is not None:
                        set_p(c, p)
                    set_bg(c, 0, bg, 0, null)
                    go(c, x, y, z)
        else:
            last = None
            for _ in range(repeat):
                for p, bg, (x, y, z) in dispatches:
                    if p is not last:
                        cp.set_pipeline(p)
                        last = p
                    cp.set_bind_group(0, bg)
                    cp.dispatch_workgroups(x, y, z)
        cp.end()

    def poison(self) -> None:
        """Fill every activation buffer with NaN (tests: a kernel that skips a write shows)."""
        with self.be.errors("poisoning buffers"):
            for b in self.slots:
                self.be.queue.write_buffer(b, 0, np.full(b.size // 4, np.nan, np.float32))

    def release(self) -> None:
        for b in self._own:
            self.be.free(b)
        self._own = []
        self.dispatches = []
        self._raw = []
        self._lists = {}
        self._loops = None
        self._pctl = None
        self._made = []
        if self._rows_sampler is not None:
            self._rows_sampler.close()
            self._rows_sampler = self._rows_stage = None
        self._rows_chain = None
