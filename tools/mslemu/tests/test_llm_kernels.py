"""Example LLM-inference kernels (kernels/mv_kquant.metal: GGUF Q4_K / Q6_K decode mat-vec;
kernels/attn_decode.metal: GQA decode attention with online softmax and function constants)
checked against numpy in float64 under several schedules."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mslemu

K = os.path.join(os.path.dirname(__file__), "..", "kernels")
SCHED = [
    {"policy": "forward"},
    {"policy": "reverse"},
    {"policy": "random", "seed": 3, "strict": True},
]


# ---------------------------------------------------------------- GGUF k-quants (formulas of gguf-py quants.py)
def deq_q4_K(blk):  # blk: [nblocks, 144] uint8
    d = blk[:, 0:2].copy().view(np.float16).astype(np.float64)
    dmin = blk[:, 2:4].copy().view(np.float16).astype(np.float64)
    s = blk[:, 4:16].astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], 1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    qs = blk[:, 16:144].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 15).reshape(-1, 8, 32).astype(np.float64)
    return (d[:, None] * sc[..., None] * q - dmin[:, None] * mn[..., None]).reshape(-1, 256)


def deq_q6_K(blk):  # blk: [nblocks, 210] uint8
    ql, qh = blk[:, 0:128], blk[:, 128:192]
    sc = blk[:, 192:208].view(np.int8).astype(np.float64)
    d = blk[:, 208:210].copy().view(np.float16).astype(np.float64).reshape(-1)
    lo = (ql.reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 15
    hi = (qh.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (lo.reshape(-1, 8, 32) | (hi.reshape(-1, 8, 32) << 4)).astype(np.float64) - 32
    return (d[:, None, None] * sc.reshape(-1, 16, 1) * q.reshape(-1, 16, 16)).reshape(-1, 256)


def rand_blocks(rng, n, size, half_at):
    blk = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for o in half_at:  # finite halves over a wide range of magnitudes
        h = (rng.standard_normal(n) * np.exp2(rng.integers(-16, 1, n).astype(float))).astype(
            np.float16
        )
        blk[:, o : o + 2] = h.view(np.uint8).reshape(-1, 2)
    return blk


MV_ARGS = np.dtype([("nrows", "<i4"), ("ncols", "<i4"), ("nb1", "<u8")], align=True)


@pytest.fixture(scope="module")
def mv():
    return mslemu.Library(os.path.join(K, "mv_kquant.metal"))


@pytest.mark.parametrize(
    "kname,size,halves,deq,NR",
    [
        ("kernel_mul_mv_q4_K_f32_r4", 144, (0, 2), deq_q4_K, 4),
        ("kernel_mul_mv_q6_K_f32_r2", 210, (208,), deq_q6_K, 2),
    ],
)
@pytest.mark.parametrize("sched", SCHED)
def test_mv_kquant(mv, kname, size, halves, deq, NR, sched):
    rng = np.random.default_rng(size)
    nrows, ncols, nsg = 37, 1280, 2
    blk = rand_blocks(rng, nrows * ncols // 256, size, halves)
    W = deq(blk).reshape(nrows, ncols)
    try:  # cross-check the numpy dequantization against gguf-py where it is installed
        import gguf

        qt = gguf.GGMLQuantizationType.Q4_K if size == 144 else gguf.GGMLQuantizationType.Q6_K
        np.testing.assert_allclose(
            gguf.quants.dequantize(blk.reshape(nrows, -1), qt), W, rtol=1e-6, atol=1e-30
        )
    except ImportError:
        pass
    x = rng.standard_normal(ncols).astype(np.float32)
    args = np.array([(nrows, ncols, ncols // 256 * size)], MV_ARGS)
    y = mv.buffer(np.full(nrows, np.nan, np.float32))
    mv.dispatch(
        kname,
        [mv.buffer(args), mv.buffer(blk), mv.buffer(x), y],
        threadgroups=(-(-nrows // (NR * nsg)),),
        threads_per_threadgroup=(32 * nsg,),
        **sched,
    )
    bound = 2e-6 * (np.abs(W) @ np.abs(x))
    assert (np.abs(y - W @ x) <= bound).all()


# ---------------------------------------------------------------- decode attention
ATTN_ARGS = np.dtype(
    [
        ("n_kv_head", "<i4"),
        ("kv_len", "<i4"),
        ("scale", "<f4"),
        ("nb_k1", "<u8"),
        ("nb_k2", "<u8"),
        ("nb_v1", "<u8"),
        ("nb_v2", "<u8"),
    ],
    align=True,
)


@pytest.mark.parametrize(
    "fc", [{"FC_attn_has_mask": False}, {"FC_attn_has_mask": True, "FC_attn_softcap": 20.0}]
)
def test_attn_decode(fc):
    L = mslemu.Library(os.path.join(K, "attn_decode.metal"), function_constants=fc)
    rng = np.random.default_rng(0)
    D, G, NSG, n_kv, kv_len, n_ctx = 128, 4, 4, 2, 203, 256
    q = rng.standard_normal((n_kv * G, D)).astype(np.float32)
    Kc = (rng.standard_normal((n_kv, n_ctx, D)) * 2).astype(np.float16)
    Vc = rng.standard_normal((n_kv, n_ctx, D)).astype(np.float16)
    Kc[:, kv_len:] = np.nan  # stale cache past kv_len must not be read
    Vc[:, kv_len:] = np.nan
    mask = np.where(rng.random(n_ctx) < 0.2, -np.inf, 0.0).astype(np.float32)
    mask[0] = 0
    scale = D**-0.5
    args = np.array([(n_kv, kv_len, scale, D * 2, n_ctx * D * 2, D * 2, n_ctx * D * 2)], ATTN_ARGS)
    s = np.einsum(
        "kgd,ktd->kgt",
        q.reshape(n_kv, G, D).astype(np.float64) * scale,
        Kc[:, :kv_len].astype(np.float64),
    )
    if "FC_attn_softcap" in fc:
        s = 20.0 * np.tanh(s / 20.0)
    if fc["FC_attn_has_mask"]:
        s = s + mask[:kv_len]
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum(
        "kgt,ktd->kgd", p / p.sum(-1, keepdims=True), Vc[:, :kv_len].astype(np.float64)
    ).reshape(-1, D)
    for sched in SCHED:
        out = L.buffer(np.full(q.shape, np.nan, np.float32))
        bufs = [
            L.buffer(args),
            L.buffer(q),
            L.buffer(Kc),
            L.buffer(Vc),
            out,
            L.buffer(mask) if fc["FC_attn_has_mask"] else None,
        ]
        L.dispatch(
            "kernel_attn_decode_d128_g4_nsg4",
            bufs,
            threadgroups=(n_kv,),
            threads_per_threadgroup=(32 * NSG,),
            **sched,
        )
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
