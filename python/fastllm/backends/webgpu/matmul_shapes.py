"""The shapes of the WebGPU backend's mat-vec and mat-mat dispatches (matmul.py lowers the ops;
moe.py and loops.py share the mat-vec shapes): each tuning constant with the measurement that
chose it, and the functions that pick a dispatch's workgroup shape from them. They are one module
so that a benchmark or a test sets a constant in one place (MV_FIXED, MM8_MIN_WG, PRENORM, ...:
benchmarks/sweep_webgpu_mm.py, sweep_webgpu_mv.py) and every reader sees it: matmul.py reads
them as attributes of this module at lowering time.
"""

from __future__ import annotations

from ...quants import GGMLType

# Mat-vec shape (mul_mv.wgsl): rows per thread group R, threads per row TPR, workgroup size.
# Measured on an H100 (Vulkan, 2026-11-22, weights rotated through more copies than the L2
# holds, clocks warmed up; benchmarks/NOTES.md, section 6): for one token row the K-quants,
# whose arithmetic is the limit, are fastest with few rows per group (2; Q6_K 4) and 64 threads
# per row up to rows of 4096 values, 128 beyond; the other types keep 8 rows per group on big
# matrices (>= 4096 rows or rows of >= 8192 values) and 2 on small ones.
MVQ_ROWS_C = 8  # rows mode: token rows per integer mat-vec workgroup (its weights read once)
# rows mode: the integer mat-vec up to this many token rows, the prefill mat-mat above. H100,
# llama-batched-bench's shape (S_TG tok/s at B = 4 / 8 / 16 / 32), 1B Q4_K_M: integer mat-vec
# 780 / 1,125 / 1,566 / 1,915 against 672 / 818 (float mat-vec) / 1,933 / 3,289 (mat-mat);
# 8B: 285 / 362 / 446 / 488 against - / 169 / - / 850 (benchmarks/NOTES.md, section 14)
MVQ_ROWS_MAX = 8
# rows mode: fewer dispatches a layer (a batched step is bound by them, as a one-token step is):
# rope, rope and kv_store in one (rope_kv.wgsl with ROWS); an rms_norm whose readers are the
# integer mat-vecs right after it folded into one quantize_x that they share (norm variant);
# attention's reduce writing the output projection's quantized x (kernel_attn_reduce_q8 over
# rows). Off: the ops one dispatch each, as the first batched steps ran (benchmarks compare).
ROWS_FUSE = True
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
