"""Mat-mul lowering of the WebGPU backend, as a mixin of WebGPUProgram: mul_mat and its fused
forms (mul_mv_fused, mul_mv_multi from fuse.py) become mat-vec dispatches (mul_mv.wgsl,
mul_mv_multi.wgsl) for up to MV_MAX_M token rows and tiled mat-mat dispatches (mul_mm.wgsl)
beyond. The shape constants live here: benchmarks sweep them (MV_FIXED, MM8_MIN_WG, ...).
"""

from __future__ import annotations

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Node, Value, Weight
from ..fuse import reader_counts
from . import repack, shaders

# Mat-vec shape (mul_mv.wgsl): rows per thread group R, threads per row TPR, workgroup size.
# Measured on an H100 (Vulkan, 2026-11-22, weights rotated through more copies than the L2
# holds, clocks warmed up; benchmarks/NOTES.md, section 6): for one token row the K-quants,
# whose arithmetic is the limit, are fastest with few rows per group (2; Q6_K 4) and 64 threads
# per row up to rows of 4096 values, 128 beyond; the other types keep 8 rows per group on big
# matrices (>= 4096 rows or rows of >= 8192 values) and 2 on small ones.
MVQ_ROWS_C = 8  # rows mode: token rows per integer mat-vec workgroup (its weights read once)
MV_MAX_M = 8  # token rows up to which mul_mat uses the mat-vec kernel (one pass over the weights)
MV_TPR_MAX = 128  # most threads sharing one weight row
MV_UNR = 1  # units per thread per pass
MV_R = 4  # weight rows per thread group for 2..MV_MAX_M token rows (< 4 or a multiple of 4)
MV_WG = 128  # workgroup size for 2..MV_MAX_M token rows
MV_FIXED: tuple[int, int, int, int] | None = None  # (R, TPR, UNR, WG) for all: shape sweeps
# one token row over >= 16384 rows (the float types' gate + up in one mul_mv_multi): 2 rows per
# group, not 8 (H100, 8B F16 decode: 144.0 -> 146.1 tok/s; 64 threads per row lost 3.5%)
MV1_R_BIG = 2
# ... and over rows of >= 256 units (8192 values: the F16 down projection), 2 rows per group of
# 64 threads (8B F16 decode 144.9 / 145.8 -> 148.0 / 148.0; 64 threads with 8 rows lost 3%)
MV1_R_LONG = 2
MV1_TPR_LONG = 64


_KQUANTS = ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K")


def mv_shape(n_rows: int, units: int, m: int, tname: str = "",
             norm: bool = False) -> tuple[int, int, int, int]:
    """(R, TPR, UNR, WG) of a mat-vec of type `tname` over n_rows rows of `units` units for m
    token rows; `norm`: the kernel norms x itself, once per workgroup (those keep 8 rows per
    group on big matrices whatever the type: with 2, the norm's reads of x outweigh the rest)."""
    if MV_FIXED is not None:
        r, tpr, unr, wg = MV_FIXED
    elif m == 1 and tname in _KQUANTS and not norm:
        r = 4 if tname == "q6_K" else 2
        tpr = wg = 64 if units <= 128 else 128
        unr = 1
    elif m == 1:
        r = 8 if n_rows >= 4096 or units >= 256 else 2
        if n_rows >= 16384 and not norm:
            r = MV1_R_BIG
        tpr = MV_TPR_MAX
        if units >= 256 and not norm:
            r, tpr = MV1_R_LONG, MV1_TPR_LONG
        wg = max(64, min(MV_TPR_MAX, _pow2_floor(units)))
        unr = 1
    else:
        r, tpr, unr, wg = MV_R, MV_TPR_MAX, MV_UNR, MV_WG
    return r, min(tpr, wg, _pow2_floor(units)), unr, wg


