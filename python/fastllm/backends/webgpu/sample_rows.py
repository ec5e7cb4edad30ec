"""Sampling the B rows of a batched decode step on a WebGPU device (shaders/sample_rows.wgsl), so
that a step reads back B token ids (and the log-probabilities rows ask for), not B rows of
logits. Each row runs its own chain (fastllm.sampling.RowSampling; sample_row is the host
reference: the same uniform number gives the same token, near-ties aside); rows that
fastllm.sampling.device_ok refuses (top_k off or past 64, a penalty window past 64 ids, more
than 64 logit_bias entries) get id -1 here and are sampled on the host from their logits.

    s = RowSampler(backend, n_vocab, max_rows)
    s.prepare(params, uniforms, windows, masks) # writes the rows' buffers (queue writes)
    s.encode(encoder, logits_buffer, n_rows)    # two dispatches for all rows
    encoder.copy_buffer_to_buffer(s.out, 0, staging, 0, s.read_nbytes())
    ... submit, map staging ...
    s.unpack(data)                              # list of Sampled (None: a host row)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...sampling import RowSampling, Sampled, sample_row
from .. import sample_rows as layout

WG = 256  # sample_rows.wgsl's workgroups
ROW_BYTES = 52  # kargs_sample_row
# workgroup memory besides the candidates' keys: window and bias ids, the ranked candidates,
# the reductions' red4 (WG vec4s)
_WG_FIXED = 4 * (3 * layout.LMAX + 6 * layout.KMAX + 8) + 16 * WG


class RowSampler:
    """Device sampling of up to max_rows rows of n_vocab logits (module docstring)."""

    def __init__(self, backend: Any, n_vocab: int, max_rows: int):
        if n_vocab < 1 or max_rows < 1:
            raise ValueError(f"RowSampler needs n_vocab >= 1 and max_rows >= 1, got {n_vocab} "
                             f"and {max_rows}")
        self.be, self.n_vocab, self.max_rows = backend, int(n_vocab), int(max_rows)
        self.chunk, self.n_parts = layout.split(self.n_vocab)
        need = 4 * max(self.chunk, self.n_parts * layout.KMAX) + _WG_FIXED
        have = backend.limits.get("max-compute-workgroup-storage-size", 16384)
        if need > have:
            raise UnsupportedError(f"webgpu: sampling rows of {n_vocab} logits needs {need} bytes "
                                   f"of workgroup memory, the device has {have}")
        consts = {"WG": WG, "CHUNK": self.chunk, "NPART": self.n_parts, "KMAX": layout.KMAX,
                  "LPC": layout.LPC, "LMAX": layout.LMAX, "BMAX": layout.BMAX,
                  "LPW": layout.LPW}
        be, rows, parts = backend, self.max_rows, self.n_parts
        self._own = []
        with be.errors("preparing row sampling"):
            self.part = be.pipeline("sample_rows.wgsl", "kernel_sample_rows_part", consts=consts)
            self.final = be.pipeline("sample_rows.wgsl", "kernel_sample_rows_final",
                                     consts=consts)
            self.hdr = self._buf(16, "UNIFORM|COPY_DST", "row sampling header")
            self.rows = self._buf(ROW_BYTES * rows, "STORAGE|COPY_DST", "row sampling args")
            self.windows = self._buf(4 * layout.LMAX * rows, "STORAGE|COPY_DST",
                                     "row sampling windows")
            self.bias = self._buf(8 * layout.BMAX * rows, "STORAGE|COPY_DST",
                                  "row sampling logit_bias")
            self.cands = self._buf(8 * layout.KMAX * parts * rows, "STORAGE|COPY_DST",
                                   "row sampling candidates")
            self.lpc = self._buf(8 * layout.LPC * parts * rows, "STORAGE|COPY_DST",
                                 "row sampling raw candidates")
            self.stats = self._buf(8 * parts * rows, "STORAGE|COPY_DST", "row sampling sums")
            # allowed-token bitmasks (a grammar's constraint), written for the rows that have one
            self.mask_words = layout.mask_words(self.n_vocab)
            self.masks = self._buf(4 * self.mask_words * rows, "STORAGE|COPY_DST",
                                   "row sampling token masks")
            # the ids and log-probabilities: copied to a mapped buffer by the caller
            self.out = self._buf(4 * layout.out_words(rows), "STORAGE|COPY_SRC|COPY_DST",
                                 "row sampling output")
            be.queue.write_buffer(self.hdr, 0, layout.header(self.n_vocab, rows))
        self._params: list[RowSampling] = []
        self._groups: dict[tuple, tuple[Any, Any]] = {}  # (logits buffer, offset): bind groups
        self._staging = self._logits = None

    def _buf(self, size: int, usage: str, label: str, binding: bool = True):
        b = self.be.buffer(size, usage, label, binding=binding)
        self._own.append(b)
        return b

    def prepare(self, params: Sequence[RowSampling], uniforms: Sequence[float],
                windows: Sequence[Sequence[int]],
                masks: Sequence[np.ndarray | None] | None = None) -> None:
        """Write the rows' chains, uniform numbers and penalty windows (windows[r]: row r's
        sequence so far, or its last last_n ids) for the next encode(); params are checked
        RowSamplings (RowSampling.check). masks: None, or per row None or its allowed-token
        bitmask (ceil(n_vocab / 32) 32-bit words: sampling.allowed_tokens)."""
        masks = layout.check_masks(masks, len(params), self.n_vocab)
        rows, win, bias = layout.pack(params, uniforms, windows, self.max_rows, masks)
        with self.be.errors("preparing row sampling"):
            q = self.be.queue
            q.write_buffer(self.rows, 0, rows.tobytes())
            if any(rows["n_window"]):
                q.write_buffer(self.windows, 0, win)
            if any(rows["n_bias"]):
                q.write_buffer(self.bias, 0, bias)
            for r, m in enumerate(masks or ()):
                if m is not None:  # only the constrained rows' words travel
                    q.write_buffer(self.masks, 4 * self.mask_words * r, m)
        self._params = list(params)

    def _bind_groups(self, logits, offset: int) -> tuple[Any, Any]:
        key = (logits, offset)
        bg = self._groups.get(key)
        if bg is None:
            if len(self._groups) > 8:  # the step's logits buffer rarely changes
                self._groups.clear()
            x = {"buffer": logits, "offset": offset, "size": logits.size - offset}
            dev = self.be.device
            with self.be.errors("binding row sampling"):
                part = dev.create_bind_group(layout=self.part.get_bind_group_layout(0), entries=[
                    {"binding": b, "resource": r} for b, r in (
                        (0, {"buffer": self.hdr}), (1, x), (2, {"buffer": self.rows}),
                        (3, {"buffer": self.windows}), (4, {"buffer": self.bias}),
                        (5, {"buffer": self.cands}), (6, {"buffer": self.lpc}),
                        (7, {"buffer": self.stats}), (9, {"buffer": self.masks}))])
                final = dev.create_bind_group(layout=self.final.get_bind_group_layout(0), entries=[
                    {"binding": b, "resource": r} for b, r in (
                        (0, {"buffer": self.hdr}), (1, x), (2, {"buffer": self.rows}),
                        (5, {"buffer": self.cands}), (6, {"buffer": self.lpc}),
                        (7, {"buffer": self.stats}), (8, {"buffer": self.out}))])
            bg = self._groups[key] = (part, final)
        return bg

    def encode(self, encoder, logits, n_rows: int, offset: int = 0) -> None:
        """Two dispatches in one compute pass of `encoder` that sample the n_rows rows prepared
        last from `logits` (a storage buffer holding n_rows rows of n_vocab float32 from byte
        `offset`, a multiple of the device's storage offset alignment), into self.out."""
        if n_rows != len(self._params):
            raise ValueError(f"RowSampler.encode: {n_rows} rows, {len(self._params)} prepared")
        if logits.size - offset < 4 * n_rows * self.n_vocab:
            raise ValueError(f"RowSampler.encode: the logits buffer holds fewer than {n_rows} "
                             f"rows of {self.n_vocab} from offset {offset}")
        part, final = self._bind_groups(logits, offset)
        with self.be.errors("encoding row sampling"):
            cp = encoder.begin_compute_pass()
            cp.set_pipeline(self.part)
            cp.set_bind_group(0, part)
            cp.dispatch_workgroups(self.n_parts, n_rows, 1)
            cp.set_pipeline(self.final)
            cp.set_bind_group(0, final)
            cp.dispatch_workgroups(n_rows, 1, 1)
            cp.end()

    def read_nbytes(self) -> int:
        """Bytes of self.out to read back for the prepared rows (from offset 0)."""
        return layout.read_nbytes(self._params, self.max_rows)

    def unpack(self, data) -> list[Sampled | None]:
        """The prepared rows' Sampled from read_nbytes() bytes of self.out; None for the rows
        the host samples (sampling.device_ok false)."""
        return layout.unpack(np.frombuffer(data, np.uint32), self._params, self.max_rows)

    def sample(self, logits: np.ndarray, params: Sequence[RowSampling],
               uniforms: Sequence[float], windows: Sequence[Sequence[int]],
               masks: Sequence[np.ndarray | None] | None = None) -> list[Sampled]:
        """Upload logits (B, n_vocab), sample on the device, read back; rows the device leaves
        to the host are sampled by sample_row on their logits (the path a caller takes)."""
        x = np.ascontiguousarray(logits, np.float32).reshape(len(params), self.n_vocab)
        be = self.be
        with be.errors("row sampling"):
            if self._logits is None or self._logits.size < x.nbytes:
                self._logits = self._buf(x.nbytes, "STORAGE|COPY_DST", "row sampling logits")
                self._groups.clear()
            if self._staging is None:
                self._staging = self._buf(self.out.size, "MAP_READ|COPY_DST",
                                          "row sampling read", binding=False)
            be.queue.write_buffer(self._logits, 0, x)
            self.prepare(params, uniforms, windows, masks)
            enc = be.device.create_command_encoder()
            self.encode(enc, self._logits, len(params))
            n = self.read_nbytes()
            enc.copy_buffer_to_buffer(self.out, 0, self._staging, 0, n)
            be.queue.submit([enc.finish()])
            self._staging.map_sync("READ", 0, n)
            data = self._staging.read_mapped(0, n, copy=True)
            self._staging.unmap()
        got = self.unpack(data)
        return [s if s is not None else sample_row(x[r], params[r], float(uniforms[r]),
                                                   windows[r], masks[r] if masks else None)
                for r, s in enumerate(got)]

    def poison(self) -> None:
        """Fill the candidates, sums and output with NaN bits (tests: a skipped write shows)."""
        with self.be.errors("poisoning row sampling"):
            for b in (self.cands, self.lpc, self.stats, self.out):
                self.be.queue.write_buffer(b, 0, np.full(b.size // 4, np.nan, np.float32))

    def close(self) -> None:
        for b in self._own:
            self.be.free(b)
        self._own = []
        self._groups.clear()
