"""The fused kernels (backends/fuse.py) and the device-side decoding loops on the WebGPU backend
against the NumPy reference, as tests/backends/test_ops.py checks the plain ops: fresh random
inputs, NaN-poisoned activations, each with the adapter's features and with them forced off."""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.backends.base import Graph, KVSpec
from fastllm.quants import GGMLType, quantize

from .pairs import (
    MATMUL_TOL,
    ROPE_TOL,
    Pair,
    attn_tol,
    check,
    f32_info,
    info,
    mm_tol,
    quant_info,
)


# -- fused kernels (fuse.fuse) ---------------------------------------------------------
def _fused_ops(be, build, n: int) -> list[str]:
    g = Graph(n)
    build(g)
    prog = be.compile(g)
    ops = [node.op for node in prog.nodes]
    prog.release()
    return ops


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.F16,
                               GGMLType.MXFP4], ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3])
def test_fused_mul_mv(gpu, t, m, rng):
    """swiglu -> mul_mat -> add and mul_mat -> add become one mat-vec dispatch each
    (mul_mv_fused: glu_res and res variants), matching the reference's separate ops."""
    d, ff, vocab = 256, 512, 16
    infos = {"g": f32_info("g", rng.standard_normal((vocab, ff)) * 2),
             "u": f32_info("u", rng.standard_normal((vocab, ff))),
             "x": f32_info("x", rng.standard_normal((vocab, d))),
             "down": quant_info("down", t, d, ff, rng), "wo": quant_info("wo", t, d, d, rng)}
    pair = Pair(gpu, infos)

    def build(g, w):
        x = g.get_rows(w["x"], g.tokens)
        h = g.add(x, g.matmul(g.swiglu(g.get_rows(w["g"], g.tokens),
                                       g.get_rows(w["u"], g.tokens)), w["down"]))
        g.output("y", g.add(g.matmul(h, w["wo"]), h))  # residual on the left and the right

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), m)
    assert ops.count("mul_mv_fused") == 2 and "swiglu" not in ops and "add" not in ops, ops
    got, want = pair.run(build, m, rng.integers(0, vocab, m).astype(np.int32))
    check(got, want, MATMUL_TOL[t] * 2, rng, f"m={m}")


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("splits", [1, 4])
def test_fused_mat_mat_residual(gpu, t, splits, rng, monkeypatch):
    """A prefill mat-mat followed by add(x, .) adds the residual as its results leave (the res
    variant: in the mat-mat's store, or with K split in the planes' sum), so no add runs;
    the residual on either side of the add."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MM_SPLITS", splits)
    monkeypatch.setattr(matmul_shapes, "MM4_SPLIT", int(splits > 1))
    d, vocab, m = 256, 40, 37

    def mat(name):  # products the size of the residual, so a wrong residual shows
        a = rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d)
        return info(name, t, (d, d), quantize(a, t))

    infos = {"x": f32_info("x", rng.standard_normal((vocab, d))), "wo": mat("wo"),
             "w2": mat("w2")}
    pair = Pair(gpu, infos)

    def build(g, w):
        x = g.get_rows(w["x"], g.tokens)
        h = g.add(x, g.matmul(x, w["wo"]))
        g.output("y", g.add(g.matmul(h, w["w2"]), h))

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), m)
    assert ops.count("mul_mv_fused") == 2 and "add" not in ops, ops
    g = Graph(m)
    build(g, pair.w[gpu])
    prog = gpu.compile(g)
    labels = [p.label for p, _, _ in prog.dispatches]
    prog.release()
    assert ("kernel_mul_mm_sum_f32" in labels) == (splits > 1), labels
    assert any(s.startswith("kernel_mul_mm_res_") for s in labels) == (splits == 1), labels
    got, want = pair.run(build, m, rng.integers(0, vocab, m).astype(np.int32))
    check(got, want, mm_tol(gpu, t, m) * 2, rng, f"splits={splits}")


@pytest.mark.parametrize("act", ["swiglu", "geglu"])
@pytest.mark.parametrize("splits", [1, 4])
def test_fused_mat_mat_glu(gpu, act, splits, rng, monkeypatch):
    """A prefill mat-mat (up) followed by swiglu / geglu(gate, up) stores act(gate) * up as its
    results leave (in its store, or with K split in the planes' sum): no activation dispatch,
    and the down projection reads the product."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MM_SPLITS", splits)
    monkeypatch.setattr(matmul_shapes, "MM4_SPLIT", int(splits > 1))
    d, ff, vocab, m = 128, 256, 40, 29
    t = GGMLType.Q8_0

    def mat(name, rows, cols):
        a = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(cols)
        return info(name, t, (rows, cols), quantize(a * 2, t))

    infos = {"x": f32_info("x", rng.standard_normal((vocab, d))), "gate": mat("gate", ff, d),
             "up": mat("up", ff, d), "down": mat("down", d, ff)}
    pair = Pair(gpu, infos)

    def build(g, w):
        x = g.get_rows(w["x"], g.tokens)
        gate, up = g.matmul(x, w["gate"]), g.matmul(x, w["up"])
        g.output("y", g.matmul(getattr(g, act)(gate, up), w["down"]))

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), m)
    assert "mul_mm_glu" in ops and act not in ops, ops
    g = Graph(m)
    build(g, pair.w[gpu])
    prog = gpu.compile(g)
    labels = [p.label for p, _, _ in prog.dispatches]
    prog.release()
    assert any(s.startswith(f"kernel_mul_mm_{act}_") for s in labels) == (splits == 1), labels
    got, want = pair.run(build, m, rng.integers(0, vocab, m).astype(np.int32))
    check(got, want, mm_tol(gpu, t, m) * 2, rng, f"splits={splits}")


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.F32],
                         ids=lambda t: t.name)
