"""NumPy dequantizers for every type fastllm reads: `dequantize` and `dequantize_rows`.

The dequantizers are written here (not borrowed from the `gguf` package) because the GPU kernels
follow them line by line; tests check them against `gguf.quants.dequantize` on random blocks.
"""

from __future__ import annotations

import numpy as np

from .types import QK_K, GGMLType, check_supported, row_bytes, type_size

# --------------------------------------------------------------------------------------------
# Dequantization
#
# Every dequantizer takes the blocks of a tensor as a (n_blocks, block_bytes) uint8 array and
# returns (n_blocks, block_elements) float32. Field offsets are the block structs of ggml-common.h;
# each value is computed with the operations of ggml-quants.c's dequantize_row_* in the same order
# (e.g. Q4_1 is q*d + m, Q6_K is (d*scale)*q), all in float32 and never fused into an FMA, so the
# results are bit-identical to gguf.quants.dequantize and to ggml's C built without FMA
# contraction. A kernel that fuses the "q*d + m" / "d*q - m" of Q4_1, Q5_1, Q2_K, Q4_K and Q5_K
# into one FMA rounds once instead of twice: it can differ from these by about an ulp of q*d.
# --------------------------------------------------------------------------------------------

_F32 = np.float32


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """The f16 field at byte offset off of each block, as float32 of shape (n_blocks, 1)."""
    return b[:, off:off + 2].view(np.float16).astype(_F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) packed bytes -> (..., 2k): the k low nibbles, then the k high nibbles."""
    out = np.empty((*qs.shape[:-1], 2, qs.shape[-1]), np.uint8)
    np.bitwise_and(qs, 0x0F, out=out[..., 0, :])
    np.right_shift(qs, 4, out=out[..., 1, :])
    return out.reshape(*qs.shape[:-1], 2 * qs.shape[-1])


_SHIFT2 = np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)  # 2-bit fields, low bits first
_SHIFT1 = np.arange(8, dtype=np.uint8).reshape(8, 1)      # 1-bit fields, low bit first


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """(nb, g, 32) bytes of 2-bit fields -> (nb, g*128): for each group of 32 bytes, the four
    bit pairs (shift 0, 2, 4, 6) of those 32 bytes in turn (the Q2_K/Q3_K/Q6_K-high layout)."""
    nb, g = qs.shape[0], qs.shape[1]
    return ((qs[:, :, None, :] >> _SHIFT2) & 3).reshape(nb, g * 128)


def _dq_q8_0(b: np.ndarray) -> np.ndarray:
    q = b[:, 2:].view(np.int8).astype(_F32)
    return np.multiply(q, _f16(b, 0), out=q)


def _dq_q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 2:]).astype(_F32)
    q -= 8
    return np.multiply(q, _f16(b, 0), out=q)


def _dq_q4_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 4:]).astype(_F32)
    q *= _f16(b, 0)
    q += _f16(b, 2)
    return q


def _q5_ints(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    # qh is a little-endian u32 whose bit j is the 5th bit of element j
    hi = np.unpackbits(qh, axis=1, bitorder="little")
    return _nibbles(qs) | (hi << 4)


def _dq_q5_0(b: np.ndarray) -> np.ndarray:
    q = _q5_ints(b[:, 2:6], b[:, 6:]).astype(_F32)
    q -= 16
    return np.multiply(q, _f16(b, 0), out=q)


def _dq_q5_1(b: np.ndarray) -> np.ndarray:
    q = _q5_ints(b[:, 4:8], b[:, 8:]).astype(_F32)
    q *= _f16(b, 0)
    q += _f16(b, 2)
    return q


# K-quants: block_q*_K structs of ggml-common.h (QK_K = 256). In Q2_K, Q3_K and Q6_K the scale of
# element e is scales[e // 16]; in Q4_K and Q5_K it is sub-block e // 32.

def _dq_q2_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    sc = b[:, 0:16]
    q = _crumbs(b[:, 16:80].reshape(nb, 2, 32)).astype(_F32).reshape(nb, 16, 16)
    dl = _f16(b, 80) * (sc & 0x0F).astype(_F32)
    ml = _f16(b, 82) * (sc >> 4).astype(_F32)
    q *= dl[:, :, None]
    q -= ml[:, :, None]
    return q.reshape(nb, QK_K)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """12 packed bytes -> 16 6-bit scales (0..63): low nibbles of bytes 0-7, then their high
    nibbles; the top two bits of scale 4k+i are bits 2k, 2k+1 of byte 8+i."""
    nb = s.shape[0]
    low = _nibbles(s[:, 0:8])
    high = ((s[:, None, 8:12] >> _SHIFT2) & 3).reshape(nb, 16)
    return low | (high << 4)


def _dq_q3_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    low = _crumbs(b[:, 32:96].reshape(nb, 2, 32)).reshape(nb, 2, 4, 32)
    # high bit of element n*128 + j*32 + l is bit 4n+j of hmask[l]; clear means "subtract 4"
    hbit = (b[:, None, None, 0:32] >> _SHIFT1.reshape(2, 4, 1)) & 1
    q = (low.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)).astype(_F32)
    dl = _f16(b, 108) * (_q3_k_scales(b[:, 96:108]).astype(_F32) - 32)
    q = q.reshape(nb, 16, 16)
    q *= dl[:, :, None]
    return q.reshape(nb, QK_K)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 (scale, min) 6-bit pairs of a Q4_K/Q5_K block (ggml's get_scale_min_k4)."""
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([s0 & 63, (s2 & 0x0F) | ((s0 >> 6) << 4)], axis=1)
    mn = np.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=1)
    return sc, mn


