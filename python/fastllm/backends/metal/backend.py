"""The Metal backend (Apple Silicon): graph nodes become Metal compute dispatches.

Three layers:
- `MetalLowering` (lowering.py) turns a recorded `Graph` into a fixed list of `Dispatch`es
  (kernel name, kargs bytes, buffer references, grid) over one activation arena with static
  offsets. It knows the kernels of metal/*.metal and nothing of the device.
- A runtime executes dispatch lists: `_NativeRuntime` drives the `fastllm._metal` extension
  (one command buffer per run, encoded in C++); the tests drive the same lowering through an
  emulator runtime (tests/metal/mslemu_runtime.py) that runs the kernels on the CPU.
- `MetalBackend` / `_MetalProgram`: weights, KV cache, arena; a program is recorded once and per
  run only the token ids and the `kargs_step` header in the arena change (DESIGN.md, principle 5).
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import kargs
from ...errors import BackendError, ContextOverflowError, UnsupportedError
from ...gguf import TensorInfo
from ...quants import GGMLType
from ...sampling import (
    DEVICE_LAST_N,
    DEVICE_TOP_K,
    device_args,
    device_chunks,
    device_kargs,
    penalty_window,
)
from ..base import Backend, Graph, KVSpec, Program, Weight
from .lowering import (  # noqa: F401 (MM_MIN_ROWS: tests use it from here)
    KV_TYPES,
    MM_MIN_ROWS,
    SAMPLE_CHUNK,
    SAMPLE_NK,
    SAMPLE_PARTS,
    SAMPLE_TG,
    TYPE_NAMES,
    Dispatch,
    MetalLowering,
    Plan,
    Ref,
    _threads,
    _up,
)
from .rows_loops import RowsLoops

# Bytes a command buffer of decode steps may read (weights and KV rows): about 60 ms at an M1's
# 68 GB/s, so a chain of steps stays far below macOS's GPU watchdog whatever the model's size
# (one step of an 8B Q4_K_M model already reads ~4.9 GB: one step per command buffer), while a
# small model still runs dozens of steps per command buffer.
STEP_BUFFER_BYTES = 4 << 30

# ------------------------------------------------------------------------------------------
# runtime over the native extension


class _NativeRuntime:
    """fastllm._metal: device buffers, pipelines by kernel name, one command buffer per run."""

    def __init__(self, metallib: str | None = None):
        try:
            from ... import _metal
        except ImportError as e:
            raise BackendError(f"metal: the native extension fastllm._metal is not available "
                               f"({e}); it is built only in the macOS arm64 wheel - use "
                               f"backend='webgpu' or 'reference' elsewhere") from None
        path = metallib or os.environ.get("FASTLLM_METALLIB") or str(
            Path(_metal.__file__).resolve().parent / "fastllm.metallib")
        if not os.path.exists(path):
            raise BackendError(f"metal: kernel library {path} not found (reinstall the macOS "
                               f"arm64 wheel, or point FASTLLM_METALLIB at a fastllm.metallib)")
        try:
            self.dev = _metal.Device(path)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None
        self.name = self.dev.name
        self.redzone = 0
        self._pipes: dict[str, Any] = {}
        # id(file mapping) -> (mapping, [(start, length, buffer)] windows wrapped in place, or
        # the reason Metal cannot wrap it)
        self._maps: dict[int, tuple[Any, list | str]] = {}

    def buffer(self, nbytes: int):
        return self.dev.buffer(max(int(nbytes), 16))

    @staticmethod
    def host(buf) -> np.ndarray:
        return np.frombuffer(buf, dtype=np.uint8)

    def weight(self, data: np.ndarray) -> tuple[Any, int]:
        """(buffer, offset) holding data. A tensor of a mapped file is used in place: the file is
        wrapped whole, or in windows of the device's largest buffer when it is larger, and never
        copied whole. When Metal refuses to wrap a file (the warning names why) its tensors are
        copied one by one; memory that is not a file mapping is copied."""
        root = data
        while isinstance(root.base, np.ndarray):
            root = root.base
        start = root.__array_interface__["data"][0]
        # a whole-file np.memmap starts on a page
        if isinstance(root.base, mmap.mmap) and start % mmap.PAGESIZE == 0:
            got = self._in_place(root, data.__array_interface__["data"][0] - start, data.nbytes)
            if got is not None:
                return got
        return self.dev.wrap(np.ascontiguousarray(data), False), 0

    def _in_place(self, root: np.ndarray, off: int, n: int) -> tuple[Any, int] | None:
        """(buffer, offset) of bytes off..off+n of the mapping root, from a window wrapped in
        place; None when Metal cannot wrap the mapping."""
        _, windows = self._maps.setdefault(id(root), (root, []))
        if isinstance(windows, str):
            return None
        for start, length, buf in windows:
            if start <= off and off + n <= start + length:
                return buf, off - start
        page = mmap.PAGESIZE
        limit = self.dev.max_buffer_length // page * page
        start = 0 if root.nbytes <= limit else off // page * page
        if off + n - start > limit:
            raise BackendError(f"metal: a tensor of {n} bytes is larger than the device's largest "
                               f"buffer ({self.dev.max_buffer_length} bytes)")
        length = min(limit, root.nbytes - start)
        try:
            buf = self.dev.wrap(root[start:start + length], True)
        except RuntimeError as e:  # MetalError: Metal does not map this file
            name = getattr(root, "filename", None) or "a weight file"
            warnings.warn(f"metal: {name} cannot be used in place ({e}); its tensors are "
                          f"copied one by one", stacklevel=4)
            self._maps[id(root)] = (root, str(e))
            return None
        windows.append((start, length, buf))
        return buf, off - start

    def record(self, items: list[tuple[Dispatch, list[tuple[Any, int, int]]]]):
        cmds = []
        for d, bound in items:
            pipe = self._pipes.get(d.kernel)
            if pipe is None:
                try:
                    pipe = self._pipes[d.kernel] = self.dev.pipeline(d.kernel)
                except RuntimeError as e:
                    raise BackendError(f"metal: {e}") from None
            cmds.append((pipe, d.kargs, [(b, off) for b, off, _ in bound], d.grid, d.threads))
        try:
            return self.dev.record(cmds)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None

    def run(self, rec) -> None:
        try:
            self.dev.run(rec)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None

    def run_steps(self, recs: list, repeat: int) -> None:
        """The recordings in turn, `repeat` times, in one command buffer."""
        try:
            self.dev.run_steps(list(recs), int(repeat))
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None


# ------------------------------------------------------------------------------------------
# backend


class _MetalWeight:
    """Where a weight's bytes live: `buffer` from `offset`, in type `type` (1-D weights are kept
    as f32: the element-wise and norm kernels read f32)."""

    def __init__(self, buffer, offset: int, nbytes: int, type: GGMLType):
        self.buffer, self.offset, self.nbytes, self.type = buffer, offset, nbytes, type


class _MetalProgram(RowsLoops, Program):
    def __init__(self, backend: MetalBackend, graph: Graph):
        self.b, self.n = backend, graph.n_tokens
        self.plan = MetalLowering(graph, backend.spec, backend.kv_type,
                                  backend.rt.redzone, backend.fuse).lower()
        self._rec = None
        self._gen = -1
        # decoding on the device: the token history, the sampling numbers and candidates
        self._hist, self._hist_cap = None, 0
        self._uniforms = self._recent = self._cands = None

    def _bind(self, ref: Ref, arena) -> tuple[Any, int, int]:
        b = self.b
        if ref.kind == "arena":
            return arena, ref.offset, ref.nbytes
        if ref.kind == "weight":
            return ref.key.buffer, ref.offset, ref.nbytes
        if ref.kind == "state":  # RWKV: a recurrent state buffer, by name
            return b.state[ref.key], ref.offset, ref.nbytes
        return (b.k if ref.kind == "k" else b.v)[ref.key], ref.offset, ref.nbytes

    def _recorded(self):
        """The arena, with the step recorded over it (again when it or the cache moved)."""
        b = self.b
        arena = b._arena(self.plan.arena_bytes)
        if self._gen != b._gen:
            self._rec = b.rt.record([(d, [self._bind(r, arena) for r in d.buffers])
                                     for d in self.plan.dispatches])
            self._gen = b._gen
        return arena

    def _write_inputs(self, tokens: np.ndarray, pos: int, slot: int = 0) -> None:
        """The step (kargs_step at the arena's start) and the token ids, in shared memory."""
        host = self.b._host
        host[:16] = np.frombuffer(kargs.pack("kargs_step", pos=pos, n_tokens=self.n,
                                             n_kv=pos + self.n, slot=slot), np.uint8)
        t = self.plan.tokens
        host[t.offset:t.offset + t.nbytes] = tokens.view(np.uint8)

    def _check_slot(self, slot: int) -> int:
        n_seq = self.b.spec.n_seq if self.b.spec is not None else 1
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) \
                or not 0 <= slot < n_seq:
            raise ValueError(f"slot {slot!r} is not one of the cache's {n_seq} (0..{n_seq - 1})")
        return int(slot)

    def run(self, tokens: np.ndarray, pos: int, slot: int = 0) -> dict[str, np.ndarray]:
        b = self.b
        if self.plan.rows is not None:
            raise ValueError("a rows-mode graph runs with run_rows")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if tokens.shape[0] != self.n:
            raise ValueError(f"program for {self.n} tokens run with {tokens.shape[0]}")
        if b.spec is not None and pos + self.n > b.spec.n_ctx:
            raise ContextOverflowError(f"positions {pos}..{pos + self.n - 1} do not fit the "
                                       f"context of {b.spec.n_ctx}")
        slot = self._check_slot(slot)
        self._recorded()
        self._write_inputs(tokens, pos, slot)
        b.rt.run(self._rec)
        return self._read_outputs()

    def run_rows(self, tokens: np.ndarray, slots: np.ndarray,
                 positions: np.ndarray) -> dict[str, np.ndarray]:
        """A rows-mode graph: row r is token tokens[r] of the sequence in slot slots[r] at
        position positions[r] (the rows' pairs go into the arena beside the token ids)."""
        self._rows_inputs(tokens, slots, positions)
        self.b.rt.run(self._rec)
        return self._read_outputs()

    def _rows_inputs(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                     n_steps: int = 1) -> None:
        """Check a rows-mode run's arguments (n_steps steps from positions: each row's last
        position inside the context) and write them into the arena, recorded."""
        b = self.b
        rows = self.plan.rows
        if rows is None:
            raise ValueError("run_rows needs a rows-mode graph (Graph.rows)")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        slots = np.asarray(slots, np.int64).reshape(-1)
        positions = np.asarray(positions, np.int64).reshape(-1)
        if not tokens.shape[0] == len(slots) == len(positions) == self.n:
            raise ValueError(f"this program runs {self.n} rows, got {tokens.shape[0]} tokens, "
                             f"{len(slots)} slots and {len(positions)} positions")
        for s in slots:
            self._check_slot(int(s))
        n_ctx = b.spec.n_ctx if b.spec is not None else 0
        bad = [int(p) for p in positions if not 0 <= p <= n_ctx - n_steps]
        if bad:
            what = "do" if n_steps == 1 else f"and the {n_steps - 1} after them do"
            raise ContextOverflowError(f"positions {bad} {what} not fit the context of {n_ctx}")
        self._recorded()
        self._write_inputs(tokens, 0)
        pairs = np.stack([slots, positions], 1).astype(np.uint32)
        b._host[rows.offset:rows.offset + rows.nbytes] = pairs.reshape(-1).view(np.uint8)

    def _read_outputs(self) -> dict[str, np.ndarray]:
        host, out = self.b._host, {}
        for name, (ref, shape, dtype) in self.plan.outputs.items():
            dt = np.int32 if dtype == "i32" else np.float32
            out[name] = host[ref.offset:ref.offset + ref.nbytes].view(dt).reshape(shape).copy()
        return out

    def run_greedy(self, n_steps: int, first_token: int, pos: int, slot: int = 0) -> list[int]:
        """Greedy decoding on the device (as the WebGPU backend's): first_token goes in at
        position pos; each step ends with kernel_argmax_greedy, which writes the step's token
        as the next step's input and into a history buffer and moves the step on, so all
        n_steps run in one command buffer and only the history is read back. Returns the
        tokens produced; the last one is not yet in the KV cache."""
        if n_steps < 1:
            return []
        ref, cols = self._loop_check(n_steps, pos, slot)
        tail = Dispatch("kernel_argmax_greedy",
                        kargs.pack("kargs_argmax", n_rows=1, n_cols=cols, pos0=pos),
                        (ref, self.plan.tokens, self.plan.step), (1, 1, 1),
                        (_threads(cols), 1, 1))
        return self._loop(n_steps, first_token, pos, slot, [(tail, [None] * 3 + ["hist"])])

    def run_sampled(self, n_steps: int, first_token: int, pos: int, chain: dict[str, float],
                    uniforms: np.ndarray, recent: Sequence[int] = (), slot: int = 0) -> list[int]:
        """As run_greedy, each step ending with metal/sample.metal (fastllm.sampling's chain and
        a draw with uniforms[i] for step i; the penalty's window the last last_n ids of
        `recent`, ending with first_token, and the tokens produced) instead of the argmax.
        top_k outside 1..64, a window past 64 or a vocabulary past 64 chunks of 4,096 samples
        on the host."""
        if n_steps < 1:
            return []
        uniforms, last_n, ok = device_args(chain, n_steps, uniforms)
        ref, cols = self._loop_check(n_steps, pos, slot)
        chunk, parts = device_chunks(cols, SAMPLE_CHUNK, SAMPLE_PARTS)
        if not ok or chunk > SAMPLE_NK:
            return super().run_sampled(n_steps, first_token, pos, chain, uniforms, recent, slot)
        b = self.b
        if self._cands is None:
            self._cands = b.rt.buffer(8 * SAMPLE_PARTS * DEVICE_TOP_K)
        b.rt.host(self._uniforms)[:4 * n_steps] = uniforms[:n_steps].view(np.uint8)
        if last_n:
            b.rt.host(self._recent)[:4 * last_n] = penalty_window(
                recent, first_token, last_n).view(np.uint8)
        ka = device_kargs(chain, cols, pos, chunk, last_n)
        cands = (self._cands, 0, 8 * parts * DEVICE_TOP_K)
        part = Dispatch("kernel_sample_part", ka, (ref, self.plan.step), (parts, 1, 1),
                        (SAMPLE_TG, 1, 1), (1,))
        final = Dispatch("kernel_sample_final", ka, (self.plan.tokens, self.plan.step),
                         (1, 1, 1), (SAMPLE_TG, 1, 1))
        return self._loop(n_steps, first_token, pos, slot,
                          [(part, [None, cands, None, "recent"]),
                           (final, [cands, "uniforms", None, None, "hist", "recent"])])

    def _loop_check(self, n_steps: int, pos: int, slot: int) -> tuple[Ref, int]:
        """The logits' place and width; the history and uniform buffers grown to n_steps."""
        b = self.b
        lg = self.plan.outputs.get("logits")
        self._check_slot(slot)
        if self.n != 1 or lg is None or lg[1][0] != 1 or self.plan.rows is not None:
            raise ValueError("run_greedy and run_sampled need a one-token program whose output "
                             "'logits' is one row")
        if pos < 0 or (b.spec is not None and pos + n_steps > b.spec.n_ctx):
            raise ContextOverflowError(f"positions {pos}..{pos + n_steps - 1} do not fit the "
                                       f"context of {b.spec.n_ctx if b.spec else 0}")
        if self._hist is None or self._hist_cap < n_steps:
            self._hist_cap = max(64, 1 << (n_steps - 1).bit_length())
            self._hist = b.rt.buffer(4 * self._hist_cap)
            self._uniforms = b.rt.buffer(4 * self._hist_cap)
            self._recent = b.rt.buffer(4 * (DEVICE_LAST_N + self._hist_cap))
        return lg[0], lg[1][-1]

    def _loop(self, n_steps: int, first_token: int, pos: int, slot: int,
              tail: list) -> list[int]:
        """The step and its `tail` (dispatches, each with its bindings in order: None for the
        dispatch's next arena Ref, "hist" / "uniforms" for those buffers, or a binding) n_steps
        times, as many in each command buffer as _steps_per_buffer allows; the history read
        back. The device moves the step on, so command buffers follow each other seamlessly."""
        b = self.b
        arena = self._recorded()
        own = {"hist": (self._hist, 0, 4 * self._hist_cap),
               "uniforms": (self._uniforms, 0, 4 * self._hist_cap),
               "recent": (self._recent, 0, 4 * (DEVICE_LAST_N + self._hist_cap))}
        items = []
        for d, spec in tail:
            refs = iter(d.buffers)
            items.append((d, [self._bind(next(refs), arena) if s is None
                              else own[s] if isinstance(s, str) else s for s in spec]))
        rec = b.rt.record(items)
        self._write_inputs(np.array([first_token], np.int32), pos, slot)
        per, done = self._steps_per_buffer(pos + n_steps), 0
        while done < n_steps:
            k = min(per, n_steps - done)
            b.rt.run_steps([self._rec, rec], k)
            done += k
        hist = b.rt.host(self._hist)[:4 * n_steps].view(np.int32)
        return [int(v) for v in hist]

    def _steps_per_buffer(self, *pos_end: int) -> int:
        """Decode steps in one command buffer: as many as read STEP_BUFFER_BYTES at most, a step
        reading the weights its dispatches bind and the K and V rows attention sees at pos_end
        (one per row of a rows-mode step; time on the GPU is about bytes over bandwidth for a
        decode step). At least one."""
        b = self.b
        step = sum(r.nbytes for d in self.plan.dispatches for r in d.buffers
                   if r.kind == "weight")
        if b.spec is not None:
            esz = KV_TYPES[b.kv_type]
            step += sum(2 * dim * esz * min(int(end), ring) for end in pos_end
                        for ring, dim in zip(b.spec.sizes, b.spec.kv_dim))
        return max(1, STEP_BUFFER_BYTES // max(step, 1))


class MetalBackend(Backend):
    """Metal compute on Apple Silicon. `kv_type` is the cache element type ("f16" as llama.cpp,
    or "f32"); `runtime` replaces the native extension (the tests pass a CPU emulator);
    `self_check` compares a tiny graph with the reference backend before first use; `fuse`
    runs the fused ops of backends/fuse.py (off: one dispatch per graph op)."""

    name = "metal"

    def __init__(self, kv_type: str = "f16", runtime=None, metallib: str | None = None,
                 self_check: bool = True, fuse: bool = True):
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        self.kv_type = kv_type
        self.fuse = fuse
        self.rt = runtime if runtime is not None else _NativeRuntime(metallib)
        self.spec: KVSpec | None = None
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.state: dict[str, Any] = {}  # recurrent state buffers by name (float32)
        self._buf = None
        self._host = np.zeros(0, np.uint8)
        self._gen = 0  # bumped when the arena or the cache is reallocated: programs re-record
        if self_check:
            self._self_check()

    def describe(self) -> str:
        return f"metal ({self.rt.name})"

    # -- memory ----------------------------------------------------------------------------
    def _arena(self, nbytes: int):
        if self._buf is None or self._host.nbytes < nbytes:
            self._buf = self.rt.buffer(_up(nbytes, 1 << 16))
            self._host = self.rt.host(self._buf)
            self._gen += 1
        return self._buf

    def load_weight(self, info: TensorInfo) -> Weight:
        if info.type not in TYPE_NAMES:
            raise UnsupportedError(f"{info.file}: tensor {info.name!r} has type {info.type.name}, "
                                   f"which the metal backend does not read")
        if len(info.shape) == 1 and info.type != GGMLType.F32:
            from ...quants import dequantize

            data = np.ascontiguousarray(dequantize(info.data, info.type, info.shape),
                                        np.float32).view(np.uint8).reshape(-1)
            buf, off = self.rt.weight(data)
            h = _MetalWeight(buf, off, data.nbytes, GGMLType.F32)
        else:
            try:
                buf, off = self.rt.weight(info.data)
            except BackendError as e:  # a tensor past the device's largest buffer
                raise BackendError(f"{info.file}: tensor {info.name!r}: {e}") from None
            h = _MetalWeight(buf, off, int(info.data.nbytes), info.type)
        return Weight(info.name, info.type, info.shape, h)

    def init_kv(self, spec: KVSpec) -> None:
        """The caches and recurrent states of spec.n_seq slots (sequences), one after another
        in each layer's buffer (backends/base.py's KVSpec)."""
        self.spec = spec
        esz = KV_TYPES[self.kv_type]
        self.k, self.v = [], []
        ns = spec.n_seq
        for layer, (s, d) in enumerate(zip(spec.sizes, spec.kv_dim)):
            if s * d == 0:  # a layer without a cache (a hybrid model's recurrent layer)
                self.k.append(None)
                self.v.append(None)
                continue
            for lst, which in ((self.k, "K"), (self.v, "V")):
                buf = self._alloc(ns * s * d * esz, f"the {which} cache of layer {layer} "
                                  f"({ns} x {s} rows of {d})")
                self.rt.host(buf)[:] = 0xFF  # NaN: a read of a row never written shows
                lst.append(buf)
        self.state = {name: self._alloc(4 * n * ns, f"recurrent state {name!r}")
                      for name, n in spec.state}
        self.reset_state()
        self._gen += 1

    def _alloc(self, nbytes: int, what: str):
        try:
            return self.rt.buffer(nbytes)
        except (RuntimeError, MemoryError, BackendError) as e:
            raise BackendError(f"metal: {what} needs {nbytes} bytes, which the device does not "
                               f"give ({e})") from None

    def compile(self, graph: Graph) -> Program:
        return _MetalProgram(self, graph)

    def _state_view(self, name: str, slot: int | None) -> np.ndarray:
        """Slot `slot`'s values of state buffer `name` (None: every slot's), in shared memory."""
        n = dict(self.spec.state)[name]
        ns = self.spec.n_seq
        if slot is None:
            return self.rt.host(self.state[name]).view(np.float32)[:n * ns]
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) \
                or not 0 <= slot < ns:
            raise ValueError(f"slot {slot!r} is not one of the state's {ns} (0..{ns - 1})")
        return self.rt.host(self.state[name]).view(np.float32)[n * slot:n * (slot + 1)]

    def reset_state(self, slot: int | None = None) -> None:
        for name in self.state:
            self._state_view(name, slot)[:] = 0.0

    def get_state(self, slot: int = 0) -> dict[str, np.ndarray]:
        return {name: self._state_view(name, slot).copy() for name in self.state}

    def set_state(self, state: dict[str, np.ndarray], slot: int = 0) -> None:
        for name, v in state.items():
            if name not in self.state:
                raise ValueError(f"no recurrent state {name!r} (the model has "
                                 f"{sorted(self.state)})")
            view = self._state_view(name, slot)
            v = np.asarray(v, np.float32).reshape(-1)
            if v.size != view.size:
                raise ValueError(f"state {name!r} has {view.size} values, got {v.size}")
            view[:] = v

    def close(self) -> None:
        self.k, self.v, self.state, self._buf = [], [], {}, None
        self._host = np.zeros(0, np.uint8)
        self._gen += 1

    # -- self-check ------------------------------------------------------------------------
    def _self_check(self) -> None:
        """Run embedding -> rms_norm -> Q8_0 mat-vec on this device and on the reference backend.
        A device or compiler that gets it wrong is refused (create_backend then falls back)."""
        from ..reference import ReferenceBackend

        rng = np.random.default_rng(0)
        d, n_out, vocab = 64, 40, 16
        emb = rng.standard_normal((vocab, d)).astype(np.float32)
        norm = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        blocks = np.zeros((n_out, d // 32), np.dtype([("d", "<f2"), ("qs", "i1", 32)]))
        blocks["d"] = (0.01 + 0.02 * rng.random(blocks.shape)).astype(np.float16)
        blocks["qs"] = rng.integers(-127, 128, blocks["qs"].shape)
        infos = [TensorInfo("emb", GGMLType.F32, (vocab, d), emb.view(np.uint8).reshape(-1), ""),
                 TensorInfo("norm", GGMLType.F32, (d,), norm.view(np.uint8), ""),
                 TensorInfo("w", GGMLType.Q8_0, (n_out, d), blocks.view(np.uint8).reshape(-1), "")]
        ref = ReferenceBackend()
        results = []
        for be in (self, ref):
            w = {i.name: be.load_weight(i) for i in infos}
            g = Graph(3)
            x = g.rms_norm(g.get_rows(w["emb"], g.tokens), w["norm"], 1e-5)
            g.output("y", g.matmul(x, w["w"]))
            results.append(be.compile(g).run(np.array([3, 0, 15], np.int32), 0)["y"])
        got, want = results
        err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))
        if not np.isfinite(err) or err > 1e-3:
            msg = (f"metal: the self-check on {self.rt.name} disagrees with the reference backend "
                   f"(relative error {err:.3g}); not using Metal")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            raise BackendError(msg)


__all__ = ["TYPE_NAMES", "Dispatch", "MetalBackend", "MetalLowering", "Plan", "Ref"]
