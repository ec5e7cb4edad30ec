"""The K-quant quantizers (Q2_K .. Q6_K): ggml's per-group scale searches (make_qx_quants,
make_qkx2_quants, make_q3_quants), the super-block scales quantized against their maxima, and
the blocks packed as ggml-common.h lays them out. encode.py's `quantize` dispatches to them."""

from __future__ import annotations

import numpy as np

from .rounding import _F32, _absmax_signed, _f16_bytes, _f16_round, _rint, _safe_div, _seqsum
from .types import QK_K

_EPS = _F32(1e-15)  # ggml's GROUP_MAX_EPS: a group with a smaller absmax is all zeros


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
    """8 6-bit scales and mins -> the 12 bytes decode.py's _k4_scales unpacks."""
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