def test_fused_rms_norm_mul_mv(gpu, t, rng):
    """A one-row rms_norm read only by mat-vecs is computed inside each of them (norm variant);
    with more rows, or another reader, it stays a dispatch of its own."""
    d, vocab = 512, 16
    infos = {"x": f32_info("x", rng.standard_normal((vocab, d)) * 3),
             "nw": f32_info("nw", rng.uniform(0.5, 1.5, d)),
             "a": quant_info("a", t, 64, d, rng), "b": quant_info("b", t, 96, d, rng)}
    pair = Pair(gpu, infos)

    def build(g, w):
        h = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        g.output("a", g.matmul(h, w["a"]))
        g.output("b", g.matmul(h, w["b"]))

    for m in (1, 2):
        ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), m)
        assert ("rms_norm" in ops) == (m > 1), ops
        got, want = pair.run(build, m, rng.integers(0, vocab, m).astype(np.int32))
        check(got, want, MATMUL_TOL[t] * 2, rng, f"m={m}")


@pytest.mark.parametrize("types", [(GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_K),
                                   (GGMLType.F16, GGMLType.Q5_K, GGMLType.Q4_0, GGMLType.F32),
                                   (GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.MXFP4, GGMLType.Q6_K)],
                         ids=lambda ts: "-".join(t.name for t in ts))
def test_fused_mul_mv_multi(gpu, types, rng, monkeypatch):
    """The mat-vecs reading one folded norm run in one dispatch per three (mul_mv_multi), the
    slots of different types and row counts (not multiples of the rows per group); the same
    graph falls back to one dispatch per weight where the device has too few bindings."""
    d, vocab = 512, 16
    rows = (96, 40, 72, 8)
    infos = {"x": f32_info("x", rng.standard_normal((vocab, d)) * 3),
             "nw": f32_info("nw", rng.uniform(0.5, 1.5, d))}
    infos.update({f"w{i}": quant_info(f"w{i}", t, n, d, rng)
                  for i, (t, n) in enumerate(zip(types, rows))})
    pair = Pair(gpu, infos)

    def build(g, w):
        h = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        for i in range(len(rows)):
            g.output(f"y{i}", g.matmul(h, w[f"w{i}"]))

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), 1)
    assert ops == ["get_rows", "mul_mv_multi", "mul_mv_fused"], ops
    for cap in (None, 4):
        if cap:
            monkeypatch.setitem(gpu.limits, "max-storage-buffers-per-shader-stage", cap)
        got, want = pair.run(build, 1, rng.integers(0, vocab, 1).astype(np.int32))
        check(got, want, max(MATMUL_TOL[t] for t in types) * 2, rng, f"cap={cap}")


def test_fused_mul_mv_multi_padded_rows(gpu, rng):
    """Float slots whose rows are not whole 32-value units (the padded layout: x columns past K
    must read as zero) in one mul_mv_multi."""
    d, vocab = 172, 8
    infos = {"x": f32_info("x", rng.standard_normal((vocab, d))),
             "nw": f32_info("nw", rng.uniform(0.5, 1.5, d)),
             "a": quant_info("a", GGMLType.F16, 40, d, rng),
             "b": quant_info("b", GGMLType.F32, 24, d, rng)}
    pair = Pair(gpu, infos)

    def build(g, w):
        h = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        g.output("a", g.matmul(h, w["a"]))
        g.output("b", g.matmul(h, w["b"]))

    assert "mul_mv_multi" in _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), 1)
    got, want = pair.run(build, 1, rng.integers(0, vocab, 1).astype(np.int32))
    check(got, want, MATMUL_TOL[GGMLType.F16] * 2, rng)


