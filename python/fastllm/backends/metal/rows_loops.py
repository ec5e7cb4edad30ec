"""Batched decode steps sampled on the device, as a mixin of the Metal backend's program (the
Metal twin of the rows-mode half of backends/webgpu/loops.py): a rows-mode step and the
RowSampler's dispatches (sample_rows.py) run in one command buffer and only the rows' tokens
(and the log-probabilities rows ask for) are read, in place from shared memory; a chain of such
steps ends each one with metal/rows_chain.metal's kernel_rows_chain_next, which feeds the tokens
to the next step on the device, so the chain is read once at its end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import kargs
from ...errors import UnsupportedError
from ...sampling import Sampled, device_ok, sample_row
from .. import sample_rows as layout
from .plan import Dispatch, _threads
from .sample_rows import ROW_BYTES, RowSampler


class RowsLoops:
    """run_rows_sampled and run_rows_chain for _MetalProgram (uses its b, n, plan, _rec,
    _recorded, _rows_inputs and _steps_per_buffer)."""

    # the rows' sampler (False: the vocabulary is past it, the host samples), the recorded
    # sampling after a step and the chain's end of a step, each with the arena generation and
    # buffers it was recorded over
    _sampler: RowSampler | bool | None = None
    _sample_rec: tuple[Any, Any] | None = None
    _chain: dict[str, Any] | None = None

    def _row_sampler(self) -> RowSampler | None:
        """The sampler of this program's rows (None when the logits are past it)."""
        if self._sampler is None:
            lg = self.plan.outputs.get("logits")
            if self.plan.rows is None or lg is None or lg[1][0] != self.n:
                raise ValueError("run_rows_sampled needs a rows-mode program with every row's "
                                 "'logits'")
            try:
                self._sampler = RowSampler(self.b, lg[1][-1], self.n)
            except UnsupportedError:  # a vocabulary past 64 parts of 4,096 columns
                self._sampler = False
        return self._sampler or None

    def _logits(self) -> tuple[Any, int]:
        """(arena, byte offset) of the rows' logits; the step recorded over the arena."""
        return self._recorded(), self.plan.outputs["logits"][0].offset

    def _sample_items(self, s: RowSampler) -> list:
        items: list = []
        s.encode(items, self._logits(), self.n)
        return items

    def run_rows_sampled(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                         params: Sequence[Any], uniforms: np.ndarray,
                         windows: Sequence[Sequence[int]],
                         masks: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """The step's B rows and their sampling (sample_rows.py) in one command buffer: only the
        B tokens (and the log-probabilities rows ask for) are read. Rows whose chain the device
        cannot run (sampling.device_ok) are sampled on the host from their logits, the others
        still on the device. masks[r]: row r's allowed-token bitmask (a grammar's), applied on
        the device (or by sample_row for a host row)."""
        s = self._row_sampler()
        if len(params) != self.n:
            raise ValueError(f"this program runs {self.n} rows, got {len(params)} sampling "
                             f"chains")
        if s is None or not any(device_ok(p) for p in params):
            return super().run_rows_sampled(tokens, slots, positions, params, uniforms,
                                            windows, masks)
        self._rows_inputs(tokens, slots, positions)
        masks = layout.check_masks(masks, self.n, s.n_vocab)
        s.prepare(params, np.asarray(uniforms, np.float32).reshape(-1), windows, masks)
        rt = self.b.rt
        gen = self.b._gen
        if self._sample_rec is None or self._sample_rec[0] != gen:
            self._sample_rec = (gen, rt.record(self._sample_items(s)))
        rt.run_steps([self._rec, self._sample_rec[1]], 1)
        got: list[Sampled | None] = s.unpack()
        host = [r for r, g in enumerate(got) if g is None]
        if host:
            arena, off = self._logits()
            v = s.n_vocab
            x = rt.host(arena)[off:off + 4 * self.n * v].view(np.float32).reshape(self.n, v)
            for r in host:
                got[r] = sample_row(x[r].copy(), params[r], float(uniforms[r]), windows[r],
                                    masks[r] if masks is not None else None)
        return got

    def run_rows_chain(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                       params: Sequence[Any], uniforms: np.ndarray) -> np.ndarray:
        """len(uniforms) steps of run_rows_sampled (uniforms: (steps, rows)), each step's tokens
        the next one's input at the next positions: int32 (steps, rows). The steps run back to
        back on the device (kernel_rows_chain_next between two) and the tokens are read once at
        the end, as many steps in one command buffer as _steps_per_buffer allows. Chains with a
        penalty window or logprobs, or that the device cannot run, take the base class's
        steps one by one."""
        u = np.ascontiguousarray(uniforms, np.float32)
        s = self._row_sampler()
        if (s is None or u.ndim != 2 or u.shape[1] != self.n or len(params) != self.n
                or any(not device_ok(p) or p.penalized or p.logprobs is not None
                       for p in params)):
            return super().run_rows_chain(tokens, slots, positions, params, uniforms)
        k, b = u.shape
        if k == 0:
            return np.zeros((0, b), np.int32)
        self._rows_inputs(tokens, slots, positions, k)
        s.prepare(params, u[0], [()] * b)
        c = self._chain_bufs(s, k)
        host = self.b.rt.host
        host(c["uniforms"])[:u.nbytes] = u.view(np.uint8).reshape(-1)
        host(c["counter"])[:4] = 0
        pos = np.asarray(positions, np.int64).reshape(-1)
        per, done = self._steps_per_buffer(*(pos + k)), 0
        while done < k:
            m = min(per, k - done)
            self.b.rt.run_steps([self._rec, c["rec"]], m)
            done += m
        return host(c["hist"])[:4 * k * b].view(np.int32).reshape(k, b).copy()

    def _chain_bufs(self, s: RowSampler, k: int) -> dict[str, Any]:
        """The chain's buffers for k steps (grown to a power of two: the history, the uniform
        numbers with a row past the last step, the step counter) and the end of a step (the
        sampler's dispatches, then kernel_rows_chain_next) recorded over them."""
        c, b, rt = self._chain, self.n, self.b.rt
        if c is None or c["cap"] < k:
            cap = max(8, 1 << (k - 1).bit_length())
            c = self._chain = {"cap": cap, "gen": None,
                               "hist": rt.buffer(4 * b * cap),
                               "uniforms": rt.buffer(4 * b * (cap + 1)),
                               "counter": rt.buffer(16)}
        arena = self._recorded()
        if c["gen"] != self.b._gen:
            cap, t = c["cap"], self.plan.tokens
            items = self._sample_items(s)
            nxt = Dispatch("kernel_rows_chain_next", kargs.pack("kargs_unary", n=b), (),
                           (1, 1, 1), (_threads(b), 1, 1))
            items.append((nxt, [(s.out, 0, 4 * b), (arena, t.offset, t.nbytes),
                                (arena, self.plan.rows.offset, self.plan.rows.nbytes),
                                (s.rows, 0, ROW_BYTES * b),
                                (c["uniforms"], 0, 4 * b * (cap + 1)),
                                (c["hist"], 0, 4 * b * cap), (c["counter"], 0, 16)]))
            c["rec"], c["gen"] = rt.record(items), self.b._gen
        return c