# Integer mat-vec (quantize_x.wgsl + mul_mvq.wgsl) for one token row of these types. Shapes
# from a sweep on an H100 (Vulkan, 2026-11-22, 8 weight copies rotated past the L2, warm clocks;
# benchmarks/NOTES.md, section 7): Q8_0 one row per 128-thread group; Q4_K one row per 64 threads
# in workgroups of 256; Q6_K 4 rows per 128 threads on matrices of >= 4096 rows, else 1.
# MXFP4 (not measured yet) as Q8_0's shape: its levels are integers, one scale a block of 32
Q8_TYPES = ("q8_0", "q4_K", "q6_K", "mxfp4")
MVQ_FIXED: tuple[int, int, int] | None = None  # (R, TPR, WG) for all: shape sweeps
QX_WG = 256  # quantize_x.wgsl: threads per workgroup (8 per block of 32 values)
# kernel_mul_mv_glu_q8: threads per row (32 rows of gate and up per workgroup): 8 on rows of
# >= 128 units, else 16 (H100, greedy tg128, 8 vs 16: 8B Q4_K_M 337 vs 322 tok/s, 1B Q4_K_M
# 1,104 vs 1,146, 1B Q8_0 1,041 vs 1,063; 4 lost on both)
GLU_TPR: int | None = None  # fixed, for sweeps


def glu_tpr(units: int) -> int:
    return GLU_TPR or (8 if units >= 128 else 16)


PRENORM = 1  # a mat-vec + residual writes the next norm's quantized x (mul_mvq.wgsl's resq)


