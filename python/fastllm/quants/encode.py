"""Quantizers for the GGML types fastllm reads, following ggml's reference quantizers:
`quantize`, the 32-element block types (Q8_0, Q4_0/Q4_1, Q5_0/Q5_1, MXFP4) and bf16 here, the
K-quants in encode_k.py; and `random_blocks` (valid random raw data of any type, for kernel
tests). `fastllm.quants` re-exports both; the type table is types.py, the dequantizers
decode.py."""

from __future__ import annotations

import numpy as np

from ..errors import GGUFError
from .decode import MXFP4_KVALUES, e8m0_half
from .encode_k import _q_q2_k, _q_q3_k, _q_q4_k, _q_q5_k, _q_q6_k
from .rounding import _F32, _absmax_signed, _f16_bytes, _first, _inv, _round_away
from .types import (
    SUPPORTED_TYPES,
    GGMLType,
    check_supported,
    row_bytes,
    type_size,
)

# --------------------------------------------------------------------------------------------
# Quantization
#
# The algorithms are those of ggml-quants.c's quantize_row_*_ref, which llama.cpp uses when no
# importance matrix is given: round-to-nearest with an absmax (or min/max) scale for the 32-element
# types, and the iterative scale searches (make_qx_quants, make_qkx2_quants, make_q3_quants) for
# the K-quants (encode_k.py). They run vectorized over all blocks at once; the 32-element types are
# byte-identical to ggml, the K-quants are too when ggml is built without FMA contraction (sums
# are accumulated in ggml's order; an FMA build of ggml rounds some products differently and can
# pick a different scale in near-tied blocks).
# --------------------------------------------------------------------------------------------


def _q_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1) / _F32(127)
    q = _round_away(x * _inv(d)[:, None]).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _pack_halves(q: np.ndarray) -> np.ndarray:
    """(n, 32) 4-bit values -> 16 bytes: element j in the low nibble of byte j, element j+16 in
    the high nibble (block_q4_0/q4_1/q5_*)."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _q_sym(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0: d = max / -nmax with max the signed absmax, q = trunc(x/d + nmax + 0.5)."""
    d = _absmax_signed(x) / _F32(-nmax)
    v = x * _inv(d)[:, None] + _F32(nmax + 0.5)
    q = np.clip(np.trunc(v), 0, 2 * nmax - 1).astype(np.uint8)
    return d, q


