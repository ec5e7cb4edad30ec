"""Quantizers for the GGML types fastllm reads, following ggml's reference quantizers, and
`random_blocks` (valid random raw data of any type, for kernel tests). `fastllm.quants` re-exports
both; the type table is types.py, the dequantizers decode.py."""

from __future__ import annotations

import numpy as np

from ..errors import GGUFError
from .types import (
    QK_K,
    SUPPORTED_TYPES,
    GGMLType,
    check_supported,
    row_bytes,
    type_size,
)

_F32 = np.float32

# --------------------------------------------------------------------------------------------
# Quantization
#
# The algorithms are those of ggml-quants.c's quantize_row_*_ref, which llama.cpp uses when no
# importance matrix is given: round-to-nearest with an absmax (or min/max) scale for the 32-element
# types, and the iterative scale searches (make_qx_quants, make_qkx2_quants, make_q3_quants) for
# the K-quants. They run vectorized over all blocks at once; the 32-element types are
# byte-identical to ggml, the K-quants are too when ggml is built without FMA contraction (sums
# are accumulated in ggml's order; an FMA build of ggml rounds some products differently and can
# pick a different scale in near-tied blocks).
# --------------------------------------------------------------------------------------------

_EPS = _F32(1e-15)  # ggml's GROUP_MAX_EPS: a group with a smaller absmax is all zeros


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


