"""Decoding loops on the device, as a mixin of WebGPUProgram: each step of the one-token program
ends with the choice of the next token, which the last dispatch writes as the next step's input
and into a history buffer before moving the step buffer one position on, so steps follow each
other inside one compute pass and the host reads the tokens back once (benchmarks/NOTES.md,
section 10). Greedy decoding chooses by the vocabulary's argmax (kernel_argmax_part over chunks
of the row, then kernel_argmax_greedy); sampled decoding by fastllm.sampling's chain
(kernel_sample_part, kernel_sample_final in sample.wgsl) with a uniform number per step that the
host's generator made."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import kargs
from ...sampling import (
    DEVICE_LAST_N,
    DEVICE_TOP_K,
    device_args,
    device_chunks,
    device_kargs,
    penalty_window,
)
from .matmul_shapes import _pow2_floor
from .persist import CTL_MAX, CTL_WORDS, LOOP_LIMIT, lower

GREEDY_PASS = 8  # at most this many steps per compute pass and command buffer
GREEDY_PARTS = 64  # the argmax: at most this many chunks of the row, one
ARGMAX_PART_WG = 256  # workgroup of this many threads each
SAMPLE_WG = 256  # sample.wgsl's workgroups
SAMPLE_PARTS = 64  # sample.wgsl's NPART: at most this many chunks of the row
SAMPLE_CHUNK = 2048  # and at least this many columns each
# tokens of each kind of step the persistent path must agree on with the ordinary one (both run
# until then, the ordinary one's tokens returned) before it runs alone: the hand-offs' ordering
# rests on the driver (benchmarks/NOTES.md, section 15), so a model's first steps check it. Less
# than a benchmark's warm-up (tg128), so that timed runs are the persistent path's alone.
VERIFY_TOKENS = 64


class _Lazy(dict):
    """A step kind's persistent list, made when a step of that kind first runs (compiling the
    merged kernels of a kind no call reaches would cost seconds on lavapipe)."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, kind: str):
        self[kind] = v = self._make(kind)
        return v


