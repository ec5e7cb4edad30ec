import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mslemu

K = os.path.join(os.path.dirname(__file__), "..", "kernels")
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def mv():
    return mslemu.Library(os.path.join(K, "matvec.metal"))


@pytest.fixture(scope="module")
def red():
    return mslemu.Library(os.path.join(K, "reduce_tg.metal"))


@pytest.fixture(scope="module")
def gemm():
    return mslemu.Library(os.path.join(K, "gemm_sgmat.metal"))


@pytest.mark.parametrize("policy", ["forward", "reverse", "random"])
def test_matvec_simd_sum(mv, policy):
    rows, cols = 37, 512  # rows not a multiple of the 4 SIMD-groups/threadgroup
    W = rng.standard_normal((rows, cols)).astype(np.float16)
    x = rng.standard_normal(cols).astype(np.float32)
    bW, bx, by = mv.buffer(W), mv.buffer(x), mv.buffer(np.zeros(rows, np.float32))
    bp = mv.buffer(np.array([rows, cols], np.uint32))
    st = mv.dispatch(
        "matvec_simd",
        [bW, bx, by, bp],
        threadgroups=((rows + 3) // 4,),
        threads_per_threadgroup=(128,),
        policy=policy,
        seed=3,
    )
    ref = W.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(by, ref, rtol=1e-4, atol=1e-4)
    assert st["threads"] == 10 * 128


def test_matvec_shuffle_down(mv):
    rows, cols = 16, 300
    W = rng.standard_normal((rows, cols)).astype(np.float16)
    x = rng.standard_normal(cols).astype(np.float32)
    bW, bx, by = mv.buffer(W), mv.buffer(x), mv.buffer(np.zeros(rows, np.float32))
    bp = mv.buffer(np.array([rows, cols], np.uint32))
    mv.dispatch(
        "matvec_shuffle", [bW, bx, by, bp], threadgroups=(rows,), threads_per_threadgroup=(32,)
    )
    np.testing.assert_allclose(by, W.astype(np.float64) @ x, rtol=1e-4, atol=1e-4)


def _block_sum_inputs(lib, n4, tpg):
    h = rng.standard_normal((n4, 4)).astype(np.float16)
    ntg = (n4 + tpg - 1) // tpg
    return (
        h,
        ntg,
        [
            lib.buffer(h),
            lib.buffer(np.zeros(ntg, np.float32)),
            lib.buffer(np.array([n4], np.uint32)),
        ],
    )


@pytest.mark.parametrize("policy", ["forward", "reverse", "random"])
def test_block_sum_tg_barrier(red, policy):
    n4, tpg = 1000, 256
    h, ntg, bufs = _block_sum_inputs(red, n4, tpg)
    red.dispatch(
        "block_sum",
        bufs,
        threadgroups=(ntg,),
        threads_per_threadgroup=(tpg,),
        policy=policy,
        seed=7,
    )
    pad = np.zeros((ntg * tpg, 4), np.float32)
    pad[:n4] = h.astype(np.float32) * 2
    np.testing.assert_allclose(bufs[1], pad.reshape(ntg, -1).sum(1), rtol=2e-3, atol=2e-2)


def test_missing_barrier_is_caught(red):
    """The forgotten barrier gives wrong sums under at least one schedule."""
    n4, tpg = 1000, 256
    h, ntg, bufs = _block_sum_inputs(red, n4, tpg)
    pad = np.zeros((ntg * tpg, 4), np.float32)
    pad[:n4] = h.astype(np.float32) * 2
    ref = pad.reshape(ntg, -1).sum(1)
    wrong = 0
    for policy in ["forward", "reverse", "random"]:
        red.dispatch(
            "block_sum_nobarrier",
            bufs,
            threadgroups=(ntg,),
            threads_per_threadgroup=(tpg,),
            policy=policy,
        )
        wrong += not np.allclose(bufs[1], ref, rtol=2e-3, atol=2e-2)
    assert wrong >= 1


def test_dynamic_tg_memory_and_early_exit(red):
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    ntg = (n + 255) // 256
    bufs = [
        red.buffer(x),
        red.buffer(np.zeros(ntg, np.float32)),
        red.buffer(np.array([n], np.uint32)),
    ]
    red.dispatch(
        "block_sum_dyn",
        bufs,
        threads=(n,),
        threads_per_threadgroup=(256,),
        threadgroup_memory=[8 * 4],
    )
    pad = np.zeros(ntg * 256, np.float32)
    pad[:n] = x
    np.testing.assert_allclose(bufs[1], pad.reshape(ntg, -1).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["gemm_sg8x8", "gemm_sg8x8_tgT"])
def test_simdgroup_matrix_gemm(gemm, kernel):
    M, N, K = 24, 64, 40
    A = rng.standard_normal((M, K)).astype(np.float16)
    B = rng.standard_normal((K, N)).astype(np.float16)
    Bin = np.ascontiguousarray(B.T) if kernel.endswith("tgT") else B
    bufs = [
        gemm.buffer(A),
        gemm.buffer(Bin),
        gemm.buffer(np.zeros((M, N), np.float32)),
        gemm.buffer(np.array([M, N, K], np.uint32)),
    ]
    gemm.dispatch(
        kernel,
        bufs,
        threadgroups=(N // 32, M // 8),
        threads_per_threadgroup=(128,),
        policy="random",
    )
    np.testing.assert_allclose(
        bufs[2], A.astype(np.float32) @ B.astype(np.float32), rtol=1e-3, atol=1e-3
    )


def test_strict_mode_flags_barrier_after_return(red):
    """dispatchThreads with a partial last threadgroup: fine (no early return in block_sum_dyn)."""
    n = 1000
    bufs = [
        red.buffer(np.ones(n, np.float32)),
        red.buffer(np.zeros(4, np.float32)),
        red.buffer(np.array([n], np.uint32)),
    ]
    st = red.dispatch(
        "block_sum_dyn",
        bufs,
        threads=(n,),
        threads_per_threadgroup=(256,),
        threadgroup_memory=[32],
        strict=True,
    )
    assert st["barrier_after_return"] == 0
    np.testing.assert_allclose(bufs[1], [256, 256, 256, 232])


BAD = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    kernel void oob(device const float* a [[buffer(0)]], device float* b [[buffer(1)]],
                    uint i [[thread_position_in_grid]]) {
        b[i] = a[i + 1];          // off-by-one read past the end of `a`
    }
    kernel void divergent_sum(device float* b [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
        if (lane < 16) b[lane] = simd_sum(1.0f);      // only half the SIMD-group takes part
    }
    kernel void early_exit_barrier(device float* b [[buffer(0)]], uint i [[thread_position_in_grid]]) {
        threadgroup float t[64];
        if (i >= 40) return;                           // some threads leave ...
        t[i] = 1.0f;
        threadgroup_barrier(mem_flags::mem_threadgroup); // ... and never reach the barrier
        b[i] = t[63 - i];                              // reads never-written threadgroup memory
    }
""")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    p = tmp_path_factory.mktemp("bad") / "bad.metal"
    p.write_text(BAD)
    return str(p)


def test_oob_read_faults(bad):
    code = textwrap.dedent(f"""
        import sys, numpy as np; sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "..")!r})
        import mslemu
        L = mslemu.Library({bad!r})
        a = L.buffer(np.ones(1024, np.float32)); b = L.buffer(np.zeros(1024, np.float32))
        L.dispatch("oob", [a, b], threads=(1024,), threads_per_threadgroup=(256,))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 86, r.stderr
    assert "thread_position_in_grid=(1023,0,0)" in r.stderr