# MXFP4: ggml's doubled E2M1 values (kvalues_mxfp4) in nibble order, scaled by e8m0_half(e)
MXFP4_KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], _F32)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """2^(e - 128) as float32 for exponent bytes e (ggml_e8m0_to_fp32_half: e < 2 give the
    subnormals 2^-128 and 2^-127; 255 is 2^127, not NaN)."""
    e = np.asarray(e).astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(_F32)


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


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants(rmse_type=1, no weights) on each row of x: the scale minimizing the
    x**2-weighted error over the 19 trial inverse scales -(nmax + 0.1*k)/max, k = -9..9.
    Returns (scale (n,), L (n, m) float in 0..2*nmax-1)."""
    mx = _absmax_signed(x)
    zero = np.abs(mx) < _EPS
    xt = np.ascontiguousarray(x.T)  # element-major: the sequential sums add contiguous rows
    w = xt * xt
    wx = w * xt
    lv = np.empty_like(xt)
    tmp = np.empty_like(xt)
    with np.errstate(divide="ignore", invalid="ignore"):
        best_l = best = scale = None
        for k in (0, *range(-9, 0), *range(1, 10)):
            iscale = -(_F32(nmax) + _F32(0.1) * _F32(k)) / mx
            np.multiply(iscale, xt, out=lv)
            np.clip(np.rint(lv, out=lv), -nmax, nmax - 1, out=lv)
            sumlx = _seqsum(np.multiply(wx, lv, out=tmp))
            suml2 = _seqsum(np.multiply(np.multiply(w, lv, out=tmp), lv, out=tmp))
            if best_l is None:
                scale = np.where(suml2 != 0, sumlx / suml2, _F32(0))
                best = scale * sumlx
                best_l = lv.copy()
                continue
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            np.copyto(best_l, lv, where=upd)
            scale = np.where(upd, sumlx / suml2, scale)
            best = np.where(upd, scale * sumlx, best)
    best_l += nmax
    best_l[:, zero] = 0
    scale = np.where(zero, _F32(0), scale).astype(_F32)
    return scale, best_l.T


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants on each row: x ~ scale*L - the_min with L in 0..nmax, searching
    nstep+1 trial scales (rmin + rdelta*k + nmax)/(max - min) and refitting scale and min by
    weighted least squares. Returns (scale, the_min, L)."""
    xt = np.ascontiguousarray(x.T)  # element-major: the sequential sums add contiguous rows
    w = np.ascontiguousarray(w.T)
    mn = np.minimum(xt.min(axis=0), 0)
    mx = xt.max(axis=0)
    flat = mx == mn
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * xt)
    la = np.empty_like(xt)
    wl = np.empty_like(xt)
    tmp = np.empty_like(xt)

    def levels(iscale, mn, out):
        np.multiply(iscale, np.subtract(xt, mn, out=out), out=out)
        return np.clip(np.rint(out, out=out), 0, nmax, out=out)

    def err(scale, mn, lv):
        diff = np.multiply(scale, lv, out=tmp)
        diff += mn
        diff -= xt
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return _seqsum(diff)

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _F32(nmax) / (mx - mn)
        scale = _F32(1) / iscale
        lv = levels(iscale, mn, np.empty_like(xt))
        best = err(scale, mn, lv)
        for k in range(nstep + 1):
            # the trial scale uses the best min found so far, as ggml's loop does
            iscale = (_F32(rmin) + _F32(rdelta) * _F32(k) + _F32(nmax)) / (mx - mn)
            levels(iscale, mn, la)
            np.multiply(w, la, out=wl)
            sum_l = _seqsum(wl)
            sum_l2 = _seqsum(np.multiply(wl, la, out=tmp))
            sum_xl = _seqsum(np.multiply(wl, xt, out=tmp))
            big_d = sum_w * sum_l2 - sum_l * sum_l
            t_scale = (sum_w * sum_xl - sum_x * sum_l) / big_d
            t_min = (sum_l2 * sum_x - sum_l * sum_xl) / big_d
            pos = t_min > 0
            t_min = np.where(pos, _F32(0), t_min)
            t_scale = np.where(pos, sum_xl / sum_l2, t_scale)
            cur = err(t_scale, t_min, la)
            upd = (big_d > 0) & (cur < best)
            np.copyto(lv, la, where=upd)
            best = np.where(upd, cur, best)
            scale = np.where(upd, t_scale, scale)
            mn = np.where(upd, t_min, mn)
    lv[:, flat] = 0
    scale = np.where(flat, _F32(0), scale).astype(_F32)
    return scale, (-mn).astype(_F32), lv.T


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants(do_rmse=true) on each row: start from L = round(-nmax*x/max), then
    up to 5 sweeps of coordinate descent on the x**2-weighted error. Returns (scale, L in
    0..2*nmax-1)."""
    mx = _absmax_signed(x)
    zero = np.abs(mx) < _EPS
    xt = np.ascontiguousarray(x.T)
    w = xt * xt
    wx = w * xt
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _F32(-nmax) / mx
        lv = np.clip(np.rint(iscale * xt), -nmax, nmax - 1)
        sumlx = _seqsum(wx * lv)
        suml2 = _seqsum(w * lv * lv)
        # a sweep that changes nothing leaves the state as it was, so running all 5 sweeps on
        # every row equals ggml's early exit
        for _ in range(5):
            for i in range(xt.shape[0]):
                wi, wxi, li = w[i], wx[i], lv[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - wi * li * li
                new = np.clip(np.rint(xt[i] * sl2 / slx), -nmax, nmax - 1)
                slx2 = slx + wxi * new
                sl22 = sl2 + wi * new * new
                upd = ((slx > 0) & (new != li) & (sl22 > 0)
                       & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                np.copyto(li, new, where=upd)
                sumlx = np.where(upd, slx2, sumlx)
                suml2 = np.where(upd, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, _F32(0))
    lv += nmax
    lv[:, zero] = 0
    scale = np.where(zero, _F32(0), scale).astype(_F32)
    return scale, lv.T


def _requant(x: np.ndarray, lv: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int,
             hi: int) -> np.ndarray:
    """Final pass of every K-quant: round each element against its stored (f16-rounded) scale,
    l = round((x + dm)/d); groups whose scale is 0 keep the first-pass L (ggml `continue`s)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = x + dm[:, None] if dm is not None else x
        new = np.clip(_rint(v / d[:, None]), lo, hi)
    return np.where((d != 0)[:, None], new, lv)


