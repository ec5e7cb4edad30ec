"""Repacking of GGUF tensors into the u32 arrays the WGSL kernels read (shaders/quants.wgsl).

WGSL loads nothing narrower than 32 bits, so each block type is split into separate arrays of
whole words: quant bits, scales, high bits. Nothing is dequantized: the arrays hold the file's
own bits, re-ordered (an f16 scale per block is packed two to a word). Float matrices keep their
values, rows zero-padded to a multiple of 32 so every type works in units of 32 weights, and
their columns interleaved over the units (see repack).
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedError
from ...quants import GGMLType, type_size

# Per type: its kernel-name suffix, units of 32 weights per block, and its arrays in binding
# order. An array is ("b", start, stop, width): bytes start..stop of each block into a record of
# `width` bytes (zero-padded), ("h", start): the f16 at `start` of each block, two per word, or
# ("k", 0, 16, 16): a Q4_K / Q5_K block's head (d, dmin, 12 bytes of 6-bit scales and mins) with
# the scales re-laid for the kernels (k_scale_bytes).
_QUANT: dict[GGMLType, tuple[str, int, tuple[tuple, ...]]] = {
    GGMLType.Q8_0: ("q8_0", 1, (("b", 2, 34, 32), ("h", 0))),
    GGMLType.Q4_0: ("q4_0", 1, (("b", 2, 18, 16), ("h", 0))),
    GGMLType.Q4_1: ("q4_1", 1, (("b", 4, 20, 16), ("b", 0, 4, 4))),
    GGMLType.Q5_0: ("q5_0", 1, (("b", 6, 22, 16), ("b", 2, 6, 4), ("h", 0))),
    GGMLType.Q5_1: ("q5_1", 1, (("b", 8, 24, 16), ("b", 0, 8, 8))),
    GGMLType.Q2_K: ("q2_K", 8, (("b", 16, 80, 64), ("b", 0, 16, 16), ("b", 80, 84, 4))),
    GGMLType.Q3_K: ("q3_K", 8, (("b", 32, 96, 64), ("b", 0, 32, 32), ("b", 96, 110, 16))),
    GGMLType.Q4_K: ("q4_K", 8, (("b", 16, 144, 128), ("k", 0, 16, 16))),
    GGMLType.Q5_K: ("q5_K", 8, (("b", 48, 176, 128), ("k", 0, 16, 16), ("b", 16, 48, 32))),
    GGMLType.Q6_K: ("q6_K", 8, (("b", 0, 128, 128), ("b", 128, 192, 64), ("b", 192, 208, 16),
                                ("h", 208))),
    # the exponent byte travels as the low byte of an "h" half-word (two blocks per word, the
    # layout the row-split uploads keep aligned), beside the 16 bytes of nibbles
    GGMLType.MXFP4: ("mxfp4", 1, (("b", 1, 17, 16), ("h", 0))),
}
_FLOAT = {GGMLType.F32: ("f32", 4), GGMLType.F16: ("f16", 2), GGMLType.BF16: ("bf16", 2)}

MAX_ARRAYS = 4  # weight arrays bind at 3 .. 3 + MAX_ARRAYS - 1


def type_name(t: GGMLType) -> str:
    """Kernel-name suffix of a weight type (`q4_K`, `f16`, ...)."""
    if t in _QUANT:
        return _QUANT[t][0]
    if t in _FLOAT:
        return _FLOAT[t][0]
    raise UnsupportedError(f"webgpu: no kernels for tensor type {t.name}")


def units_per_row(t: GGMLType, k: int) -> int:
    """Units of 32 weights in a row of k values (float rows are padded up to whole units)."""
    if t in _FLOAT:
        return (k + 31) // 32
    blk, _ = type_size(t)
    return k // blk * _QUANT[t][1]


def array_sizes(t: GGMLType, rows: int, k: int) -> list[int]:
    """Bytes of each repacked array of `rows` rows of length k."""
    if t in _FLOAT:
        return [rows * units_per_row(t, k) * 32 * _FLOAT[t][1]]
    blk, _ = type_size(t)
    nb = rows * (k // blk)
    return [nb * a[3] if a[0] in "bk" else (nb + 1) // 2 * 4 for a in _QUANT[t][2]]


def repack(t: GGMLType, raw: np.ndarray, rows: int, k: int) -> list[np.ndarray]:
    """The arrays (uint8, whole words) of `rows` rows of raw GGUF bytes, in binding order."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    if t in _FLOAT:
        width = _FLOAT[t][1]
        u = units_per_row(t, k)
        m = raw.reshape(rows, k * width)
        pad = u * 32 * width - k * width
        if pad:
            m = np.concatenate([m, np.zeros((rows, pad), np.uint8)], axis=1)
        # columns dealt to units interleaved (quants.wgsl's unit_col): unit u's weights 4j..4j+3
        # are columns 4 (u + j u_row)..; a mat-vec thread per unit then reads x coalesced
        # (moved as whole 4-value groups: 8- or 16-byte items copy faster than single values)
        m = m.view(np.uint64 if width == 2 else np.dtype("V16")).reshape(rows, 8, u)
        return [np.ascontiguousarray(m.transpose(0, 2, 1)).reshape(-1).view(np.uint8)]
    _blk, bsz = type_size(t)
    b = raw.reshape(-1, bsz)
    out = []
    for a in _QUANT[t][2]:
        if a[0] == "h":
            h = b[:, a[1]:a[1] + 2]
            if len(h) % 2:
                h = np.concatenate([h, np.zeros((1, 2), np.uint8)])
            out.append(np.ascontiguousarray(h).reshape(-1))
        elif a[0] == "k":
            out.append(k_scale_bytes(b[:, :16]).reshape(-1))
        else:
            _, start, stop, width = a
            rec = b[:, start:stop]
            if stop - start < width:
                rec = np.concatenate([rec, np.zeros((len(b), width - (stop - start)), np.uint8)],
                                     axis=1)
            out.append(np.ascontiguousarray(rec).reshape(-1))
    return out


