"""A compiled Metal program: a graph lowered once (lowering.py) and recorded over the backend's
arena, weights and caches; per run only the token ids and the `kargs_step` header in the arena
change (DESIGN.md, principle 5). It also runs the decoding loops on the device: greedy or
sampled steps back to back in command buffers bounded by the bytes they read, and (RowsLoops,
rows_loops.py) batched steps sampled on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import kargs
from ...errors import ContextOverflowError
from ...sampling import (
    DEVICE_LAST_N,
    DEVICE_TOP_K,
    device_args,
    device_chunks,
    device_kargs,
    penalty_window,
)
from ..base import Graph, Program
from .lowering import MetalLowering
from .plan import KV_TYPES, Dispatch, Ref, _threads
from .rows_loops import RowsLoops

# Bytes a command buffer of decode steps may read (weights and KV rows): about 60 ms at an M1's
# 68 GB/s, so a chain of steps stays far below macOS's GPU watchdog whatever the model's size
# (one step of an 8B Q4_K_M model already reads ~4.9 GB: one step per command buffer), while a
# small model still runs dozens of steps per command buffer.
STEP_BUFFER_BYTES = 4 << 30
# sample.metal: threads per threadgroup (SAMPLE_TG), at most SAMPLE_PARTS chunks of the row of
# at least SAMPLE_CHUNK columns and at most SAMPLE_NK (its threadgroup arrays)
SAMPLE_TG, SAMPLE_PARTS, SAMPLE_CHUNK, SAMPLE_NK = 256, 64, 2048, 4096


class _MetalProgram(RowsLoops, Program):
    """A graph compiled for `backend` (a MetalBackend: backend.py imports this module, so the
    type is not named here)."""

    def __init__(self, backend: Any, graph: Graph):
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