def _q_asym(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1: d = (max - min) / nmax, m = min, q = trunc((x - min)/d + 0.5)."""
    # first occurrences, as ggml's `if (v < min)` loops keep them (it decides the sign of zeros)
    mn, mx = _first(x, x.argmin(axis=1)), _first(x, x.argmax(axis=1))
    d = (mx - mn) / _F32(nmax)
    v = (x - mn[:, None]) * _inv(d)[:, None] + _F32(0.5)
    q = np.clip(np.trunc(v), 0, nmax).astype(np.uint8)
    return d, mn, q


def _q_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _q_sym(x, 8)
    return np.concatenate([_f16_bytes(d), _pack_halves(q)], axis=1)


def _q_q4_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _q_asym(x, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_halves(q)], axis=1)


def _q5_high(q: np.ndarray) -> np.ndarray:
    return np.packbits(q >> 4, axis=1, bitorder="little")  # bit j of the u32 = bit 4 of q[j]


def _q_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _q_sym(x, 16)
    return np.concatenate([_f16_bytes(d), _q5_high(q), _pack_halves(q)], axis=1)


def _q_q5_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _q_asym(x, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _q5_high(q), _pack_halves(q)], axis=1)


def _q_mxfp4(x: np.ndarray) -> np.ndarray:
    """quantize_row_mxfp4_ref: the exponent e = floor(log2(absmax)) - 2 + 127 (so values past
    1.5 * 2^floor(log2(absmax)) clip to the largest level), each value the nearest level of
    kvalues * 2^(e - 128), the first on ties (ggml's strict `<` scan)."""
    amax = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore"):
        # float32 log2 as ggml's log2f; e clamped to the byte range where ggml's (uint8_t)
        # cast of an out-of-range float would be undefined (|x| below 2^-125 or past 2^129)
        e = np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0)
    e = np.clip(e, 0, 255).astype(np.uint8)
    d = e8m0_half(e)
    err = np.abs(MXFP4_KVALUES[None, None, :] * d[:, None, None] - x[:, :, None])
    q = err.argmin(axis=2).astype(np.uint8)
    return np.concatenate([e[:, None], _pack_halves(q)], axis=1)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even; NaNs stay (quiet) NaNs (as ggml's
    ggml_compute_fp32_to_bf16)."""
    u = np.ascontiguousarray(x, _F32).view(np.uint32)
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)


_QUANT = {
    GGMLType.Q8_0: _q_q8_0,
    GGMLType.Q4_0: _q_q4_0,
    GGMLType.Q4_1: _q_q4_1,
    GGMLType.Q5_0: _q_q5_0,
    GGMLType.Q5_1: _q_q5_1,
    GGMLType.Q2_K: _q_q2_k,
    GGMLType.Q3_K: _q_q3_k,
    GGMLType.Q4_K: _q_q4_k,
    GGMLType.Q5_K: _q_q5_k,
    GGMLType.Q6_K: _q_q6_k,
    GGMLType.MXFP4: _q_mxfp4,
}

# elements per quantization step: the K-quant searches hold ~20 float32 temporaries this size
_Q_CHUNK_ELEMS = 1 << 18


def quantize(x: np.ndarray, gtype: GGMLType, *, name: str = "") -> np.ndarray:
    """Encode float data as ggml type gtype: returns uint8 of shape x.shape[:-1] + (row bytes,),
    the tensor's raw GGUF bytes. The last dimension must be a multiple of the type's block size."""
    gtype = GGMLType(gtype)
    if gtype not in SUPPORTED_TYPES:
        check_supported(gtype, name or "<unnamed>")
    x = np.ascontiguousarray(x, dtype=_F32)
    if x.ndim == 0:
        raise ValueError(f"{name or 'tensor'}: cannot quantize a scalar")
    blk, bsz = type_size(gtype)
    n_cols = x.shape[-1]
    if n_cols % blk:
        raise ValueError(f"{name or 'tensor'}: row length {n_cols} is not a multiple of the "
                         f"{gtype.name} block size {blk}")
    out_shape = (*x.shape[:-1], n_cols // blk * bsz)
    if gtype == GGMLType.F32:
        return x.view(np.uint8).reshape(out_shape).copy()
    if gtype == GGMLType.F16:
        with np.errstate(over="ignore"):
            return x.astype(np.float16).view(np.uint8).reshape(out_shape)
    if gtype == GGMLType.BF16:
        return _to_bf16(x).view(np.uint8).reshape(out_shape)
    if not np.isfinite(x).all():
        # ggml's scale searches assume finite data; llama.cpp rejects such output as invalid
        raise GGUFError(f"{name or 'tensor'}: NaN or infinite values cannot be quantized to "
                        f"{gtype.name}")
    blocks = x.reshape(-1, blk)
    out = np.empty((blocks.shape[0], bsz), np.uint8)
    fn = _QUANT[gtype]
    step = max(1, _Q_CHUNK_ELEMS // blk)
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fn(blocks[i:i + step])
    return out.reshape(out_shape)


# --------------------------------------------------------------------------------------------
# Random valid data, for testing kernels against the dequantizers
# --------------------------------------------------------------------------------------------

# (byte offset, low, high, signed) of each f16 field: magnitudes put the dequantized values at
# roughly unit scale (e.g. Q8_0: |q| <= 128 times d <= 0.02)
_F16_FIELDS: dict[GGMLType, tuple[tuple[int, float, float, bool], ...]] = {
    GGMLType.Q8_0: ((0, 0.002, 0.02, True),),
    GGMLType.Q4_0: ((0, 0.02, 0.25, True),),
    GGMLType.Q4_1: ((0, 0.02, 0.25, True), (2, 0.0, 1.0, True)),
    GGMLType.Q5_0: ((0, 0.01, 0.12, True),),
    GGMLType.Q5_1: ((0, 0.01, 0.12, True), (2, 0.0, 1.0, True)),
    GGMLType.Q2_K: ((80, 0.005, 0.1, False), (82, 0.005, 0.1, False)),
    GGMLType.Q3_K: ((108, 0.001, 0.02, True),),
    GGMLType.Q4_K: ((0, 0.0005, 0.005, False), (2, 0.0005, 0.01, False)),
    GGMLType.Q5_K: ((0, 0.0002, 0.0025, False), (2, 0.0005, 0.01, False)),
    GGMLType.Q6_K: ((208, 0.0002, 0.002, True),),
    GGMLType.MXFP4: (),  # no f16 field: its exponent byte is drawn by random_blocks
}
# MXFP4's exponent byte: scales 2^-7 .. 2^-1 put its values (levels up to 12) at unit scale
_MXFP4_E = (121, 127)


def random_blocks(gtype: GGMLType, n_rows: int, n_cols: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Random valid raw data for a (n_rows, n_cols) tensor of type gtype: uint8 of shape
    (n_rows, row bytes). Quant bits and packed sub-scales are uniform random bytes (every bit
    pattern is valid); f16 super-scales are finite, of moderate size; float types are N(0, 1)."""
    gtype = GGMLType(gtype)
    check_supported(gtype, "<random>")
    blk, bsz = type_size(gtype)
    if n_cols % blk:
        raise ValueError(f"row length {n_cols} is not a multiple of the {gtype.name} block "
                         f"size {blk}")
    rb = row_bytes(gtype, n_cols)
    if gtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        x = rng.standard_normal((n_rows, n_cols), dtype=_F32)
        return quantize(x, gtype)
    nb = n_rows * n_cols // blk
    b = rng.integers(0, 256, size=(nb, bsz), dtype=np.uint8)
    for off, lo, hi, signed in _F16_FIELDS[gtype]:
        v = rng.uniform(lo, hi, nb).astype(_F32)
        if signed:
            v *= rng.choice(np.array([-1, 1], _F32), nb)
        b[:, off:off + 2] = _f16_bytes(v)
    if gtype == GGMLType.MXFP4:
        b[:, 0] = rng.integers(_MXFP4_E[0], _MXFP4_E[1] + 1, nb, dtype=np.uint8)
    return b.reshape(n_rows, rb)