def _k4_apply(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    sc, mn = _k4_scales(b[:, 4:16])
    d1 = _f16(b, 0) * sc.astype(_F32)
    m1 = _f16(b, 2) * mn.astype(_F32)
    q = q.astype(_F32).reshape(nb, 8, 32)
    q *= d1[:, :, None]
    q -= m1[:, :, None]
    return q.reshape(nb, QK_K)


def _dq_q4_k(b: np.ndarray) -> np.ndarray:
    # 32 bytes per 64 elements: low nibbles are sub-block 2i, high nibbles sub-block 2i+1
    return _k4_apply(b, _nibbles(b[:, 16:144].reshape(-1, 4, 32)))


def _dq_q5_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    low = _nibbles(b[:, 48:176].reshape(nb, 4, 32)).reshape(nb, 8, 32)
    hbit = (b[:, None, 16:48] >> _SHIFT1) & 1  # bit k of qh[l]: element 32k + l
    return _k4_apply(b, low | (hbit << 4))


def _dq_q6_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    low = _nibbles(b[:, 0:128].reshape(nb, 2, 64))            # (nb, 2, 128)
    high = _crumbs(b[:, 128:192].reshape(nb, 2, 32)).reshape(nb, 2, 128)
    q = ((low | (high << 4)).view(np.int8) - np.int8(32)).astype(_F32).reshape(nb, 16, 16)
    d = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(_F32)
    q *= d[:, :, None]
    return q.reshape(nb, QK_K)


# MXFP4 (OCP microscaling, gpt-oss's expert weights): a block is one E8M0 exponent byte e and 32
# E2M1 values as nibbles (element j low nibble of qs[j], element j + 16 high nibble). ggml keeps
# the E2M1 values doubled as integers (kvalues_mxfp4) and halves the scale instead: value =
# kvalues[q] * 2^(e - 128) (GGML_E8M0_TO_FP32_HALF), a power of two, so each product is exact.
# The level table and the scale are defined here, with the format; encode.py quantizes with them.

# ggml's doubled E2M1 values (kvalues_mxfp4) in nibble order, scaled by e8m0_half(e)
MXFP4_KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], _F32)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """2^(e - 128) as float32 for exponent bytes e (ggml_e8m0_to_fp32_half: e < 2 give the
    subnormals 2^-128 and 2^-127; 255 is 2^127, not NaN)."""
    e = np.asarray(e).astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(_F32)


