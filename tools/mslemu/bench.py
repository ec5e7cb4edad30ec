"""Emulator timings on the sample kernels, and the missing-barrier demo (the wrong sums a
forgotten threadgroup_barrier gives under each schedule)."""

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mslemu

rng = np.random.default_rng(1)
red = mslemu.Library(f"{HERE}/kernels/reduce_tg.metal")
n4, tpg = 1000, 256
h = rng.standard_normal((n4, 4)).astype(np.float16)
ntg = 4
bufs = [red.buffer(h), red.buffer(np.zeros(ntg, np.float32)), red.buffer(np.array([n4], np.uint32))]
pad = np.zeros((ntg * tpg, 4), np.float32)
pad[:n4] = h.astype(np.float32) * 2
ref = pad.reshape(ntg, -1).sum(1)
for pol in ["forward", "reverse", "random"]:
    red.dispatch(
        "block_sum_nobarrier",
        bufs,
        threadgroups=(ntg,),
        threads_per_threadgroup=(tpg,),
        policy=pol,
        seed=1,
    )
    print("missing barrier", pol, "max abs err vs ref:", float(np.abs(bufs[1] - ref).max()))
mv = mslemu.Library(f"{HERE}/kernels/matvec.metal")
for rows, cols in [(1024, 1024), (4096, 4096)]:
    W = rng.standard_normal((rows, cols)).astype(np.float16)
    x = rng.standard_normal(cols).astype(np.float32)
    b = [
        mv.buffer(W),
        mv.buffer(x),
        mv.buffer(np.zeros(rows, np.float32)),
        mv.buffer(np.array([rows, cols], np.uint32)),
    ]
    t = time.time()
    st = mv.dispatch("matvec_simd", b, threadgroups=(rows // 4,), threads_per_threadgroup=(128,))
    dt = time.time() - t
    err = np.abs(b[2] - W.astype(np.float64) @ x).max()
    print(f"matvec {rows}x{cols}: {dt:.3f}s, {st['threads']} threads, {st['simd_ops']} simd ops, "
          f"maxerr {err:.2e}")
g = mslemu.Library(f"{HERE}/kernels/gemm_sgmat.metal")
M = N = K = 256
A = rng.standard_normal((M, K)).astype(np.float16)
B = rng.standard_normal((K, N)).astype(np.float16)
b = [
    g.buffer(A),
    g.buffer(B),
    g.buffer(np.zeros((M, N), np.float32)),
    g.buffer(np.array([M, N, K], np.uint32)),
]
t = time.time()
st = g.dispatch("gemm_sg8x8", b, threadgroups=(N // 32, M // 8), threads_per_threadgroup=(128,))
dt = time.time() - t
err = np.abs(b[2] - A.astype(np.float32) @ B.astype(np.float32)).max()
print(f"gemm 256^3 simdgroup_matrix: {dt:.3f}s, simd ops {st['simd_ops']}, maxerr {err:.2e}")