def _pack_crumbs(lv: np.ndarray) -> np.ndarray:
    """(nb, 256) 2-bit values -> (nb, 64): byte 32n + l holds elements 128n + 32j + l at bits 2j
    (the Q2_K/Q3_K qs layout)."""
    q = lv.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _q_q2_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    scales, mins, lv = _make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    ls = np.clip(_rint(_safe_div(_F32(15), max_scale)[:, None] * scales), 0, 15)
    lm = np.clip(_rint(_safe_div(_F32(15), max_min)[:, None] * mins), 0, 15)
    d = np.where(max_scale > 0, max_scale / _F32(15), _F32(0)).astype(_F32)
    dmin = np.where(max_min > 0, max_min / _F32(15), _F32(0)).astype(_F32)
    de = (_f16_round(d)[:, None] * ls).reshape(-1)
    me = (_f16_round(dmin)[:, None] * lm).reshape(-1)
    lv = _requant(xs, lv, de, me, 0, 3).reshape(nb, QK_K)
    sc = (ls.astype(np.uint8) | (lm.astype(np.uint8) << 4))
    return np.concatenate([sc, _pack_crumbs(lv), _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _q_q3_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    scales, lv = _make_q3_quants(xs, 4)
    scales = scales.reshape(nb, 16)
    max_scale = _absmax_signed(scales)
    nz = max_scale != 0
    iscale = np.where(nz, _F32(-32) / np.where(nz, max_scale, _F32(1)), _F32(0))
    ls = (np.clip(_rint(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)
    ls[~nz] = 32  # all-zero packed bytes decode as 0 - 32; d = 0 makes them 0 anyway
    with np.errstate(divide="ignore"):
        d = np.where(nz, _F32(1) / iscale, _F32(0)).astype(_F32)
    sc = np.empty((nb, 12), np.uint8)
    sc[:, 0:8] = (ls[:, 0:8] & 0x0F) | ((ls[:, 8:16] & 0x0F) << 4)
    hi = (ls >> 4).reshape(nb, 4, 4)  # [k][i] = top bits of scale 4k+i
    sc[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    sc[~nz] = 0
    de = (_f16_round(d)[:, None] * (ls.astype(_F32) - 32)).reshape(-1)
    de[np.repeat(~nz, 16)] = 0
    lv = (_requant(xs, lv - 4, de, None, -4, 3) + 4).reshape(nb, QK_K).astype(np.uint8)
    # element j's bit 2 goes to hmask[j % 32], bit j // 32; the low two bits to qs
    high = (lv >> 2).reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), np.uint8)
    for k in range(8):
        hmask |= high[:, k] << k
    return np.concatenate([hmask, _pack_crumbs(lv & 3), sc, _f16_bytes(d)], axis=1)


def _pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 6-bit scales and mins -> the 12 bytes _k4_scales unpacks."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    return np.concatenate([
        ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6),
        lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6),
        (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4),
    ], axis=1)


def _k4_common(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Q4_K/Q5_K: per 32-element sub-block, make_qkx2_quants with weights av_x + |x|; then the
    8 scales and 8 mins are quantized to 6 bits against their maxima."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)
    av_x = np.sqrt(_seqsum((xs * xs).T) / _F32(32))
    w = av_x[:, None] + np.abs(xs)
    scales, mins, lv = _make_qkx2_quants(xs, w, nmax, rmin, rdelta, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    ls = np.clip(_rint(_safe_div(_F32(63), max_scale)[:, None] * scales), 0, 63)
    lm = np.clip(_rint(_safe_div(_F32(63), max_min)[:, None] * mins), 0, 63)
    d = max_scale / _F32(63)
    dmin = max_min / _F32(63)
    de = (_f16_round(d)[:, None] * ls).reshape(-1)
    me = (_f16_round(dmin)[:, None] * lm).reshape(-1)
    lv = _requant(xs, lv, de, me, 0, nmax).reshape(nb, 8, 32).astype(np.uint8)
    head = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(ls, lm)], axis=1)
    return head, lv


def _q_q4_k(x: np.ndarray) -> np.ndarray:
    head, lv = _k4_common(x, 15, -1.0, 0.1, 20)
    qs = (lv[:, 0::2] | (lv[:, 1::2] << 4)).reshape(x.shape[0], 128)
    return np.concatenate([head, qs], axis=1)


def _q_q5_k(x: np.ndarray) -> np.ndarray:
    head, lv = _k4_common(x, 31, -0.5, 0.1, 15)
    low = lv & 0x0F
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(x.shape[0], 128)
    qh = np.zeros((x.shape[0], 32), np.uint8)
    for k in range(8):
        qh |= (lv[:, k] >> 4) << k
    return np.concatenate([head, qh, qs], axis=1)


def _q_q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    scales, lv = _make_qx_quants(xs, 32)
    scales = scales.reshape(nb, 16)
    max_scale = _absmax_signed(scales)
    live = np.abs(max_scale) >= _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(live, _F32(-128) / max_scale, _F32(0))
        d = np.where(live, _F32(1) / iscale, _F32(0)).astype(_F32)
    sc = np.clip(_rint(iscale[:, None] * scales), -128, 127)  # ggml: MIN(127, ...) into int8
    de = (_f16_round(d)[:, None] * sc).reshape(-1)
    lv = _requant(xs, lv - 32, de, None, -32, 31) + 32
    lv = lv.reshape(nb, 2, 4, 32).astype(np.uint8)
    lo = lv & 0x0F
    ql = (lo[:, :, 0:2] | (lo[:, :, 2:4] << 4)).reshape(nb, 128)
    hi = lv >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6))
    out = np.concatenate([ql, qh.reshape(nb, 64), sc.astype(np.int8).view(np.uint8),
                          _f16_bytes(d)], axis=1)
    out[~live] = 0  # ggml memsets a block whose scales are all ~0
    return out


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
