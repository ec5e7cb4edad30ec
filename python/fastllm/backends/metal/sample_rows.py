"""Sampling the B rows of a batched decode step on the Metal device (metal/sample_rows.metal),
the Metal twin of backends/webgpu/sample_rows.py (its docstring says what; the buffer layout
and the packing are backends/sample_rows.py's). The interface is the same, in the Metal
backend's terms: a "command encoder" is the list of (Dispatch, bindings) items that the
runtime records (MetalBackend.rt.record), and the logits are (buffer, byte offset) of the
runtime's buffers.

    s = RowSampler(backend, n_vocab, max_rows)
    s.prepare(params, uniforms, windows, masks)   # writes the rows' buffers (shared memory)
    items = [...]; s.encode(items, (logits_buffer, offset), n_rows)
    backend.rt.run(backend.rt.record(items))
    s.unpack()                                    # list of Sampled (None: a host row)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...sampling import RowSampling, Sampled, sample_row
from .. import sample_rows as layout
from .plan import Dispatch

TG = 256  # sample_rows.metal's SR_TG
NK = 4096  # its SR_NK: the most columns of a part, and of parts x KMAX candidates
ROW_BYTES = 52  # kargs_sample_row


class RowSampler:
    """Device sampling of up to max_rows rows of n_vocab logits (module docstring)."""

    def __init__(self, backend: Any, n_vocab: int, max_rows: int):
        if n_vocab < 1 or max_rows < 1:
            raise ValueError(f"RowSampler needs n_vocab >= 1 and max_rows >= 1, got {n_vocab} "
                             f"and {max_rows}")
        self.be, self.rt = backend, backend.rt
        self.n_vocab, self.max_rows = int(n_vocab), int(max_rows)
        self.chunk, self.n_parts = layout.split(self.n_vocab)
        if self.chunk > NK:
            raise UnsupportedError(f"metal: sampling rows of {n_vocab} logits on the device takes "
                                   f"at most {layout.NPART * NK} columns")
        rows, parts, rt = self.max_rows, self.n_parts, self.rt
        self.hdr = layout.header(self.n_vocab, rows)
        self.rows = rt.buffer(ROW_BYTES * rows)
        self.windows = rt.buffer(4 * layout.LMAX * rows)
        self.bias = rt.buffer(8 * layout.BMAX * rows)
        self.cands = rt.buffer(8 * layout.KMAX * parts * rows)
        self.lpc = rt.buffer(8 * layout.LPC * parts * rows)
        self.stats = rt.buffer(8 * parts * rows)
        # allowed-token bitmasks (a grammar's constraint), written for the rows that have one
        self.mask_words = layout.mask_words(self.n_vocab)
        self.masks = rt.buffer(4 * self.mask_words * rows)
        self.out = rt.buffer(4 * layout.out_words(rows))  # shared memory: read in place
        self._params: list[RowSampling] = []
        self._logits = None

    def prepare(self, params: Sequence[RowSampling], uniforms: Sequence[float],
                windows: Sequence[Sequence[int]],
                masks: Sequence[np.ndarray | None] | None = None) -> None:
        """Write the rows' chains, uniform numbers and penalty windows (windows[r]: row r's
        sequence so far, or its last last_n ids) for the next encode(); params are checked
        RowSamplings (RowSampling.check). masks: None, or per row None or its allowed-token
        bitmask (ceil(n_vocab / 32) 32-bit words: sampling.allowed_tokens)."""
        masks = layout.check_masks(masks, len(params), self.n_vocab)
        rows, win, bias = layout.pack(params, uniforms, windows, self.max_rows, masks)
        host = self.rt.host
        host(self.rows)[:rows.nbytes] = rows.view(np.uint8)
        if any(rows["n_window"]):
            host(self.windows)[:win.nbytes] = win.view(np.uint8).reshape(-1)
        if any(rows["n_bias"]):
            host(self.bias)[:bias.nbytes] = bias.view(np.uint8).reshape(-1)
        mb = 4 * self.mask_words
        for r, m in enumerate(masks or ()):
            if m is not None:  # only the constrained rows' words are written
                host(self.masks)[r * mb:(r + 1) * mb] = m.view(np.uint8)
        self._params = list(params)

    def encode(self, encoder: list, logits, n_rows: int) -> None:
        """Append the two dispatches that sample the n_rows rows prepared last from `logits`
        (a runtime buffer, or (buffer, byte offset), holding n_rows rows of n_vocab float32) to
        `encoder`, a list of (Dispatch, bindings) items for the runtime's record()."""
        if n_rows != len(self._params):
            raise ValueError(f"RowSampler.encode: {n_rows} rows, {len(self._params)} prepared")
        buf, off = logits if isinstance(logits, tuple) else (logits, 0)
        b, parts = n_rows, self.n_parts
        x = (buf, off, 4 * b * self.n_vocab)
        rows = (self.rows, 0, ROW_BYTES * b)
        cands = (self.cands, 0, 8 * layout.KMAX * parts * b)
        lpc = (self.lpc, 0, 8 * layout.LPC * parts * b)
        stats = (self.stats, 0, 8 * parts * b)
        out = (self.out, 0, 4 * (self.max_rows + layout.LPW * b))
        # `writes`: the emulator poisons those bindings before the dispatch (the parts and the
        # output of rows that do not ask for log-probabilities are never read)
        part = Dispatch("kernel_sample_rows_part", self.hdr, (), (parts, b, 1), (TG, 1, 1),
                        (4, 5, 6))
        final = Dispatch("kernel_sample_rows_final", self.hdr, (), (b, 1, 1), (TG, 1, 1), (5,))
        encoder.append((part, [x, rows, (self.windows, 0, 4 * layout.LMAX * b),
                               (self.bias, 0, 8 * layout.BMAX * b), cands, lpc, stats,
                               (self.masks, 0, 4 * self.mask_words * b)]))
        encoder.append((final, [x, rows, cands, lpc, stats, out]))

    def read_nbytes(self) -> int:
        """Bytes of self.out holding the prepared rows' results (from offset 0)."""
        return layout.read_nbytes(self._params, self.max_rows)

    def unpack(self, data=None) -> list[Sampled | None]:
        """The prepared rows' Sampled from self.out (or from `data`, read_nbytes() bytes of
        it); None for the rows the host samples (sampling.device_ok false)."""
        if data is None:
            data = self.rt.host(self.out)[:self.read_nbytes()]
        return layout.unpack(np.frombuffer(data, np.uint32), self._params, self.max_rows)

    def sample(self, logits: np.ndarray, params: Sequence[RowSampling],
               uniforms: Sequence[float], windows: Sequence[Sequence[int]],
               masks: Sequence[np.ndarray | None] | None = None) -> list[Sampled]:
        """Copy logits (B, n_vocab) to the device, sample, read back; rows the device leaves
        to the host are sampled by sample_row on their logits (the path a caller takes)."""
        x = np.ascontiguousarray(logits, np.float32).reshape(len(params), self.n_vocab)
        if self._logits is None or self.rt.host(self._logits).nbytes < x.nbytes:
            self._logits = self.rt.buffer(4 * self.max_rows * self.n_vocab)
        self.rt.host(self._logits)[:x.nbytes] = x.view(np.uint8).reshape(-1)
        self.prepare(params, uniforms, windows, masks)
        items: list = []
        self.encode(items, self._logits, len(params))
        self.rt.run(self.rt.record(items))
        got = self.unpack()
        return [s if s is not None else sample_row(x[r], params[r], float(uniforms[r]),
                                                   windows[r], masks[r] if masks else None)
                for r, s in enumerate(got)]

    def poison(self) -> None:
        """Fill the candidates, sums and output with NaN bits (tests: a skipped write shows)."""
        for b in (self.cands, self.lpc, self.stats, self.out):
            self.rt.host(b)[:] = 0xFF

    def close(self) -> None:
        self.rows = self.windows = self.bias = self.cands = self.lpc = self.stats = None
        self.masks = None
        self.out = self._logits = None
