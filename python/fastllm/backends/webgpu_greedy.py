"""Greedy decoding on the device, as a mixin of WebGPUProgram: each step of the one-token
program ends with the vocabulary's argmax (kernel_argmax_part over chunks of the row, then
kernel_argmax_greedy), which writes the token as the next step's input and into a history
buffer and moves the step buffer one position on, so steps follow each other inside one compute
pass and the host reads the tokens back once (benchmarks/NOTES.md, section 10)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kargs
from .webgpu_matmul import _pow2_floor

GREEDY_PASS = 8  # at most this many steps per compute pass and command buffer
GREEDY_PARTS = 64  # the argmax: at most this many chunks of the row, one
ARGMAX_PART_WG = 256  # workgroup of this many threads each


class GreedyOps:
    """run_greedy for WebGPUProgram (uses its be, g, n, tokens, step, _lists, _kind, _buf, buf,
    _raw_list, _record and _ready)."""

    def _greedy_setup(self, n_steps: int) -> dict[str, Any]:
        """The two argmax dispatches that end a greedy step (kernel_argmax_part, then
        kernel_argmax_greedy: the token into the token buffer, the next step's input, and into
        the history; the step buffer one position on), and the history buffers."""
        g = self._greedy
        if g is None:
            v = self.g.outputs.get("logits")
            if self.n != 1 or v is None or v.shape[0] != 1:
                raise ValueError("run_greedy needs a one-token program whose output 'logits' is "
                                 "one row")
            g = self._greedy = {"cap": 0, "logits": v}
            lim = self.be.limits
            wg = _pow2_floor(min(GREEDY_PARTS, lim.get("max-compute-invocations-per-workgroup",
                                                       256),
                                 lim.get("max-compute-workgroup-size-x", 256)))
            chunk = max(ARGMAX_PART_WG, -(-v.cols // wg))  # at most wg parts
            g["parts_grid"] = (-(-v.cols // chunk), 1, 1)
            with self.be.errors("preparing greedy decoding"):
                g["args"] = self._buf(16, "UNIFORM|COPY_DST", "argmax args")
                g["parts"] = self._buf(8 * wg, "STORAGE", "argmax parts")
                g["part"] = self.be.pipeline("argmax.wgsl", "kernel_argmax_part",
                                             consts={"WG": ARGMAX_PART_WG, "CHUNK": chunk})
                g["pipeline"] = self.be.pipeline("argmax.wgsl", "kernel_argmax_greedy",
                                                 consts={"WG": wg, "CHUNK": chunk})
        if g["cap"] < n_steps:
            cap = max(64, 1 << (n_steps - 1).bit_length())
            for old in (g.get("hist"), g.get("out")):  # outgrown
                if old is not None:
                    self.be.free(old)
                    self._own.remove(old)
            with self.be.errors("preparing greedy decoding"):
                g["hist"] = self._buf(4 * cap, "STORAGE|COPY_SRC", "greedy tokens")
                g["out"] = self._buf(4 * cap, "MAP_READ|COPY_DST", "greedy tokens read",
                                     binding=False)
                tail = []
                for p, bufs, grid in ((g["part"], {0: g["args"], 1: self.buf(g["logits"]),
                                                   5: g["parts"]}, g["parts_grid"]),
                                      (g["pipeline"], {0: g["args"], 2: self.tokens,
                                                       3: self.step, 4: g["hist"],
                                                       5: g["parts"]}, (1, 1, 1))):
                    bg = self.be.device.create_bind_group(
                        layout=p.get_bind_group_layout(0),
                        entries=[{"binding": i, "resource": {"buffer": b}}
                                 for i, b in bufs.items()])
                    tail.append((p, bg, grid))
            g["lists"] = {}
            for kind, (d, _) in self._lists.items():
                g["lists"][kind] = (d + tail, self._raw_list(d + tail))
            g["cap"] = cap
        return g

    def run_greedy(self, n_steps: int, first_token: int, pos: int) -> list[int]:
        """Greedy decoding of n_steps tokens on the device: first_token goes in at position
        pos, each step's argmax (first maximum on ties, as numpy) is the next step's input at the
        next position. Returns the n_steps tokens produced; the last one is not yet in the KV
        cache. The GPU carries a step's token and position to the next one itself, so steps
        follow each other inside one compute pass; a command buffer holds GREEDY_PASS steps
        (fewer at first, so the GPU starts after one step's encoding) and nothing is read back
        until the end: the host encodes the next command buffer while the GPU runs the last."""
        if n_steps < 1:
            return []
        self._ready(pos, n_steps)
        be = self.be
        g = self._greedy_setup(n_steps)
        with be.errors("greedy decoding"):
            q, dev = be.queue, be.device
            q.write_buffer(self.tokens, 0, np.array([first_token], np.int32))
            q.write_buffer(self.step, 0, np.array([pos, 1, pos + 1, 0], np.uint32))
            q.write_buffer(g["args"], 0, kargs.pack("kargs_argmax", n_rows=1,
                                                    n_cols=g["logits"].cols, pos0=pos))
            out = g["out"]
            done, k = 0, 1
            while done < n_steps:
                k = min(k, n_steps - done)
                enc = dev.create_command_encoder()
                i = 0
                while i < k:  # runs of steps of one kind (the dispatch list changes once)
                    kind = self._kind(pos + done + i)
                    j = i + 1
                    while j < k and self._kind(pos + done + j) == kind:
                        j += 1
                    dispatches, raw = g["lists"][kind]
                    self._record(enc, raw, dispatches, j - i)
                    i = j
                if done + k == n_steps:
                    enc.copy_buffer_to_buffer(g["hist"], 0, out, 0, 4 * n_steps)
                q.submit([enc.finish()])
                done += k
                k = min(2 * k, GREEDY_PASS)
            out.map_sync("READ", 0, 4 * n_steps)
            ids = np.frombuffer(out.read_mapped(0, 4 * n_steps, copy=True), np.int32)
            out.unmap()
        return [int(t) for t in ids]