def k_scale_bytes(head: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K block heads (n, 16 bytes: d, dmin, then 8 scales and 8 mins of 6 bits packed
    into 12 bytes as ggml's get_scale_min_k4 reads them) with the 12 bytes re-laid, losslessly,
    so that a kernel gets the (scale, scale, min, min) of sub-blocks 2c, 2c + 1 from byte c of
    words 1..3 with one shift each: word 1 byte c = sc[2c] | mn[2c+1] bits 0-1 << 6, word 2
    byte c = sc[2c+1] | mn[2c+1] bits 2-3 << 6, word 3 byte c = mn[2c] | mn[2c+1] bits 4-5 << 6
    (quants.wgsl's k_scales2)."""
    w = np.ascontiguousarray(head).view(np.uint32).reshape(-1, 4)  # little-endian words
    w0, w1, w2 = w[:, 1], w[:, 2], w[:, 3]  # bytes q[0..3], q[4..7], q[8..11]
    lo6, hi2, lo4 = np.uint32(0x3F3F3F3F), np.uint32(0x30303030), np.uint32(0x0F0F0F0F)
    # sc[0..3], sc[4..7], mn[0..3], mn[4..7], one per byte (get_scale_min_k4, four at a time)
    sc_a, mn_a = w0 & lo6, w1 & lo6
    sc_b = (w2 & lo4) | ((w0 >> 2) & hi2)
    mn_b = ((w2 >> 4) & lo4) | ((w1 >> 2) & hi2)

    def even(a, b):  # bytes 0, 2 of a and of b: values 0, 2, 4, 6
        return ((a & 0xFF) | ((a >> 8) & 0xFF00) | ((b & 0xFF) << 16)
                | ((b << 8) & 0xFF000000)).astype(np.uint32)

    def odd(a, b):  # bytes 1, 3 of a and of b: values 1, 3, 5, 7
        return (((a >> 8) & 0xFF) | ((a >> 16) & 0xFF00) | ((b & 0xFF00) << 8)
                | (b & 0xFF000000)).astype(np.uint32)

    m1 = odd(mn_a, mn_b)
    two = np.uint32(0x03030303)
    out = np.empty_like(w)
    out[:, 0] = w[:, 0]
    out[:, 1] = even(sc_a, sc_b) | ((m1 & two) << 6)
    out[:, 2] = odd(sc_a, sc_b) | (((m1 >> 2) & two) << 6)
    out[:, 3] = even(mn_a, mn_b) | (((m1 >> 4) & two) << 6)
    return out.view(np.uint8).reshape(-1, 16)


def to_f32(t: GGMLType, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values of a small tensor (norm weights, biases, rope factors)."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    if t == GGMLType.F32:
        return raw.view(np.float32).reshape(shape).copy()
    if t == GGMLType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if t == GGMLType.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    from ...quants import dequantize

    return np.asarray(dequantize(raw, t, shape), np.float32)
