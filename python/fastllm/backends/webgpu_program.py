"""Lowering of a Graph to a fixed list of WebGPU dispatches, and its replay.

`compile` does all the work once: activation buffers (a value's buffer is reused by later values
once its last reader has run), kernel arguments (all in one uniform buffer, each at its own
aligned offset), pipelines, bind groups and the dispatch list. `run` writes the token ids and
the 16-byte step uniform (kargs_step), encodes the fixed list into one command buffer, submits it
and reads back only the graph's outputs (DESIGN.md, principle 5).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kargs
from ..errors import ContextOverflowError, UnsupportedError
from ..quants import GGMLType
from . import webgpu_repack as repack
from .base import Graph, Node, Program, Value, Weight

if TYPE_CHECKING:
    from .webgpu import WebGPUBackend

# Mat-vec shape (mul_mv.wgsl). Measured on an H100 (Vulkan, 4096 x 4096): 64 threads per row and
# 4 rows per thread group beat fewer threads, fewer or more rows, and several units per pass.
MV_MAX_M = 8  # token rows up to which mul_mat uses the mat-vec kernel (one pass over the weights)
MV_TPR_MAX = 64  # most threads sharing one weight row
MV_UNR = 1  # units per thread per pass
MV_R = 4  # weight rows per thread group (below 4, or a multiple of 4)
MV_WG = 64  # workgroup size
MM_BN = 64  # mul_mm.wgsl's BN (rows of W per tile)
EW_WG = 64  # workgroup size of elementwise.wgsl, rope.wgsl, kv.wgsl and attention.wgsl
_FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _nbytes(v: Value) -> int:
    return math.prod(v.shape) * 4


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


class WebGPUProgram(Program):
    """A graph compiled for one WebGPU device; run() replays it."""

    def __init__(self, backend: WebGPUBackend, graph: Graph):
        self.be = backend
        self.g = graph
        self.n = graph.n_tokens
        self._own: list[Any] = []  # buffers this program allocated
        self._build()

    def _build(self) -> None:
        backend, graph = self.be, self.g
        self._kv_version = backend.kv_version  # bind groups hold the KV cache's buffers
        self._specs: list[tuple] = []  # (pipeline, entries, grid) until bind groups exist
        self._args = bytearray()
        with backend.errors("compiling a graph"):
            self.tokens = self._buf(self.n * 4, "STORAGE|COPY_DST", "tokens")
            self.step = self._buf(16, "UNIFORM|COPY_DST", "step")
            self._plan()
            for node in graph.nodes:
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
        for i, node in enumerate(g.nodes):
            for a in node.args:
                if isinstance(a, Value):
                    last[a.id] = i
        keep = {v.id for v in g.outputs.values()}
        sizes: list[int] = []
        free: list[int] = []
        slot_of: dict[int, int] = {}
        for i, node in enumerate(g.nodes):
            v = node.out
            if v is not None:
                need = _nbytes(v)
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
                slot_of[v.id] = s
                if v.id not in keep and v.id not in last:
                    free.append(s)  # never read
            for a in node.args:
                if (isinstance(a, Value) and a.id in slot_of and last.get(a.id) == i
                        and a.id not in keep and slot_of[a.id] not in free):
                    free.append(slot_of[a.id])
        self.slots = [self._buf(s, "STORAGE|COPY_SRC|COPY_DST", f"act{i}")
                      for i, s in enumerate(sizes)]
        self.slot_of = slot_of

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
                  f16_tile: bool = False) -> None:
        p = self.be.pipeline(file, entry, wtype, consts, f16_tile)
        gx, gy, gz = (list(grid) + [1, 1])[:3]
        cap = self.be.limits.get("max-compute-workgroups-per-dimension", 65535)
        if max(gx, gy, gz) > cap:
            raise UnsupportedError(f"webgpu: {entry} needs a grid of {grid}, over the device's "
                                   f"{cap} per dimension")
        self._specs.append((p, bindings, (gx, gy, gz)))

    def _grid1(self, threads: int, wg: int = EW_WG) -> tuple[int, int]:
        """A 2-D grid of at least `threads` threads (kernels rebuild the linear index)."""
        n = max(1, -(-threads // wg))
        x = min(n, 32768)
        return x, -(-n // x)

    def _finish(self) -> None:
        dev = self.be.device
        ubuf = self._buf(max(16, len(self._args)), "UNIFORM|COPY_DST", "kernel args")
        if self._args:
            self.be.queue.write_buffer(ubuf, 0, bytes(self._args)
                                       + bytes(-len(self._args) % 4))
        self.dispatches = []
        for p, bindings, grid in self._specs:
            entries = []
            for b, res in sorted(bindings.items()):
                if isinstance(res, tuple) and res[0] == "args":
                    entries.append({"binding": b, "resource": {"buffer": ubuf, "offset": res[1],
                                                               "size": res[2]}})
                elif res is self.step:
                    entries.append({"binding": b, "resource": {"buffer": res, "offset": 0,
                                                               "size": 16}})
                else:
                    entries.append({"binding": b, "resource": {"buffer": res}})
            bg = dev.create_bind_group(layout=p.get_bind_group_layout(0), entries=entries)
            self.dispatches.append((p, bg, grid))
        self._specs = []

    # -- ops -----------------------------------------------------------------------------------
    def _op_get_rows(self, node: Node) -> None:
        w, ids = node.args
        h = w.handle
        n = ids.shape[0]
        for part in h.parts:
            b = {0: self._arg(("kargs_get_rows", {"n_rows": n, "n_cols": h.k, "n_vocab": h.n}),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: self.buf(ids), 2: self.buf(node.out)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            self._dispatch("get_rows.wgsl", f"kernel_get_rows_{h.tname}", b,
                           (-(-8 * h.units // 64), n), wtype=h.tname)

    def _op_mul_mat(self, node: Node) -> None:
        x, w = node.args
        h = w.handle
        m, k = x.shape[0], x.cols
        if k % 4:
            raise UnsupportedError(f"webgpu: mul_mat with rows of {k} values (a multiple of 4 "
                                   f"is needed) for {w.name!r}")
        t = GGMLType(w.type)
        words = sum(repack.array_sizes(t, 2, k)) // 8
        for part in h.parts:
            b = {0: self._arg(("kargs_mul_mat", {"M": m, "N": h.n, "K": k, "w_row_words": words}),
                              ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                 1: self.buf(x), 2: self.buf(node.out)}
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            if m <= MV_MAX_M:
                tpr = min(MV_TPR_MAX, MV_WG, _pow2_floor(h.units))
                rows = MV_R * (MV_WG // tpr)
                n_wg = -(-part.n_rows // rows)
                cap = self.be.limits.get("max-compute-workgroups-per-dimension", 65535)
                gz = -(-n_wg // cap)
                self._dispatch("mul_mv.wgsl", f"kernel_mul_mv_{h.tname}_f32", b,
                               (-(-n_wg // gz), 1, gz), wtype=h.tname,
                               consts={"TPR": tpr, "R": MV_R, "C": m, "UNR": MV_UNR,
                                       "WG": MV_WG})
            else:
                bm = 16 if m <= 16 else 32 if m <= 32 else 64  # tokens per tile
                self._dispatch("mul_mm.wgsl", f"kernel_mul_mm_{h.tname}_f32", b,
                               (-(-part.n_rows // MM_BN), -(-m // bm)), wtype=h.tname,
                               consts={"BM": bm, "WG": bm * MM_BN // 16},
                               f16_tile=self.be.f16 and t not in _FLOATS)

    def _binary(self, node: Node, entry: str) -> None:
        a, b = node.args
        n = math.prod(a.shape)
        nb = math.prod(b.shape)
        if n % nb:
            raise UnsupportedError(f"webgpu: {node.op} of shapes {a.shape} and {b.shape}")
        self._dispatch("elementwise.wgsl", entry,
                       {0: self._arg(("kargs_binary", {"n": n, "b_period": nb})), 1: self.buf(a),
                        2: self.buf(b), 3: self.buf(node.out)}, self._grid1(n))

    def _op_add(self, node: Node) -> None:
        self._binary(node, "kernel_add_f32")

    def _op_mul(self, node: Node) -> None:
        self._binary(node, "kernel_mul_f32")

    def _op_scale(self, node: Node) -> None:
        (a,) = node.args
        n = math.prod(a.shape)
        args = {"n": n, "b_period": 1, "s": node.attrs["s"]}
        self._dispatch("elementwise.wgsl", "kernel_scale_f32",
                       {0: self._arg(("kargs_binary", args)), 1: self.buf(a),
                        3: self.buf(node.out)}, self._grid1(n))

    def _glu(self, node: Node, entry: str) -> None:
        gate, up = node.args
        n = math.prod(gate.shape)
        self._dispatch("elementwise.wgsl", entry,
                       {0: self._arg(("kargs_unary", {"n": n})), 1: self.buf(gate),
                        2: self.buf(up), 3: self.buf(node.out)}, self._grid1(n))

    def _op_swiglu(self, node: Node) -> None:
        self._glu(node, "kernel_swiglu_f32")

    def _op_geglu(self, node: Node) -> None:
        self._glu(node, "kernel_geglu_f32")

    def _op_last_row(self, node: Node) -> None:
        (x,) = node.args
        self._dispatch("elementwise.wgsl", "kernel_last_row_f32",
                       {0: self._arg(("kargs_unary", {"n": x.cols})), 1: self.buf(x),
                        3: self.buf(node.out), 4: self.step}, self._grid1(x.cols))

    def _op_rms_norm(self, node: Node) -> None:
        x, w = node.args
        at = node.attrs
        rows, cols = math.prod(x.shape[:-1]), x.cols
        args = {"n_rows": rows, "n_cols": cols, "group": at["group"],
                "has_weight": int(w is not None), "eps": at["eps"]}
        self._dispatch("norm.wgsl", "kernel_rms_norm_f32",
                       {0: self._arg(("kargs_rms_norm", args)), 1: self.buf(x),
                        2: self.buf(w) if w is not None else self.be.dummy,
                        3: self.buf(node.out)}, (cols // at["group"], rows))

    def _rope_table(self, n_rot: int, base: float, freq_scale: float, ff: Weight | None):
        """inv_freq[i] = freq_scale * base^(-2i/n_rot) / ff[i], computed in float64 once."""
        key = (n_rot, base, freq_scale, id(ff.handle) if ff is not None else None)
        buf = self.be.rope_tables.get(key)
        if buf is None:
            inv = freq_scale * base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
            if ff is not None:
                self.be.vector(ff)
                inv = inv / ff.handle.host.reshape(-1)[: n_rot // 2].astype(np.float64)
            buf = self.be._upload(inv.astype(np.float32).view(np.uint8), "rope inv_freq")
            self.be.rope_tables[key] = buf
        return buf

    def _op_rope(self, node: Node) -> None:
        x, ff = node.args
        at = node.attrs
        rows = x.shape[0]
        if at["head_dim"] % 2:
            raise UnsupportedError(f"webgpu: rope with an odd head_dim {at['head_dim']}")
        args = {"n_rows": rows, "n_head": at["n_head"], "head_dim": at["head_dim"],
                "n_rot": at["n_rot"], "base": at["base"], "freq_scale": at["freq_scale"],
                "neox": int(at["neox"]), "has_freq_factors": int(ff is not None)}
        table = self._rope_table(at["n_rot"], at["base"], at["freq_scale"], ff)
        self._dispatch("rope.wgsl", "kernel_rope_f32",
                       {0: self._arg(("kargs_rope", args)), 1: self.step, 2: self.buf(x),
                        3: table, 4: self.buf(node.out)},
                       self._grid1(rows * at["n_head"] * at["head_dim"] // 2))

    def _kv(self, layer: int):
        spec = self.be.spec
        if spec is None or layer >= spec.n_layers:
            raise UnsupportedError(f"webgpu: layer {layer} has no KV cache (call init_kv first)")
        return spec.sizes[layer], spec.kv_dim[layer], self.be.kv[layer]

    def _op_kv_store(self, node: Node) -> None:
        k, v = node.args
        ring, dim, (kc, vc) = self._kv(node.attrs["layer"])
        n = k.shape[0]
        if k.cols != dim or v.cols != dim:
            raise UnsupportedError(f"webgpu: kv_store of {k.cols} values into a cache of {dim}")
        args = {"n_rows": n, "kv_dim": dim, "ring": ring}
        self._dispatch("kv.wgsl", "kernel_kv_store_f32",
                       {0: self._arg(("kargs_kv_store", args)), 1: self.step, 2: self.buf(k),
                        3: self.buf(v), 4: kc, 5: vc}, self._grid1(n * dim))

    def _op_attention(self, node: Node) -> None:
        (q,) = node.args
        at = node.attrs
        ring, dim, (kc, vc) = self._kv(at["layer"])
        nh, nkv, d = at["n_head"], at["n_kv_head"], at["head_dim"]
        if d % 4 or nh % nkv or nkv * d != dim:
            raise UnsupportedError(f"webgpu: attention with head_dim {d}, {nh} heads, {nkv} KV "
                                   f"heads over a cache of {dim} values")
        g = nh // nkv
        n = q.shape[0]
        args = self._arg(("kargs_attention", {
            "n_rows": n, "n_head": nh, "n_kv_head": nkv, "head_dim": d, "scale": at["scale"],
            "softcap": at["softcap"], "window": at["window"], "ring": ring}))
        b = {0: args, 1: self.step, 2: self.buf(q), 3: kc, 4: vc, 5: self.buf(node.out)}
        if n == 1:
            visible = min(at["window"], ring) if at["window"] else ring
            nsplit = max(1, min(16, -(-visible // 256)))
            consts = {"G": g, "D": d, "NSPLIT": nsplit}
            part = self._buf(nh * nsplit * (d + 2) * 4, "STORAGE", "attention partials")
            dec = {i: r for i, r in b.items() if i != 5}  # partials, not the output
            self._dispatch("attn_decode.wgsl", "kernel_attn_decode_f32", {**dec, 6: part},
                           (nsplit, nkv), consts=consts)
            rargs = self._arg(("kargs_attn_reduce", {"n_rows": 1, "n_head": nh, "head_dim": d,
                                                         "n_splits": nsplit}))
            self._dispatch("attn_decode.wgsl", "kernel_attn_reduce_f32",
                           {0: rargs, 5: self.buf(node.out), 6: part}, (nh,), consts=consts)
            return
        d4 = d // 4
        tpq = min(16, _pow2_floor(max(1, d // 16)))
        while d4 % tpq:
            tpq //= 2
        bq = EW_WG // tpq
        limit = self.be.limits["max-compute-workgroup-storage-size"] // 4  # floats

        def floats(bk: int) -> int:  # attention.wgsl's tiles
            return bq * d + bk * (d + 4) + bq * bk

        bk = 64
        while bk > 4 and floats(bk) > limit:
            bk //= 2
        if floats(bk) > limit:
            raise UnsupportedError(f"webgpu: head_dim {d} needs more workgroup memory than the "
                                   f"device has")
        consts = {"G": g, "D": d, "TPQ": tpq, "BK": bk}
        self._dispatch("attention.wgsl", "kernel_attn_prefill_f32", b, (-(-n * g // bq), nkv),
                       consts=consts)

    def _op_argmax(self, node: Node) -> None:
        (x,) = node.args
        rows = math.prod(x.shape[:-1])
        self._dispatch("argmax.wgsl", "kernel_argmax_f32",
                       {0: self._arg(("kargs_argmax", {"n_rows": rows, "n_cols": x.cols})),
                        1: self.buf(x), 2: self.buf(node.out)}, (rows,))

    # -- running -------------------------------------------------------------------------------
    def run(self, tokens: np.ndarray, pos: int) -> dict[str, np.ndarray]:
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if tokens.shape[0] != self.n:
            raise ValueError(f"this program runs {self.n} tokens, got {tokens.shape[0]}")
        spec = self.be.spec
        if pos < 0 or (spec is not None and pos + self.n > spec.n_ctx):
            raise ContextOverflowError(f"positions {pos}..{pos + self.n - 1} do not fit the "
                                       f"context of {spec.n_ctx if spec else 0}")
        be = self.be
        if self._kv_version != be.kv_version:  # init_kv replaced the cache: bind it anew
            self.release()
            self._build()
        with be.errors("running a graph"):
            q = be.queue
            q.write_buffer(self.tokens, 0, tokens)
            q.write_buffer(self.step, 0, np.array([pos, self.n, pos + self.n, 0], np.uint32))
            enc = be.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            last = None
            for p, bg, (x, y, z) in self.dispatches:
                if p is not last:
                    cp.set_pipeline(p)
                    last = p
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(x, y, z)
            cp.end()
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

    def poison(self) -> None:
        """Fill every activation buffer with NaN (tests: a kernel that skips a write shows)."""
        with self.be.errors("poisoning buffers"):
            for b in self.slots:
                self.be.queue.write_buffer(b, 0, np.full(b.size // 4, np.nan, np.float32))

    def release(self) -> None:
        for b in self._own:
            b.destroy()
        self._own = []
        self.dispatches = []