class DeviceLoops:
    """run_greedy and run_sampled for WebGPUProgram (uses its be, g, n, tokens, step, _lists,
    _kind, _bind_group, _buf, buf, _raw_list, _record and _ready)."""

    def _loop_setup(self, n_steps: int, mode: str) -> dict[str, Any]:
        """The loop's state: the history buffers (grown to hold n_steps tokens), and for `mode`
        ("greedy" or "sample") the dispatches that end a step and the step lists with them."""
        g = self._loops
        if g is None:
            v = self.g.outputs.get("logits")
            if self.n != 1 or v is None or v.shape[0] != 1:
                raise ValueError("run_greedy and run_sampled need a one-token program whose "
                                 "output 'logits' is one row")
            g = self._loops = {"cap": 0, "logits": v, "lists": {}, "tails": {}, "plists": {},
                               "verified": {}, "path": {}}
        if g["cap"] < n_steps:
            cap = max(64, 1 << (n_steps - 1).bit_length())
            for name in ("hist", "out", "uniforms", "recent"):  # outgrown
                if name in g:
                    self.be.free(g[name])
                    self._own.remove(g[name])
            with self.be.errors("preparing decoding on the device"):
                g["hist"] = self._buf(4 * cap, "STORAGE|COPY_SRC", "decoded tokens")
                g["out"] = self._buf(4 * cap, "MAP_READ|COPY_DST", "decoded tokens read",
                                     binding=False)
                g["uniforms"] = self._buf(4 * cap, "STORAGE|COPY_DST", "sampling uniforms")
                g["recent"] = self._buf(4 * (DEVICE_LAST_N + cap), "STORAGE|COPY_DST",
                                        "sampling penalty ids")
            g["lists"] = {}  # their bind groups name the old buffers
            g["plists"] = {}
            g["cap"] = cap
        if mode not in g["lists"]:
            with self.be.errors("preparing decoding on the device"):
                specs = self._argmax_tail(g) if mode == "greedy" else self._sample_tail(g)
                tail = [(p, self._bind_group(p, bufs), grid) for p, bufs, grid in specs]
            g["lists"][mode] = {kind: (d + tail, self._raw_list(d + tail))
                                for kind, (d, _) in self._lists.items()}
            g["tails"][mode] = specs
        return g

    def _argmax_tail(self, g: dict[str, Any]) -> list[tuple]:
        """kernel_argmax_part over chunks of the row, then kernel_argmax_greedy (one workgroup
        of at least as many threads as chunks) picks among them and ends the step."""
        if "args" not in g:
            lim = self.be.limits
            wg = _pow2_floor(min(GREEDY_PARTS, lim.get("max-compute-invocations-per-workgroup",
                                                       256),
                                 lim.get("max-compute-workgroup-size-x", 256)))
            chunk, parts = device_chunks(g["logits"].cols, ARGMAX_PART_WG, wg)
            g["parts_grid"] = (parts, 1, 1)
            g["args"] = self._buf(16, "UNIFORM|COPY_DST", "argmax args")
            g["parts"] = self._buf(8 * wg, "STORAGE", "argmax parts")
            g["part"] = self.be.pipeline("argmax.wgsl", "kernel_argmax_part",
                                         consts={"WG": ARGMAX_PART_WG, "CHUNK": chunk})
            g["pipeline"] = self.be.pipeline("argmax.wgsl", "kernel_argmax_greedy",
                                             consts={"WG": wg, "CHUNK": chunk})
        return [(g["part"], {0: g["args"], 1: self.buf(g["logits"]), 5: g["parts"]},
                 g["parts_grid"]),
                (g["pipeline"], {0: g["args"], 2: self.tokens, 3: self.step, 4: g["hist"],
                                 5: g["parts"]}, (1, 1, 1))]

    def _sample_tail(self, g: dict[str, Any]) -> list[tuple]:
        """kernel_sample_part over chunks of the row (each keeps its top_k), then
        kernel_sample_final: the chain over those, the draw, the step's end."""
        if "sargs" not in g:
            chunk, parts = device_chunks(g["logits"].cols, SAMPLE_CHUNK, SAMPLE_PARTS)
            consts = {"WG": SAMPLE_WG, "CHUNK": chunk, "NPART": parts, "KMAX": DEVICE_TOP_K}
            g["sgrid"] = (parts, 1, 1)
            g["schunk"] = chunk
            g["sargs"] = self._buf(48, "UNIFORM|COPY_DST", "sampling args")
            g["cands"] = self._buf(8 * parts * DEVICE_TOP_K, "STORAGE", "sampling candidates")
            g["spart"] = self.be.pipeline("sample.wgsl", "kernel_sample_part", consts=consts)
            g["sfinal"] = self.be.pipeline("sample.wgsl", "kernel_sample_final", consts=consts)
        return [(g["spart"], {0: g["sargs"], 1: self.buf(g["logits"]), 3: self.step,
                              5: g["cands"], 7: g["recent"]}, g["sgrid"]),
                (g["sfinal"], {0: g["sargs"], 2: self.tokens, 3: self.step, 4: g["hist"],
                               5: g["cands"], 6: g["uniforms"], 7: g["recent"]}, (1, 1, 1))]

    def run_greedy(self, n_steps: int, first_token: int, pos: int, slot: int = 0) -> list[int]:
        """Greedy decoding of n_steps tokens on the device: first_token goes in at position
        pos, each step's argmax (first maximum on ties, as numpy) is the next step's input at the
        next position. Returns the n_steps tokens produced; the last one is not yet in the KV
        cache. The GPU carries a step's token and position to the next one itself, so steps
        follow each other inside one compute pass; a command buffer holds GREEDY_PASS steps
        (fewer at first, so the GPU starts after one step's encoding) and nothing is read back
        until the end: the host encodes the next command buffer while the GPU runs the last."""
        if n_steps < 1:
            return []
        self._ready(pos, n_steps, slot)
        g = self._loop_setup(n_steps, "greedy")
        with self.be.errors("greedy decoding"):
            self.be.queue.write_buffer(g["args"], 0, kargs.pack(
                "kargs_argmax", n_rows=1, n_cols=g["logits"].cols, pos0=pos))
            return self._loop(g, "greedy", n_steps, first_token, pos, slot)

    def run_sampled(self, n_steps: int, first_token: int, pos: int, chain: dict[str, float],
                    uniforms: np.ndarray, recent: Sequence[int] = (), slot: int = 0) -> list[int]:
        """As run_greedy, each step's token drawn by fastllm.sampling's chain (make_sampler's
        `chain`) with uniforms[i] for step i, on the device (sample.wgsl); the penalty's window
        is the last last_n ids of `recent` (ending with first_token) and the tokens produced.
        top_k beyond DEVICE_TOP_K or a longer window samples on the host."""
        if n_steps < 1:
            return []
        uniforms, last_n, ok = device_args(chain, n_steps, uniforms)
        if not ok:
            return super().run_sampled(n_steps, first_token, pos, chain, uniforms, recent, slot)
        self._ready(pos, n_steps, slot)
        g = self._loop_setup(n_steps, "sample")
        with self.be.errors("sampled decoding"):
            q = self.be.queue
            q.write_buffer(g["sargs"], 0, device_kargs(chain, g["logits"].cols, pos,
                                                       g["schunk"], last_n))
            q.write_buffer(g["uniforms"], 0, uniforms[:n_steps])
            if last_n:
                q.write_buffer(g["recent"], 0, penalty_window(recent, first_token, last_n))
            return self._loop(g, "sample", n_steps, first_token, pos, slot)

    def _loop(self, g: dict[str, Any], mode: str, n_steps: int, first_token: int,
              pos: int, slot: int) -> list[int]:
        """The decoding loop on the persistent step lists where they are on (persist.py), else
        on the ordinary ones. A persistent run that timed out is run again on half the grid
        (down to one workgroup), then on the ordinary lists (from the same token and position:
        every step rewrites what it reads); until VERIFY_TOKENS of a kind of step agree, each
        persistent run is checked against the ordinary one, which runs after it."""
        plists = self._persistent_lists(g, mode)
        pers = self.be.persistent
        while plists is not None:
            ids, flag = self._loop_run(g, plists, n_steps, first_token, pos, slot, True)
            if flag == LOOP_LIMIT:  # only that bit: a wait that timed out goes first
                # llvmpipe cut a launch's loops (persist.py): fewer virtual workgroups a
                # launch, and this call again from the same token
                g["plists"] = {}
                self._say_path(g, mode, "ordinary (a persistent launch's loops were cut; "
                                        "this call re-ran on the ordinary dispatches)")
                plists = self._persistent_lists(g, mode) if pers.loop_limited() else None
                continue
            if flag:
                grid = pers.grid
                pers.timed_out()
                g["plists"] = {}  # rebuilt on the smaller grid
                self._say_path(g, mode, "ordinary (the persistent step timed out; "
                                        "this call re-ran on the ordinary dispatches)")
                # a grid too large to stay resident: this call tries the halved one (the
                # first call absorbs them, not a timed one)
                plists = self._persistent_lists(g, mode) if pers.grid < grid else None
                continue
            # each kind of step's list (short, long contexts) is checked against the ordinary
            # path until VERIFY_TOKENS of its tokens have agreed
            kinds = {(mode, self._kind(pos + i)) for i in range(n_steps)}
            if all(g["verified"].get(k, 0) >= VERIFY_TOKENS for k in kinds):
                self._say_path(g, mode, None)
                return ids
            else:
                ref, _ = self._loop_run(g, g["lists"][mode], n_steps, first_token, pos, slot)
                if ref != ids:
                    g["persist_off"] = ("the persistent step's tokens differed from the "
                                        "ordinary path's")
                    self._say_path(g, mode, f"ordinary ({g['persist_off']})")
                else:
                    for k in kinds:
                        g["verified"][k] = g["verified"].get(k, 0) + n_steps
                    self._say_path(g, mode, None)
                return ref
        ids, _ = self._loop_run(g, g["lists"][mode], n_steps, first_token, pos, slot)
        return ids

    def _say_path(self, g: dict[str, Any], mode: str, text: str | None) -> None:
        """Records which path decoded (Model's repr and `fastllm bench` show it)."""
        if text is None:
            launches, ordinary = g["path"][mode]
            text = (f"persistent ({launches} merged launches + {ordinary} ordinary dispatches "
                    f"a step, {self.be.persistent.describe()})")
        self.be.decode_path = text

    def _persistent_lists(self, g: dict[str, Any], mode: str) -> dict[str, tuple] | None:
        """The step lists of `mode` with the persistent step kernels, or None where they are
        off (FASTLLM_WEBGPU_PERSISTENT, the adapter, the probe, or a mismatch)."""
        pers = self.be.persistent
        if not pers.usable() or "persist_off" in g:
            why = pers.refused or g.get("persist_off")
            self.be.decode_path = f"ordinary (persistent off: {why})"
            return None
        if mode not in g["plists"]:
            with self.be.errors("building the persistent step"):
                short, g["path"][mode] = self._persistent_list(g, mode, "short")
            if g["path"][mode][0] == 0:
                g["persist_off"] = "no run of dispatches merges"
                self.be.decode_path = f"ordinary (persistent off: {g['persist_off']})"
                return None
            g["plists"][mode] = _Lazy(lambda kind: self._persistent_list(g, mode, kind)[0])
            g["plists"][mode]["short"] = short
        return g["plists"][mode]

    def _persistent_list(self, g: dict[str, Any], mode: str, kind: str):
        """((dispatches, raw) of the persistent list of `kind`, (merged launches, ordinary
        dispatches) in it)."""
        specs = [(p, b, grid) for p, b, grid, when in self._made
                 if when in (None, kind)] + list(g["tails"][mode])
        d, merged = lower(self, specs, bytes(self._args), f"persistent {kind}")
        return (d, self._raw_list(d)), (merged, len(d) - merged)

    def _persist_ctl(self):
        """The persistent step's counters and timeout flag (one buffer for all its launches:
        a launch after a timeout sees the flag and stops at once)."""
        if self._pctl is None:
            self._pctl = self._buf(4 * CTL_MAX, "STORAGE|COPY_DST|COPY_SRC", "persistent ctl")
            self._pctl_read = self._buf(4 * CTL_WORDS, "MAP_READ|COPY_DST", "persistent flag",
                                        binding=False)
            self.be.queue.write_buffer(self._pctl, 0, np.zeros(CTL_MAX, np.uint32))
        return self._pctl

    def _loop_run(self, g: dict[str, Any], lists: dict[str, tuple], n_steps: int,
                  first_token: int, pos: int, slot: int,
                  persistent: bool = False) -> tuple[list[int], int]:
        """One run of the loop on `lists`: (the tokens, the persistent launches' flag bits:
        persist.TIMEOUT, LOOP_LIMIT)."""
        q, dev = self.be.queue, self.be.device
        q.write_buffer(self.tokens, 0, np.array([first_token], np.int32))
        q.write_buffer(self.step, 0, np.array([pos, 1, pos + 1, slot], np.uint32))
        if persistent:
            q.write_buffer(self._persist_ctl(), 0, np.zeros(CTL_MAX, np.uint32))
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
                dispatches, raw = lists[kind]
                self._record(enc, raw, dispatches, j - i)
                i = j
            if done + k == n_steps:
                enc.copy_buffer_to_buffer(g["hist"], 0, out, 0, 4 * n_steps)
                if persistent:
                    enc.copy_buffer_to_buffer(self._pctl, 0, self._pctl_read, 0, 4 * CTL_WORDS)
            q.submit([enc.finish()])
            done += k
            k = min(2 * k, GREEDY_PASS)
        out.map_sync("READ", 0, 4 * n_steps)
        ids = np.frombuffer(out.read_mapped(0, 4 * n_steps, copy=True), np.int32)
        out.unmap()
        flag = 0
        if persistent:
            self._pctl_read.map_sync("READ")
            flag = int(np.frombuffer(self._pctl_read.read_mapped(copy=True), np.uint32)[0])
            self._pctl_read.unmap()
        return [int(t) for t in ids], flag

    # -- rows mode: one step of several sequences, each row sampled by its own chain ---------
    def run_rows_sampled(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                         params: Sequence[Any], uniforms: np.ndarray,
                         windows: Sequence[Sequence[int]],
                         masks: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """The step's B rows and their sampling (sample_rows.py) in one command buffer: only the
        B tokens (and the log-probabilities rows ask for) come back. Rows whose chain the device
        cannot run (sampling.device_ok) are sampled on the host from their read-back logits.
        masks[r]: row r's allowed-token bitmask (a grammar's), uploaded and applied on the
        device (or by sample_row for a host row)."""
        from ...sampling import device_ok, sample_row

        self._rows_ready(tokens, slots, positions)
        v = self.g.outputs.get("logits")
        if v is None or v.shape[0] != self.n:
            raise ValueError("run_rows_sampled needs a rows-mode program with every row's "
                             "'logits'")
        host = [r for r, p in enumerate(params) if not device_ok(p)]
        be = self.be
        with be.errors("a batched decode step"):
            s, stage = self._row_sampler(v.cols)
            s.prepare(params, uniforms, windows, masks)
            enc = be.device.create_command_encoder()
            # the split attention's list once a row may see more than attn_direct_max
            dispatches, raw = self._lists[self._kind(int(np.max(positions)))]
            self._record(enc, raw, dispatches)
            s.encode(enc, self.buf(v), self.n)
            nb = s.read_nbytes()
            enc.copy_buffer_to_buffer(s.out, 0, stage, 0, nb)
            src, lstage, _ = self.outputs["logits"]
            if host:
                enc.copy_buffer_to_buffer(src, 0, lstage, 0, 4 * self.n * v.cols)
            be.queue.submit([enc.finish()])
            stage.map_sync("READ", 0, nb)
            got = s.unpack(stage.read_mapped(0, nb, copy=True))
            stage.unmap()
            if host:
                lstage.map_sync("READ")
                logits = np.frombuffer(lstage.read_mapped(0, 4 * self.n * v.cols, copy=True),
                                       np.float32).reshape(self.n, v.cols)
                lstage.unmap()
                for r in host:
                    got[r] = sample_row(logits[r], params[r], float(uniforms[r]), windows[r],
                                        masks[r] if masks is not None else None)
        return got

    def run_rows_chain(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                       params: Sequence[Any], uniforms: np.ndarray) -> np.ndarray:
        """The steps back to back in one command buffer: between two steps the sampler's ids
        are copied into the next step's token input, and the next positions and the rows'
        uniform numbers into their buffers, so nothing is read back until the end (a submit and
        read-back round trip per token costs ~0.3 ms on an H100, ../shared/bench/README.md)."""
        from ...sampling import device_ok
        from ..sample_rows import pack
        from .sample_rows import ROW_BYTES

        u = np.asarray(uniforms, np.float32)
        k, b = u.shape
        if (b != self.n or any(not device_ok(p) or p.penalized or p.logprobs is not None
                               for p in params)):
            return super().run_rows_chain(tokens, slots, positions, params, uniforms)
        self._rows_ready(tokens, slots, positions)
        pos = np.asarray(positions, np.int64).reshape(-1)
        sl = np.asarray(slots, np.int64).reshape(-1)
        for s_, p_ in zip(sl, pos):
            self._ready(int(p_), k, int(s_))
        v = self.g.outputs["logits"]
        be = self.be
        with be.errors("batched decode steps"):
            s = self._row_sampler(v.cols)[0]
            chain = self._rows_chain_bufs(k)
            s.prepare(params, u[0], [()] * b)
            args = np.concatenate([pack(params, u[i], [()] * b, self.n)[0] for i in range(k)])
            rows = np.stack([np.stack([sl, pos + i], 1) for i in range(k)]).astype(np.uint32)
            q = be.queue
            q.write_buffer(chain["args"], 0, args.tobytes())
            q.write_buffer(chain["rows"], 0, rows.tobytes())
            enc = be.device.create_command_encoder()
            for i in range(k):
                dispatches, raw = self._lists[self._kind(int(pos.max()) + i)]
                if i:
                    enc.copy_buffer_to_buffer(chain["rows"], 8 * b * i, self.rows, 0, 8 * b)
                    enc.copy_buffer_to_buffer(s.out, 0, self.tokens, 0, 4 * b)
                    enc.copy_buffer_to_buffer(chain["args"], ROW_BYTES * b * i, s.rows, 0,
                                              ROW_BYTES * b)
                self._record(enc, raw, dispatches)
                s.encode(enc, self.buf(v), b)
                enc.copy_buffer_to_buffer(s.out, 0, chain["hist"], 4 * b * i, 4 * b)
            enc.copy_buffer_to_buffer(chain["hist"], 0, chain["stage"], 0, 4 * b * k)
            q.submit([enc.finish()])
            chain["stage"].map_sync("READ", 0, 4 * b * k)
            ids = np.frombuffer(chain["stage"].read_mapped(0, 4 * b * k, copy=True), np.int32)
            chain["stage"].unmap()
        return ids.reshape(k, b).copy()

    def _rows_chain_bufs(self, k: int) -> dict[str, Any]:
        """run_rows_chain's buffers for k steps (grown to a power of two)."""
        from .sample_rows import ROW_BYTES

        c = self._rows_chain
        if c is None or c["cap"] < k:
            if c is not None:
                for name in ("args", "rows", "hist", "stage"):
                    self.be.free(c[name])
                    self._own.remove(c[name])
            cap, b = 1 << (k - 1).bit_length(), self.n
            c = self._rows_chain = {
                "cap": cap,
                "args": self._buf(ROW_BYTES * b * cap, "STORAGE|COPY_SRC|COPY_DST", "chain args"),
                "rows": self._buf(8 * b * cap, "STORAGE|COPY_SRC|COPY_DST", "chain rows"),
                "hist": self._buf(4 * b * cap, "STORAGE|COPY_SRC|COPY_DST", "chain tokens"),
                "stage": self._buf(4 * b * cap, "MAP_READ|COPY_DST", "chain tokens read",
                                   binding=False)}
        return c

    def _row_sampler(self, n_vocab: int) -> tuple[Any, Any]:
        """The rows-mode program's RowSampler and the mapped buffer its output is read through,
        made on first use (run_rows_sampled, run_rows_chain)."""
        from .sample_rows import RowSampler

        if self._rows_sampler is None:
            self._rows_sampler = RowSampler(self.be, n_vocab, self.n)
            self._rows_stage = self._buf(self._rows_sampler.out.size, "MAP_READ|COPY_DST",
                                         "row sampling read", binding=False)
        return self._rows_sampler, self._rows_stage