def test_fused_norm_mul_mv_long_rows(gpu, rng):
    """Rows of 8192 values take the wide mat-vec shapes (128 threads per row; 8 rows per
    group for Q8_0), alone and as mul_mv_multi slots."""
    d, vocab = 8192, 4
    infos = {"x": f32_info("x", rng.standard_normal((vocab, d)) * 3),
             "nw": f32_info("nw", rng.uniform(0.5, 1.5, d)),
             "a": quant_info("a", GGMLType.Q8_0, 40, d, rng),
             "b": quant_info("b", GGMLType.Q4_K, 24, d, rng),
             "c": quant_info("c", GGMLType.Q6_K, 12, d, rng)}
    pair = Pair(gpu, infos)

    def build(g, w):
        h = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        g.output("a", g.matmul(h, w["a"]))
        h2 = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        g.output("b", g.matmul(h2, w["b"]))
        g.output("c", g.matmul(h2, w["c"]))

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), 1)
    assert ops.count("mul_mv_fused") == 1 and ops.count("mul_mv_multi") == 1, ops
    got, want = pair.run(build, 1, rng.integers(0, vocab, 1).astype(np.int32))
    check(got, want, MATMUL_TOL[GGMLType.Q4_K] * 2, rng)


@pytest.mark.parametrize("neox", [False, True])
def test_fused_rope_kv_store(gpu, neox, rng):
    """rope(q), rope(k), kv_store(k, v) become one dispatch (rope_kv_store); attention then
    reads what it stored, at several positions (n_rot < head_dim copies the tail)."""
    n, nh, nkv, d = 3, 4, 2, 32
    spec = KVSpec(n_ctx=32, kv_dim=(nkv * d,), sizes=(32,))
    pair = Pair(gpu, {"q": f32_info("q", rng.standard_normal((16, nh * d))),
                      "k": f32_info("k", rng.standard_normal((16, nkv * d))),
                      "v": f32_info("v", rng.standard_normal((16, nkv * d)))}, spec)

    def build(g, w):
        rope = {"head_dim": d, "n_rot": 16, "base": 1e4, "neox": neox}
        q, k, v = (g.get_rows(w[c], g.tokens) for c in "qkv")
        q = g.rope(q, n_head=nh, **rope)  # consecutive, as a model records them
        k = g.rope(k, n_head=nkv, **rope)
        g.kv_store(0, k, v)
        g.output("q", q)
        g.output("a", g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=d, scale=0.2))

    assert "rope_kv_store" in _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), n)
    pos = 0
    for _ in range(3):
        got, want = pair.run(build, n, rng.integers(0, 16, n).astype(np.int32), pos)
        check(got, want, attn_tol(gpu, n, ROPE_TOL), rng, f"pos={pos}")
        pos += n


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("window", [0, 4])
def test_fused_attn_decode_rope(gpu, neox, window, rng):
    """At one token row, rope_kv_store + attention become one dispatch pair (attn_decode_rope:
    the rotations and the store inside decode attention); decoding after a prefill matches the
    reference step after step, and the cache rows it stored serve the later steps."""
    nh, nkv, d = 4, 2, 32
    spec = KVSpec(n_ctx=32, kv_dim=(nkv * d,), sizes=(32,))
    pair = Pair(gpu, {"q": f32_info("q", rng.standard_normal((16, nh * d))),
                      "k": f32_info("k", rng.standard_normal((16, nkv * d))),
                      "v": f32_info("v", rng.standard_normal((16, nkv * d)))}, spec)

    def build(g, w):
        rope = {"head_dim": d, "n_rot": d, "base": 1e4, "neox": neox}
        q, k, v = (g.get_rows(w[c], g.tokens) for c in "qkv")
        q = g.rope(q, n_head=nh, **rope)
        k = g.rope(k, n_head=nkv, **rope)
        g.kv_store(0, k, v)
        g.output("a", g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=d, scale=0.2,
                                  window=window))

    ops = _fused_ops(gpu, lambda g: build(g, pair.w[gpu]), 1)
    assert "attn_decode_rope" in ops and "rope_kv_store" not in ops, ops
    got, want = pair.run(build, 5, rng.integers(0, 16, 5).astype(np.int32), 0)
    check(got, want, attn_tol(gpu, 5, ROPE_TOL), rng, "prefill")
    for pos in range(5, 12):
        got, want = pair.run(build, 1, rng.integers(0, 16, 1).astype(np.int32), pos)
        check(got, want, ROPE_TOL, rng, f"pos={pos}")