def mvq_shape_blocks(n_rows: int, units: int, tname: str, max_wg: int = 1024,
                     wg_bytes: int = 16384) -> tuple[int, int, int]:
    """(R, TPR, WG) of mul_mvq.wgsl's resq, whose workgroups hold whole blocks of 32 rows: on
    matrices of >= 4096 rows mvq_shape grown to 32 rows (wider workgroups, then fewer threads
    per row), below that 2 rows per 64 threads in 1024 (fewer workgroups than the H100 has SMs
    either way; a sweep on it, 2026-11-23: 1B Q4_K_M 1,116 -> 1,182 tok/s, the 8B 330 vs 327);
    within the device's workgroup size and memory (16 bytes a thread for the reductions)."""
    if n_rows >= 4096:
        r, tpr, wg = mvq_shape(n_rows, units, tname)
    else:
        r, tpr, wg = 2, min(64, _pow2_floor(units)), 1024
    cap = min(max_wg, _pow2_floor(max(32, (wg_bytes - 4 * 1024) // 16)))
    wg = min(wg, cap)
    tpr = min(tpr, wg)
    while r * (wg // tpr) % 32:
        if wg * 2 <= cap:
            wg *= 2
        else:
            tpr //= 2
    return r, tpr, wg


def mvq_shape(n_rows: int, units: int, tname: str) -> tuple[int, int, int]:
    """(R, TPR, WG) of an integer mat-vec (mul_mvq.wgsl, mul_mv_multi's q8 form) of type tname
    over n_rows rows of `units` units."""
    if MVQ_FIXED is not None:
        r, tpr, wg = MVQ_FIXED
    elif tname == "q4_K":
        r, tpr, wg = 1, 64, 256
    elif tname == "q6_K":
        r, tpr, wg = (4 if n_rows >= 4096 else 1), 128, 128
    else:
        r, tpr, wg = 1, 128, 128
    return r, min(tpr, wg, _pow2_floor(units)), wg


MM_BN = 64  # mul_mm.wgsl's BN (rows of W per tile) for 4 x 4 outputs per thread
# ... halved while its grid has fewer than MM_MIN_WG workgroups (H100, 512 tokens, q4_K:
# 512 x 2048 8.4 -> 12.1 TFLOP/s, 1024 x 4096 17.1 -> 18.4; 2048 x 2048 21.7 -> 20.6)
MM_MIN_WG = 256
# Long batches over many rows take tiles of MM8_BM tokens x MM8_BN rows with MM8_TQ x MM8_RQ
# quads of outputs per thread (8 x 8) when that still makes MM8_MIN_WG workgroups: with a
# quarter of the threads it needs ~2 groups per SM to hide its loads, and below that 4 x 4 per
# thread wins (H100, 512 tokens, q4_K: 8192 x 2048 0.99 vs 1.31 ms, 2048 x 2048 0.55 vs 0.39
# ms; benchmarks/NOTES.md, sections 5 and 8)
MM8_BM = 128
MM8_BN = 64
MM8_TQ = 2
MM8_RQ = 2
MM8_MIN_WG = 256
# units of K per tile step: two halve the barriers and tile fills per unit, but cost the 8 x 8
# tiles more than that (twice the workgroup memory and unrolled code per step; H100, 512
# tokens: 14336 x 4096 q4_K 31.1 -> 21.7 TFLOP/s; 4 x 4: 1024 x 4096 18.2 -> 19.7, 512 x 2048
# 12.0 -> 13.8)
MM8_UPS = 1
MM_UPS = 2
# Below MM8_NARROW_WG workgroups of 8 x 8 tiles, weights with a cheap dequant (Q8_0, floats)
# take tiles of 64 tokens x 64 rows with 8 x 4 outputs per thread: twice the workgroups (H100,
# 512 tokens, 4096 x 14336 f16 24.6 -> 30.1 TFLOP/s, q8_0 25.9 -> 28.4; Q4_K/Q6_K gain nothing)
MM8_NARROW_WG = 512
# 8 x 8 grids under MM_SPLIT_WG workgroups over rows of at least MM_SPLIT_K values split K in
# MM_SPLITS parts summed by a second dispatch (8B shape: q, o and down have 256 workgroups,
# gate and up 896. H100, 8B Q4_K_M pp512: none 1,859; under 512 in two parts 1,959, three
# 1,979 (1,971 in a later run), four 1,998; under 1024 in three 2,014, four 2,029)
MM_SPLIT_WG = 1024
MM_SPLIT_K = 4096
MM_SPLITS = 4
# 4 x 4 grids split too where their rows hold MM_SPLIT_K values or the grid of 64-row tiles is
# under MM_MIN_WG (H100, 512 tokens, q4_K: 1024 x 4096 19.5 -> 21.1 TFLOP/s, 2048 x 8192
# 22.9 -> 24.7, 512 x 2048 13.7 -> 18.5; 2048 x 2048 22.9 -> 22.7, so not there). The partial
# sums live in a slot of the program's activation planner, free again after the sum.
MM4_SPLIT = 1
# k steps per pass of mul_mm.wgsl's k loop (H100, 512 tokens, q4_K, TFLOP/s for KU 1 / 8 / 16:
# 14336 x 4096 32.1 / 34.8 / 22.4, 4096 x 4096 29.8 / 32.8 / 21.1, 1024 x 4096 (4 x 4)
# 21.1 / 22.3 / 21.2; 32 compiles as 1)
MM_KU = 8
# quantized weights' tiles store the x tile after the weight tile (its loads in flight during
# the dequantization; same sweep, KU 8: 14336 x 4096 q4_K 34.8 -> 35.0, q6_K 31.1 -> 32.7, q8_0
# 36.1 -> 37.3, 2048 x 2048 q6_K 19.9 -> 21.8); float weights before (f16 38.1 -> 36.2)
MM_X_LAST = 1
MM_F16_TILE = 1  # quantized weights' tiles (and sums) in f16 where the device has shader-f16
MM_F16_FLOAT = 1  # F16/BF16 weights' tiles in f16 too (x rounded to f16 as for quantized ones)
_FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_CHEAP = (GGMLType.Q8_0, *_FLOATS)


def mm_shape(n_rows: int, m: int, k: int, t: GGMLType, f16_tile: bool, parts: int,
             smem: int) -> tuple[int, int, int, int, int, int]:
    """(BM, BN, TQ, RQ, UPS, SPLITK) of a prefill mat-mat (mul_mm.wgsl) of m tokens over
    n_rows rows of k values of type t, for a device with smem bytes of workgroup memory."""
    tb = 2 if f16_tile else 4  # tiles: UPS * 32 k x (BM + BN) values of TILE
    wg8 = (-(-n_rows // MM8_BN)) * (-(-m // MM8_BM))
    if m >= MM8_BM and wg8 >= MM8_MIN_WG and MM8_UPS * 32 * (MM8_BM + MM8_BN) * tb <= smem:
        bm, bn, tq, rq = MM8_BM, MM8_BN, MM8_TQ, MM8_RQ
        if wg8 < MM8_NARROW_WG and t in _CHEAP:
            bm, bn, tq, rq = 64, 64, 2, 1
        split = wg8 < MM_SPLIT_WG and k >= MM_SPLIT_K and parts == 1
        return bm, bn, tq, rq, MM8_UPS, MM_SPLITS if split else 1
    bm = 16 if m <= 16 else 32 if m <= 32 else 64  # tokens per tile
    bn, ups = MM_BN, MM_UPS
    if (-(-n_rows // bn)) * (-(-m // bm)) < MM_MIN_WG:
        bn //= 2
    while ups > 1 and ups * 32 * (bm + bn) * tb > smem:
        ups //= 2  # little workgroup memory (WebGPU's base limit is 16 KB)
    wg64 = (-(-n_rows // MM_BN)) * (-(-m // bm))
    split = (MM4_SPLIT and parts == 1 and wg64 < MM_SPLIT_WG
             and (k >= MM_SPLIT_K or wg64 < MM_MIN_WG))
    return bm, bn, 1, 1, ups, MM_SPLITS if split else 1


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def _guard_k(t: GGMLType, k: int) -> bool:
    """GUARD_K of a weight's kernels: float rows are padded to whole units of 32, and only a
    padded row needs the kernels' test of each x column against K (a branch per x load, which
    costs a float mat-vec half its speed: benchmarks/NOTES.md, section 6)."""
    return t in _FLOATS and k % 32 != 0


def _norm_args(k: int, eps: float) -> tuple[str, dict]:
    """kargs_rms_norm of a mat-vec that norms its one token row x itself."""
    return ("kargs_rms_norm", {"n_rows": 1, "n_cols": k, "group": k, "has_weight": 1,
                               "eps": eps})


class MatmulOps:
    """The mat-mul ops of WebGPUProgram (uses its _arg, _dispatch, _buf, buf and be)."""

    def _int_dot_rows(self, w: Weight, x: Value) -> bool:
        """Whether a rows-mode product of several token rows takes the integer mat-vec
        (mul_mvq.wgsl over MVQ_ROWS_C token rows a workgroup): a batched decode step reads the
        weights once for every row."""
        return (self.be.int_dot and self.g.rows and x.shape[0] > 1 and x.cols % 32 == 0
                and w.handle.tname in Q8_TYPES)

    def _int_dot(self, ws: list[Weight], x: Value) -> bool:
        """Whether one-token mat-vecs of these weights take the integer path."""
        return (self.be.int_dot and x.shape[0] == 1 and x.cols % 32 == 0
                and all(w.handle.tname in Q8_TYPES for w in ws))

    def _prequantized(self) -> tuple[set[int], set[int]]:
        """Values that their producer writes directly as the integer mat-vec's x, where their
        one reader is an integer mat-vec of them. The value's own buffer (4 bytes a value)
        holds the bytes and scales (1.5 bytes a value). Returns (those values' ids, ids of the
        mul_mv_multi nodes that become kernel_mul_mv_glu_q8):
          decode attention -> output projection (+ residual): kernel_attn_reduce_q8;
          mul_mv_multi (gate, up) -> down projection of silu(gate) * up (+ residual): the glu
            kernel, writing silu(gate) * up quantized in the gate output's buffer."""
        produced = {n.out.id: n for n in self.nodes if n.out is not None}
        reads = reader_counts(self.nodes, self.g.outputs.values())
        values, glu = set(), set()
        for n in self.nodes:
            if n.op not in ("mul_mat", "mul_mv_fused") or n.args[0].shape[0] != 1:
                continue
            x, w = n.args[0], n.args[1]
            up = n.args[2] if n.op == "mul_mv_fused" else None
            if (n.op == "mul_mv_fused" and n.args[4] is not None) or not self._int_dot([w], x):
                continue
            src = produced.get(x.id)
            if src is None or reads.get(x.id) != 1:
                continue
            if (up is None and src.op in ("attention", "attn_decode_rope")
                    and src.attrs["head_dim"] % 32 == 0):
                values.add(x.id)
            elif (up is not None and src.op == "mul_mv_multi" and src.out is x
                  and src.attrs["also_out"] == [up] and reads.get(up.id) == 1
                  and self._int_dot(list(src.args[2:]), src.args[0])
                  and self._bindings_fit(src.args[2:], 2)):
                values.add(x.id)
                glu.add(id(src))
        return values, glu

    def _prenormed(self) -> dict[int, Node]:
        """Integer mat-vecs of a normed row whose producer writes their x (PRENORM): a mat-vec
        + residual (mul_mv_fused with res, over prequantized x, so it does not read the scratch
        it writes) right before the mul_mv_multi that norms its output. Returns {id of the
        producer node: the mul_mv_multi node}."""
        if not PRENORM:
            return {}
        out = {}
        for i in range(len(self.nodes) - 1):
            src, n = self.nodes[i], self.nodes[i + 1]
            if src.op != "mul_mv_fused" or n.op != "mul_mv_multi":
                continue
            sx, w, _up, res, nw = src.args  # with up, sx is prequantized as silu(sx) * up
            x, _nw, *ws = n.args
            if (x is not src.out or res is None or nw is not None
                    or sx.id not in self.prequantized or len(w.handle.parts) != 1
                    or w.handle.n % 32 or not self._int_dot([w], sx)
                    or not self._int_dot(ws, x)
                    or not (id(n) in self.glu_multi or self._bindings_fit(ws, 2 + len(ws)))):
                continue
            out[id(src)] = n
        return out

    def _xq_scratch(self, k: int):
        """The scratch buffer of quantized x (quantize_x.wgsl's layout) for rows of k values.
        Programs run their dispatches in order, so one serves every mat-vec of a step."""
        need = (k + k // 2) * max(1, self.n if self.g.rows else 1)  # bytes, a vec4 per 32
        if self._xq is None or self._xq.size < need:
            self._xq = self._buf(max(need, 256), "STORAGE", "quantized x")
        return self._xq

    def _bindings_fit(self, ws, others: int) -> bool:
        """Whether one dispatch can bind all of these weights (each of one part) besides
        `others` storage buffers, within the device's storage bindings per shader stage."""
        arrays = sum(len(w.handle.parts[0].buffers) for w in ws)
        storage = self.be.limits.get("max-storage-buffers-per-shader-stage", 8)
        return all(len(w.handle.parts) == 1 for w in ws) and others + arrays <= storage

    def _quantize_x(self, x: Value, up: Value | None = None, nw: Weight | None = None,
                    eps: float = 0.0):
        """x (as silu(x) * up with `up`, rms_norm(x) * nw with `nw`) quantized to bytes by
        quantize_x.wgsl into the scratch buffer (_xq_scratch), which is returned."""
        k = x.cols
        self._xq_scratch(k)
        variant = "norm" if nw is not None else "glu" if up is not None else "plain"
        b = {0: self._arg(("kargs_mul_mat", {"M": 1, "N": 0, "K": k, "w_row_words": 0}),
                          _norm_args(k, eps)),
             1: self.buf(x), 2: self._xq}
        if nw is not None:
            b[9] = self.buf(nw)
        if up is not None:
            b[7] = self.buf(up)
        gx, _, gz = self._mv_grid(-(-(k // 4) // QX_WG))
        self._dispatch("quantize_x.wgsl", "kernel_quantize_x_f32", b, (gx, x.shape[0], gz),
                       consts={"WG": QX_WG}, variant=variant)
        return self._xq

    def _mm_tile_f16(self, t: GGMLType) -> bool:
        """Whether a prefill mat-mat over weights of type t keeps its tiles (and sums) in f16."""
        return bool(MM_F16_TILE and self.be.f16
                    and (t not in _FLOATS or (MM_F16_FLOAT and t != GGMLType.F32)))

    def _mm_shape_of(self, x: Value, w: Weight, part) -> tuple[int, int, int, int, int, int]:
        shape = mm_shape(part.n_rows, x.shape[0], x.cols, GGMLType(w.type),
                         self._mm_tile_f16(GGMLType(w.type)), len(w.handle.parts),
                         self.be.limits.get("max-compute-workgroup-storage-size", 16384))
        if shape[5] * x.shape[0] * w.handle.n * 4 > self.be.max_binding:
            shape = (*shape[:5], 1)  # the planes would not fit one binding
        return shape

    def _scratch_bytes(self, node: Node) -> int:
        """Bytes of scratch a node needs while it runs (the planner gives it a slot): a split
        prefill mat-mat's planes of partial sums."""
        if node.op not in ("mul_mat", "mul_mv_fused", "mul_mm_glu"):
            return super()._scratch_bytes(node)  # the other ops' (delta.py)
        if node.args[0].shape[0] <= MV_MAX_M:
            return 0
        x, w = node.args[:2]
        splits = self._mm_shape_of(x, w, w.handle.parts[0])[5]
        return splits * x.shape[0] * w.handle.n * 4 if splits > 1 else 0

    def _mv_grid(self, n_wg: int) -> tuple[int, int, int]:
        """A mat-vec grid of n_wg workgroups as (x, 1, z): a huge vocabulary can pass the
        workgroups one dimension holds (the kernels rebuild z * x + x)."""
        gz = -(-n_wg // self.be.limits.get("max-compute-workgroups-per-dimension", 65535))
        return -(-n_wg // gz), 1, gz

    def _op_mul_mat(self, node: Node) -> None:
        x, w = node.args
        self._mul_mat(node, x, w)

    def _op_mul_mv_fused(self, node: Node) -> None:
        x, w, up, res, nw = node.args
        self._mul_mat(node, x, w, up, res, nw, node.attrs.get("eps", 0.0))

    def _op_mul_mm_glu(self, node: Node) -> None:
        """act(gate) * (x W^T), the activation applied as the mat-mat's results leave."""
        x, w, gate = node.args
        self._mul_mat(node, x, w, glu=(gate, node.attrs["act"]))

    def _op_mul_mv_multi(self, node: Node) -> None:
        """Several mat-vecs of one normed token row in one dispatch (fuse.py): args
        (x, nw, W_0, W_1, ...), outputs node.out and attrs["also_out"]. Where the device's
        bindings or a split weight rule it out, one norm mat-vec per weight instead."""
        x, nw, *ws = node.args
        outs = [node.out, *node.attrs["also_out"]]
        eps = node.attrs["eps"]
        k = x.cols
        if id(node) in self.glu_multi:  # its bindings were checked (x and its output)
            self._mul_mv_glu(node, x, nw, ws, eps)
            return
        if not self._bindings_fit(ws, 2 + len(ws)) or x.shape[0] != 1:  # x, nw, the outputs
            for w, out in zip(ws, outs):
                self._mul_mat(Node("mul_mv_fused", (x, w, None, None, nw), {"eps": eps}, out),
                              x, w, nw=nw, eps=eps)
            return
        units = ws[0].handle.units
        q8 = self._int_dot(ws, x)
        prenorm = id(node) in self.prenormed  # its producer wrote x
        if q8:
            xbuf = self._xq_scratch(k) if prenorm else self._quantize_x(x, nw=nw, eps=eps)
            r, tpr, wg = mvq_shape(sum(w.handle.n for w in ws), units, ws[0].handle.tname)
        else:
            xbuf = self.buf(x)
            r, tpr, _unr, wg = mv_shape(sum(w.handle.n for w in ws), units, 1)
        rows = r * (wg // tpr)
        ends, total = [], 0
        for w in ws:
            total += -(-w.handle.n // rows)
            ends.append(total)
        slots = {f"n_rows{i}": w.handle.n for i, w in enumerate(ws)}
        slots.update({f"wg_end{i}": e for i, e in enumerate(ends)})
        t0 = GGMLType(ws[0].type)
        words = sum(repack.array_sizes(t0, 2, k)) // 8
        b = {0: self._arg(("kargs_mul_mat", {"M": 1, "N": ws[0].handle.n, "K": k,
                                              "w_row_words": words}),
                          _norm_args(k, eps), ("kargs_mv_slots", slots)),
             1: xbuf}
        if not q8:
            b[9] = self.buf(nw)
        for s, (w, out) in enumerate(zip(ws, outs)):
            b[shaders.MULTI_OUT + s] = self.buf(out)
            b.update({shaders.MULTI_W + 4 * s + i: buf
                      for i, buf in enumerate(w.handle.parts[0].buffers)})
        guards = ({"PRENORM": prenorm} if q8 else
                  {f"GUARD_K_{s}": _guard_k(GGMLType(w.type), k) for s, w in enumerate(ws)})
        self._dispatch("mul_mv_multi.wgsl",
                       "kernel_mul_mv_multi_q8" if q8 else "kernel_mul_mv_multi_f32", b,
                       self._mv_grid(total), wtype=tuple(w.handle.tname for w in ws),
                       consts={"TPR": tpr, "R": r, "WG": wg, **guards})

    def _mul_mv_glu(self, node: Node, x: Value, nw: Weight, ws: list[Weight],
                    eps: float) -> None:
        """Gate and up of one normed token row, joined into the down projection's quantized x
        (mul_mv_multi.wgsl's kernel_mul_mv_glu_q8), written in the gate output's buffer."""
        k, n = x.cols, ws[0].handle.n
        prenorm = id(node) in self.prenormed  # its producer wrote x
        b = {0: self._arg(("kargs_mul_mat", {"M": 1, "N": n, "K": k, "w_row_words": 0}),
                          _norm_args(k, eps), ("kargs_mv_slots", {})),
             1: self._xq_scratch(k) if prenorm else self._quantize_x(x, nw=nw, eps=eps),
             10: self.buf(node.out)}
        for s, w in enumerate(ws):
            b.update({shaders.MULTI_W + 4 * s + i: buf
                      for i, buf in enumerate(w.handle.parts[0].buffers)})
        self._dispatch("mul_mv_multi.wgsl", "kernel_mul_mv_glu_q8", b,
                       self._mv_grid(-(-n // 32)), wtype=tuple(w.handle.tname for w in ws),
                       consts={"TPR": (tpr := glu_tpr(k // 32)), "WG": 32 * tpr,
                               "PRENORM": prenorm})

    def _mul_mat(self, node: Node, x: Value, w: Weight, up: Value | None = None,
                 res: Value | None = None, nw: Weight | None = None, eps: float = 0.0,
                 glu: tuple[Value, str] | None = None) -> None:
        """y = W x (mat-vec for up to MV_MAX_M token rows, tiled mat-mat beyond); with `up`,
        x is a gate and the kernel reads silu(x) * up; with `res`, it adds res to y; with `nw`,
        it reads rms_norm(x) * nw; with `glu` (gate, "swiglu" or "geglu"; mat-mats only), it
        stores act(gate) * y."""
        h = w.handle
        m, k = x.shape[0], x.cols
        if k % 4:
            raise UnsupportedError(f"webgpu: mul_mat with rows of {k} values (a multiple of 4 "
                                   f"is needed) for {w.name!r}")
        t = GGMLType(w.type)
        words = sum(repack.array_sizes(t, 2, k)) // 8
        guard = _guard_k(t, k)
        variant = ("glu_" if up is not None else "") + ("res" if res is not None else "")
        variant = "norm" if nw is not None else variant.rstrip("_") or None
        rows_q8 = self._int_dot_rows(w, x)
        if (m <= MV_MAX_M and self._int_dot([w], x)) or rows_q8:
            xq = self.buf(x) if x.id in self.prequantized else self._quantize_x(x, up, nw, eps)
            c = min(m, MVQ_ROWS_C) if rows_q8 else 1
            for part in h.parts:
                b = {0: self._arg(("kargs_mul_mat", {"M": m if rows_q8 else 1, "N": h.n,
                                                     "K": k, "w_row_words": words}),
                                  ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})),
                     1: xq, 2: self.buf(node.out)}
                b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
                if res is not None:
                    b[8] = self.buf(res)
                v = "res" if res is not None else "plain"
                r, tpr, wg = mvq_shape(part.n_rows, h.units, h.tname)
                reader = self.prenorm.get(id(node)) if not rows_q8 else None
                if reader is not None:  # writes its reader's x too
                    v = "resq"
                    b[9], b[10] = self.buf(reader.args[1]), self._xq_scratch(h.n)
                    lim = self.be.limits
                    r, tpr, wg = mvq_shape_blocks(
                        part.n_rows, h.units, h.tname,
                        min(lim.get("max-compute-invocations-per-workgroup", 256),
                            lim.get("max-compute-workgroup-size-x", 256)),
                        lim.get("max-compute-workgroup-storage-size", 16384))
                gx, _, gz = self._mv_grid(-(-part.n_rows // (r * (wg // tpr))))
                self._dispatch("mul_mvq.wgsl", ("kernel_mul_mvq_" if v == "plain" else
                                                f"kernel_mul_mvq_{v}_") + f"{h.tname}_f32", b,
                               (gx, -(-m // c) if rows_q8 else 1, gz),
                               wtype=h.tname, consts={"TPR": tpr, "R": r, "WG": wg, "C": c},
                               variant=v)
            return
        for part in h.parts:
            structs = [("kargs_mul_mat", {"M": m, "N": h.n, "K": k, "w_row_words": words}),
                       ("kargs_part", {"row0": part.row0, "n_rows": part.n_rows})]
            if nw is not None:
                structs.append(_norm_args(k, eps))
            b = {0: self._arg(*structs), 1: self.buf(x), 2: self.buf(node.out)}
            if nw is not None:
                b[9] = self.buf(nw)
            b.update({3 + i: buf for i, buf in enumerate(part.buffers)})
            if up is not None:
                b[7] = self.buf(up)
            if res is not None:
                b[8] = self.buf(res)
            if m <= MV_MAX_M:
                r, tpr, unr, wg = mv_shape(part.n_rows, h.units, m, h.tname, nw is not None)
                rows = r * (wg // tpr)
                name = f"kernel_mul_mv_{variant}_" if variant else "kernel_mul_mv_"
                self._dispatch("mul_mv.wgsl", f"{name}{h.tname}_f32", b,
                               self._mv_grid(-(-part.n_rows // rows)), wtype=h.tname,
                               consts={"TPR": tpr, "R": r, "C": m, "UNR": unr, "WG": wg,
                                       "GUARD_K": guard}, variant=variant)
            else:
                if variant not in (None, "res"):
                    raise UnsupportedError(f"webgpu: fused mul_mat of {m} rows")  # _fuse's rule
                ep = res  # the epilogue's second array (binding 8): res, or the glu's gate
                if glu is not None:
                    variant, ep = glu[1], glu[0]
                    b[8] = self.buf(ep)
                f16_tile = self._mm_tile_f16(t)
                bm, bn, tq, rq, ups, splits = self._mm_shape_of(x, w, part)
                if splits > 1:  # partial sums into planes of the node's scratch, then summed
                    b[2] = planes = self.slots[self.scratch_of[node.out.id]]
                    b.pop(8, None)  # the residual: added by the sum
                consts = {"BM": bm, "BN": bn, "TQ": tq, "RQ": rq, "UPS": ups, "SPLITK": splits,
                          "WG": bm * bn // (16 * tq * rq), "GUARD_K": guard,
                          "KU": MM_KU,
                          "X_LAST": bool(MM_X_LAST and t not in _FLOATS)}
                mm_variant = variant if variant and splits == 1 else None
                self._dispatch("mul_mm.wgsl", (f"kernel_mul_mm_{mm_variant}_" if mm_variant else
                                               "kernel_mul_mm_") + f"{h.tname}_f32", b,
                               (-(-part.n_rows // bn), -(-m // bm), splits), wtype=h.tname,
                               consts=consts, f16_tile=f16_tile, variant=mm_variant)
                if splits > 1:
                    sb = {0: b[0], 2: self.buf(node.out), 7: planes}
                    if variant:
                        sb[8] = self.buf(ep)
                    self._dispatch("mul_mm.wgsl", "kernel_mul_mm_sum_f32", sb,
                                   self._grid1(m * h.n, 256), wtype=h.tname,
                                   consts={"SPLITK": splits, "WG": 256},  # all the sum reads
                                   variant=variant)
