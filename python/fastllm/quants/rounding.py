"""ggml's float32 scalar arithmetic in vectorized NumPy: f16 rounding, C's roundf and
nearest_int, guarded division, first-on-ties maxima and in-order sums. The quantizers of encode.py
and encode_k.py build on these; their bytes match ggml's only because each step rounds as
ggml-quants.c's does."""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 (n,) -> (n, 2) little-endian f16 bytes, round to nearest even (as
    GGML_FP32_TO_FP16); out-of-range values become inf as in ggml."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(v, _F32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def _f16_round(v: np.ndarray) -> np.ndarray:
    """The float32 value an f16 field stores for v (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)))."""
    with np.errstate(over="ignore"):
        return v.astype(np.float16).astype(_F32)


def _inv(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d == 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    out = np.zeros_like(d)
    np.divide(_F32(1), d, out=out, where=d != 0)
    return out


def _safe_div(a, d: np.ndarray) -> np.ndarray:
    """a/d where d > 0, else 0 (ggml's `max > 0 ? a/max : 0` for the K-quant super-scales)."""
    out = np.zeros_like(d)
    np.divide(a, d, out=out, where=d > 0)
    return out


def _round_away(v: np.ndarray) -> np.ndarray:
    """C roundf: halves round away from zero (np.rint rounds them to even)."""
    a = np.abs(v)
    f = np.floor(a)
    a -= f  # the fraction, exact in float32
    f += a >= 0.5
    return np.copysign(f, v, out=f)


def _absmax_signed(x: np.ndarray) -> np.ndarray:
    """Per row, the element of largest magnitude with its sign; the first one on ties, as ggml's
    `if (amax < fabsf(v))` loop picks."""
    i = np.abs(x).argmax(axis=-1)
    m = np.take_along_axis(x, i[..., None], axis=-1)[..., 0]
    return np.where(m == 0, _F32(0), m)  # ggml's max starts at +0 and keeps it for all-zero rows


def _first(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(x, idx[:, None], axis=1)[:, 0]


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sums over axis 0 accumulated in order in float32, as ggml's `for (i...) sum += ...` loops
    do: np.sum adds pairwise, which rounds differently and would flip near-tied scale choices."""
    s = a[0].copy()
    for row in a[1:]:
        s += row
    return s


def _rint(v: np.ndarray) -> np.ndarray:
    # ggml's nearest_int (the 1.5*2**23 trick) rounds halves to even, as np.rint does
    return np.rint(v)