def test_divergent_simd_sum(bad):
    L = mslemu.Library(bad)
    b = L.buffer(np.zeros(32, np.float32))
    st = L.dispatch("divergent_sum", [b], threadgroups=(1,), threads_per_threadgroup=(32,))
    assert st["divergent_simd_ops"] == 1
    assert (b[:16] == 16).all()  # sum over the 16 active lanes
    with pytest.raises(mslemu.KernelError, match="divergent control flow"):
        L.dispatch(
            "divergent_sum", [b], threadgroups=(1,), threads_per_threadgroup=(32,), strict=True
        )


def test_early_exit_barrier(bad):
    L = mslemu.Library(bad)
    b = L.buffer(np.zeros(64, np.float32))
    st = L.dispatch("early_exit_barrier", [b], threadgroups=(1,), threads_per_threadgroup=(64,))
    assert st["barrier_after_return"] == 1
    assert np.isnan(b[:24]).all()  # t[63-i] for i<24 was never written -> NaN poison
    with pytest.raises(mslemu.KernelError, match="already returned"):
        L.dispatch(
            "early_exit_barrier", [b], threadgroups=(1,), threads_per_threadgroup=(64,), strict=True
        )


def test_kernel_names(mv):
    assert mv.kernels() == ["matvec_shuffle", "matvec_simd"]


def test_many_small_dispatches_reuse_fiber_stacks(red):
    """Fiber stacks are pooled across dispatches: of 200 launches of a 256-thread threadgroup
    only the first maps stacks (a fresh mmap + guard page + page faults per fiber made each
    launch cost ~9 ms). Counted, not timed: a busy machine changes the time, not the count."""
    n = 256
    bufs = [red.buffer(np.ones(n, np.float32)), red.buffer(np.zeros(1, np.float32)),
            red.buffer(np.array([n], np.uint32))]

    def launch():
        red.dispatch("block_sum_dyn", bufs, threads=(n,), threads_per_threadgroup=(256,),
                     threadgroup_memory=[32])

    launch()
    mapped = red.stacks_mapped()
    assert mapped >= n  # a fiber each
    for _ in range(199):
        launch()
    assert bufs[1][0] == n
    assert red.stacks_mapped() == mapped