def _dq_mxfp4(b: np.ndarray) -> np.ndarray:
    q = MXFP4_KVALUES[_nibbles(b[:, 1:17])]
    with np.errstate(over="ignore"):  # e = 255 (2^127) times |q| >= 2 is inf, as in ggml
        return np.multiply(q, e8m0_half(b[:, 0:1]), out=q)


_DEQUANT = {
    GGMLType.Q8_0: _dq_q8_0,
    GGMLType.Q4_0: _dq_q4_0,
    GGMLType.Q4_1: _dq_q4_1,
    GGMLType.Q5_0: _dq_q5_0,
    GGMLType.Q5_1: _dq_q5_1,
    GGMLType.Q2_K: _dq_q2_k,
    GGMLType.Q3_K: _dq_q3_k,
    GGMLType.Q4_K: _dq_q4_k,
    GGMLType.Q5_K: _dq_q5_k,
    GGMLType.Q6_K: _dq_q6_k,
    GGMLType.MXFP4: _dq_mxfp4,
}

# blocks per dequantization step: bounds the uint8/float temporaries to a few MiB each
_DQ_CHUNK_ELEMS = 1 << 20


def _as_bytes(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)


def dequantize(raw: np.ndarray, gtype: GGMLType, shape: tuple[int, ...], *,
               name: str = "") -> np.ndarray:
    """Decode the raw bytes of a tensor of ggml type gtype into float32 of shape `shape` (numpy
    order: the last dimension is ggml's ne[0], the contiguous one). `name` only labels errors."""
    gtype = GGMLType(gtype)
    check_supported(gtype, name or "<unnamed>")
    shape = tuple(int(s) for s in shape)
    blk, bsz = type_size(gtype)
    n = int(np.prod(shape, dtype=np.int64))
    if not shape or shape[-1] % blk:
        raise ValueError(f"{name or 'tensor'}: row length {shape[-1] if shape else 0} is not a "
                         f"multiple of the {gtype.name} block size {blk}")
    raw = _as_bytes(raw)
    if raw.size != n // blk * bsz:
        raise ValueError(f"{name or 'tensor'}: {raw.size} bytes for {gtype.name} {shape}, expected "
                         f"{n // blk * bsz}")
    if gtype == GGMLType.F32:
        return raw.view(np.float32).reshape(shape).copy()
    if gtype == GGMLType.F16:
        return raw.view(np.float16).astype(_F32).reshape(shape)
    if gtype == GGMLType.BF16:
        # bf16 is the top half of an f32
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(_F32).reshape(shape)
    blocks = raw.reshape(-1, bsz)
    fn = _DEQUANT[gtype]
    step = max(1, _DQ_CHUNK_ELEMS // blk)
    if blocks.shape[0] <= step:
        return fn(blocks).reshape(shape)
    out = np.empty((blocks.shape[0], blk), _F32)
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fn(blocks[i:i + step])
    return out.reshape(shape)


def dequantize_rows(raw: np.ndarray, gtype: GGMLType, n_cols: int, rows: np.ndarray, *,
                    name: str = "") -> np.ndarray:
    """Decode only the given rows of a 2-D tensor (an embedding lookup): float32 (len(rows),
    n_cols). Rows are whole blocks, so only the selected rows' bytes are read."""
    gtype = GGMLType(gtype)
    check_supported(gtype, name or "<unnamed>")
    rb = row_bytes(gtype, int(n_cols))
    raw = _as_bytes(raw)
    if rb <= 0 or raw.size % rb:
        raise ValueError(f"{name or 'tensor'}: {raw.size} bytes is not a whole number of "
                         f"{gtype.name} rows of {n_cols}")
    n_rows = raw.size // rb
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        bad = int(idx[(idx < 0) | (idx >= n_rows)][0])
        raise IndexError(f"{name or 'tensor'}: row {bad} out of range (tensor has {n_rows} rows)")
    picked = raw.reshape(n_rows, rb)[idx]
    return dequantize(picked, gtype, (idx.size, int(n_cols)), name=name)