@pytest.mark.parametrize("direct_max", [256, 12, 0])
def test_run_greedy(gpu, rng, direct_max, monkeypatch):
    """Program.run_greedy (argmax on the device, fed to the next step) yields the tokens that
    run() + numpy argmax yield, and leaves the same KV cache behind; with decode attention in
    one dispatch throughout (256), switching to the split kernels at position 12, mid command
    buffer (12), and split throughout (0)."""
    from fastllm.backends.webgpu import attention as webgpu_attention

    monkeypatch.setattr(webgpu_attention, "ATTN_DIRECT_MAX", direct_max)
    vocab, d = 64, 64
    spec = KVSpec(n_ctx=40, kv_dim=(d,), sizes=(40,))
    infos = {"emb": f32_info("emb", rng.standard_normal((vocab, d))),
             "wq": quant_info("wq", GGMLType.Q8_0, d, d, rng),
             "out": quant_info("out", GGMLType.Q8_0, vocab, d, rng)}
    be = gpu
    w = {n: be.load_weight(i) for n, i in infos.items()}

    def build(g):
        x = g.get_rows(w["emb"], g.tokens)
        g.kv_store(0, x, x)
        a = g.attention(g.matmul(x, w["wq"]), 0, n_head=1, n_kv_head=1, head_dim=d, scale=0.1)
        g.output("logits", g.matmul(g.add(a, x), w["out"]))

    g = Graph(1)
    build(g)
    be.init_kv(spec)  # before compiling: the program binds the cache
    prog = be.compile(g)
    want, tok = [], int(rng.integers(0, vocab))
    first = tok
    for pos in range(30):
        tok = int(np.argmax(prog.run(np.array([tok], np.int32), pos)["logits"][0]))
        want.append(tok)
    after = prog.run(np.array([tok], np.int32), 30)["logits"]
    be.init_kv(spec)
    got = prog.run_greedy(30, first, 0)
    assert got == want
    assert np.array_equal(prog.run(np.array([got[-1]], np.int32), 30)["logits"], after)
    prog.release()


def test_run_greedy_wide_rows_and_ties(gpu, rng):
    """Greedy decoding's argmax over a row scanned in chunks by many workgroups: each step's
    token is the first of two equal maxima (the second in a later chunk), and runs longer than
    one command buffer's steps carry token and position across."""
    from fastllm.backends.webgpu import loops as wp

    vocab, cols = 64, 20_011
    table = rng.standard_normal((vocab, cols)).astype(np.float32)
    for r in range(vocab):
        a = int(rng.integers(0, vocab))
        table[r, [a, int(rng.integers(a + 1, cols))]] = 9.0
    g = Graph(1)  # logits: the table row of the token (a graph without attention or cache)
    g.output("logits", g.get_rows(gpu.load_weight(f32_info("t", table)), g.tokens))
    prog = gpu.compile(g)
    n = 3 * wp.GREEDY_PASS + 5
    first = int(rng.integers(0, vocab))
    want, tok = [], first
    for _ in range(n):
        tok = int(np.argmax(table[tok]))
        want.append(tok)
    assert prog.run_greedy(n, first, 0) == want
    more, tok = [], want[-1]  # a second run: its own positions and history origin
    for _ in range(5):
        tok = int(np.argmax(table[tok]))
        more.append(tok)
    assert prog.run_greedy(5, want[-1], n) == more
    prog.release()


@pytest.mark.parametrize("chunk", [2048, 48])
def test_run_sampled(gpu, rng, chunk, monkeypatch):
    """Program.run_sampled (the chain and the draw on the device, each token fed to the next
    step) picks what fastllm.sampling.draw picks on the same row with the same uniform number,
    for several chains (sampling_cases), over a row of 20,011 columns cut into 10 chunks (2048)
    or the most the kernel takes (64, with chunk 48), with equal largest values inside and
    across chunks and runs longer than one command buffer. Where they differ, f32 against the
    host's f64 must explain it."""
    from fastllm.backends.webgpu import loops as wp
    from sampling_cases import check_sampled, table_with_ties

    monkeypatch.setattr(wp, "SAMPLE_CHUNK", chunk)
    table = table_with_ties(rng, 64, 20_011)
    g = Graph(1)  # logits: the table row of the token
    g.output("logits", g.get_rows(gpu.load_weight(f32_info("t", table)), g.tokens))
    prog = gpu.compile(g)
    assert check_sampled(prog.run_sampled, table, 3 * wp.GREEDY_PASS + 5, rng) <= 2
    prog.release()

