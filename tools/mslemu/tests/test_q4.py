import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mslemu

block = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # sizeof == 18, same as MSL


def quantize_q4_0(w):
    r, c = w.shape
    b = w.reshape(r, c // 32, 32)
    amax_idx = np.abs(b).argmax(-1)
    mx = np.take_along_axis(b, amax_idx[..., None], -1)[..., 0]
    d = mx / -8
    inv = np.where(d != 0, 1 / d, 0)
    q = np.clip(np.floor(b * inv[..., None] + 8.5), 0, 15).astype(np.uint8)
    out = np.zeros((r, c // 32), block)
    out["d"] = d.astype(np.float16)
    out["qs"] = q[..., :16] | (q[..., 16:] << 4)
    return out


def dequant(qb):
    q = np.concatenate([qb["qs"] & 0xF, qb["qs"] >> 4], -1).astype(np.float32) - 8
    return (q * qb["d"].astype(np.float32)[..., None]).reshape(qb.shape[0], -1)


def test_q4_0_matvec():
    rng = np.random.default_rng(0)
    rows, cols = 64, 1024
    qb = quantize_q4_0(rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal(cols).astype(np.float32)
    L = mslemu.Library(os.path.join(os.path.dirname(__file__), "..", "kernels", "q4_matvec.metal"))
    bufs = [
        L.buffer(qb),
        L.buffer(x),
        L.buffer(np.zeros(rows, np.float32)),
        L.buffer(np.array([cols], np.uint32)),
    ]
    L.dispatch(
        "mul_mv_q4_0_f32",
        bufs,
        threadgroups=(rows // 2,),
        threads_per_threadgroup=(64,),
        policy="random",
    )
    np.testing.assert_allclose(bufs[2], dequant(qb) @ x, rtol=1e-4, atol=1e-3)
    assert "error" not in mslemu.lint(
        os.path.join(os.path.dirname(__file__), "..", "kernels", "q4_matvec.metal")
    )
