"""Every op of backends/base.py on the WebGPU backend against the NumPy reference.

Graphs are built directly with `Graph`; activations come from random float32 tables through
get_rows (a graph's only input is its token ids). Inputs are fresh random data on every run and
the seed is printed on failure; every activation buffer is filled with NaN before each run, so a
kernel that skips a write shows. Each test runs with the adapter's optional features (subgroups,
shader-f16) and with both forced off.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import numpy as np
import pytest

from fastllm import kargs
from fastllm.backends.base import Graph, KVSpec
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType, quantize, random_blocks

from .pairs import (
    F32_TOL,
    FLOATS,
    ROPE_TOL,
    Pair,
    _backend,
    attn_tol,
    check,
    f32_info,
    info,
    mm_tol,
    quant_info,
)


# -- the kargs mirrors ------------------------------------------------------------------------
def test_kargs_wgsl_mirrors_header():
    from fastllm.backends.webgpu import shaders as webgpu_shaders

    text = webgpu_shaders.read("kargs.wgsl")
    wgsl = {}
    for name, body in re.findall(r"struct\s+(kargs_\w+)\s*\{(.*?)\}", text, re.DOTALL):
        wgsl[name] = re.findall(r"(\w+)\s*:\s*(u32|i32|f32)", body)
    types = {"u32": np.uint32, "i32": np.int32, "f32": np.float32}
    header = kargs.structs()
    assert set(wgsl) == set(header)
    for name, dt in header.items():
        assert [f for f, _ in wgsl[name]] == list(dt.names), name
        assert [np.dtype(types[t]) for _, t in wgsl[name]] == [dt[f] for f in dt.names], name


def test_shaders_have_contract_names():
    shaders = Path(__file__).resolve().parents[2] / "python/fastllm/backends/webgpu/shaders"
    text = "".join(p.read_text() for p in shaders.glob("*.wgsl"))
    for entry in ("kernel_mul_mv_TYPE_f32", "kernel_mul_mm_TYPE_f32", "kernel_get_rows_TYPE",
                  "kernel_rms_norm_f32", "kernel_rope_f32", "kernel_attn_decode_f32",
                  "kernel_attn_prefill_f32", "kernel_argmax_f32", "kernel_kv_store_f32",
                  "kernel_swiglu_f32", "kernel_geglu_f32", "kernel_add_f32", "kernel_mul_f32",
                  "kernel_scale_f32"):
        assert f"fn {entry}(" in text, entry


# -- matrices ---------------------------------------------------------------------------------
def _k(t: GGMLType) -> int:
    # float rows that are not whole 32-value units exercise the padded layout
    return 172 if t in FLOATS else 512


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_mul_mat(gpu, t, rng, monkeypatch):
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MM8_MIN_WG", 1)  # the 8 x 8 kernel at this small size
    k, n = _k(t), 72  # 72 rows: not a whole mat-vec workgroup, not a whole 64-row tile
    pair = Pair(gpu, {"w": quant_info("w", t, n, k, rng),
                      "x": f32_info("x", rng.standard_normal((40, k)))})
    # 33 and 40: 4 x 4 outputs per thread in tiles of 32 and (as at any size with enough
    # workgroups) 64 rows; 130: 8 x 8 per thread with a ragged last tile; 129: the same with K
    # split in three (16 units: 6, 6 and 4) and the partial sums added by a second dispatch
    for m in (1, 7, 33, 40, 129, 130):
        monkeypatch.setattr(matmul_shapes, "MM_MIN_WG", 1 if m == 40 else 256)
        monkeypatch.setattr(matmul_shapes, "MM_SPLIT_K", 1 if m == 129 else 1 << 30)
        monkeypatch.setattr(matmul_shapes, "MM_SPLITS", 3)

        def build(g, w):
            g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"]))

        got, want = pair.run(build, m, rng.integers(0, 40, m).astype(np.int32))
        check(got, want, mm_tol(gpu, t, m), rng, f"{t.name} M={m}")


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F16],
                         ids=lambda t: t.name)
def test_mul_mat_odd_units(gpu, t, rng, monkeypatch):
    """Rows of an odd number of 32-value units (the float one padded) in tile steps of two
    units: the last step reads past K."""
    from fastllm.backends.webgpu import matmul_shapes

    k = 68 if t == GGMLType.F16 else 96
    for ups in (1, 2):
        monkeypatch.setattr(matmul_shapes, "MM_UPS", ups)
        monkeypatch.setattr(matmul_shapes, "MM8_UPS", ups)
        monkeypatch.setattr(matmul_shapes, "MM8_MIN_WG", 1)
        pair = Pair(gpu, {"w": quant_info("w", t, 40, k, rng),
                          "x": f32_info("x", rng.standard_normal((40, k)))})
        for m in (33, 130):
            got, want = pair.run(
                lambda g, w: g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"])), m,
                rng.integers(0, 40, m).astype(np.int32))
            # the largest output of a row of two or three units is a few of its products, so the
            # f16 sums' error is a larger share of it: up to 3.0e-3 (Q4_0) in 60 runs, 1.2e-3 on
            # average; a lost or doubled unit is a third or more of it
            check(got, want, mm_tol(gpu, t, m) * 1.5, rng, f"{t.name} M={m} UPS={ups}")


def test_split_mat_mat_scratch_in_planner(gpu, rng, monkeypatch):
    """A split mat-mat's partial sums take a slot of the activation planner for the time the
    mat-mat and its sum run: never its input's or output's slot, and free for the next split
    mat-mat after it (two in a row share one), with both results right."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MM_SPLIT_K", 1)
    monkeypatch.setattr(matmul_shapes, "MM8_MIN_WG", 1)
    pair = Pair(gpu, {"a": quant_info("a", GGMLType.Q8_0, 96, 256, rng),
                      "b": quant_info("b", GGMLType.Q8_0, 64, 96, rng),
                      "x": f32_info("x", rng.standard_normal((40, 256)))})
    m = 130

    def build(g, w):
        h = g.matmul(g.get_rows(w["x"], g.tokens), w["a"])
        g.output("y", g.matmul(h, w["b"]))

    got, want = pair.run(build, m, rng.integers(0, 40, m).astype(np.int32))
    check(got, want, mm_tol(gpu, GGMLType.Q8_0, m) * 2, rng, f"M={m}")
    g = Graph(m)
    w = pair.w[gpu]
    h = g.matmul(g.get_rows(w["x"], g.tokens), w["a"])
    y = g.matmul(h, w["b"])
    g.output("y", y)
    prog = gpu.compile(g)
    try:
        nodes = [nd for nd in prog.nodes if nd.op == "mul_mat"]
        assert [nd.out.id for nd in nodes] == [h.id, y.id]
        s1, s2 = prog.scratch_of[h.id], prog.scratch_of[y.id]
        assert s1 not in (prog.slot_of[h.id], prog.slot_of[nodes[0].args[0].id])
        assert s2 not in (prog.slot_of[y.id], prog.slot_of[h.id])
        assert s1 == s2
    finally:
        prog.release()


def test_mul_mat_small_workgroup_memory(rng, monkeypatch):
    """On a device with WebGPU's base 16 KB of workgroup memory the mat-mat tiles shrink to fit
    (two units per step become one, f32 8 x 8 tiles give way to 4 x 4) and still compute the
    same products."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MM8_MIN_WG", 1)
    _backend(None).close()  # skips without an adapter
    for disable in ({"shader-f16"}, None):
        gpu = _backend(disable)
        gpu.limits["max-compute-workgroup-storage-size"] = 16384
        try:
            pair = Pair(gpu, {"w": quant_info("w", GGMLType.Q8_0, 1100, 256, rng),
                              "x": f32_info("x", rng.standard_normal((40, 256)))})
            for m in (40, 130):
                got, want = pair.run(
                    lambda g, w: g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"])),
                    m, rng.integers(0, 40, m).astype(np.int32))
                check(got, want, mm_tol(gpu, GGMLType.Q8_0, m), rng, f"M={m}")
            tb = 2 if gpu.f16 else 4
            tiles = [dict(consts) for _file, entry, _, consts, _, _ in gpu._pipelines
                     if entry.startswith("kernel_mul_mm_q")]
            assert tiles
            for c in tiles:
                assert c["UPS"] * 32 * (c["BM"] + c["BN"]) * tb <= 16384, c
        finally:
            gpu.close()


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_get_rows(gpu, t, rng):
    k, n = _k(t), 50
    pair = Pair(gpu, {"w": quant_info("w", t, n, k, rng)})
    for m in (1, 7):
        # ids outside the table are clamped (both backends see only valid ids here)
        got, want = pair.run(lambda g, w: g.output("r", g.get_rows(w["w"], g.tokens)), m,
                             rng.integers(0, n, m).astype(np.int32))
        check(got, want, 0.0, rng, f"{t.name} M={m}")


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.F16], ids=lambda t: t.name)
def test_split_weight(t, rng):
    """A weight over the binding size is split by rows; each part is its own dispatch."""
    from fastllm.backends.webgpu import WebGPUBackend

    _backend(None).close()  # skips without an adapter
    gpu = WebGPUBackend(max_binding=24 * 1024, int_dot=False)
    cap = gpu.limits["max-compute-workgroups-per-dimension"]
    try:
        k, n = 512, 150
        pair = Pair(gpu, {"w": quant_info("w", t, n, k, rng),
                          "x": f32_info("x", rng.standard_normal((n, k)))})
        assert len(pair.w[gpu]["w"].handle.parts) > 1
        for m in (1, 9):
            # decode also with 8 workgroups per grid dimension: mat-vec grids of more fold into z
            gpu.limits["max-compute-workgroups-per-dimension"] = 8 if m == 1 else cap

            def build(g, w):
                g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"]))
                g.output("r", g.get_rows(w["w"], g.tokens))

            got, want = pair.run(build, m, rng.integers(0, n, m).astype(np.int32))
            check({"y": got["y"]}, {"y": want["y"]}, mm_tol(gpu, t, m), rng,
                  f"split {t.name} M={m}")
            check({"r": got["r"]}, {"r": want["r"]}, 0.0, rng, f"split {t.name} M={m}")
    finally:
        gpu.close()


# -- element-wise, norms, argmax --------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 7])
def test_elementwise(gpu, m, rng):
    d = 96
    pair = Pair(gpu, {"a": f32_info("a", rng.standard_normal((20, d)) * 3),
                      "b": f32_info("b", rng.standard_normal((20, d)) * 3),
                      "bias": f32_info("bias", rng.standard_normal(d)),
                      "nw": f32_info("nw", rng.standard_normal(d)),
                      "hw": f32_info("hw", rng.standard_normal(16))})

    def build(g, w):
        a, b = g.get_rows(w["a"], g.tokens), g.get_rows(w["b"], g.tokens)
        g.output("add", g.add(a, b))
        g.output("bias", g.add(a, w["bias"]))
        g.output("mul", g.mul(a, b))
        g.output("mulw", g.mul(a, w["nw"]))
        g.output("scale", g.scale(a, -0.37))
        g.output("swiglu", g.swiglu(a, b))
        g.output("geglu", g.geglu(a, b))
        # a and b ~N(0, 9): both clamps of the gate and of up at 7 are reached
        g.output("swiglu_oai", g.swiglu_oai(a, b))
        g.output("norm", g.rms_norm(a, w["nw"], 1e-5))
        g.output("norm_nw", g.rms_norm(b, None, 1e-6))
        g.output("norm_head", g.rms_norm(a, w["hw"], 1e-6, group=16))
        g.output("last", g.last_row(b))

    got, want = pair.run(build, m, rng.integers(0, 20, m).astype(np.int32))
    check(got, want, F32_TOL, rng, f"M={m}")


@pytest.mark.parametrize("m", [1, 5])
def test_argmax(gpu, m, rng):
    v = 1000
    table = rng.standard_normal((10, v)).astype(np.float32)
    table[3, 17] = table[3, 900] = 50.0  # a tie: the first index wins
    pair = Pair(gpu, {"t": f32_info("t", table)})
    toks = rng.integers(0, 10, m).astype(np.int32)
    toks[0] = 3
    got, want = pair.run(lambda g, w: g.output("i", g.argmax(g.get_rows(w["t"], g.tokens))), m,
                         toks)
    np.testing.assert_array_equal(got["i"], want["i"], err_msg=f"seed {rng.seed_value}")
    assert got["i"][0] == 17


# -- rope -------------------------------------------------------------------------------------
@pytest.mark.parametrize("neox", [False, True], ids=["normal", "neox"])
@pytest.mark.parametrize("ff", [False, True], ids=["plain", "freq_factors"])
def test_rope(gpu, neox, ff, rng):
    n_head, hd, n_rot = 3, 32, 24  # n_rot < head_dim: the tail of each head passes through
    infos = {"x": f32_info("x", rng.standard_normal((20, n_head * hd)))}
    if ff:
        infos["ff"] = f32_info("ff", rng.uniform(1.0, 8.0, n_rot // 2))
    pair = Pair(gpu, infos)
    for m, pos in ((1, 0), (7, int(rng.integers(1, 300))), (1, 299)):

        def build(g, w):
            x = g.get_rows(w["x"], g.tokens)
            g.output("y", g.rope(x, n_head=n_head, head_dim=hd, n_rot=n_rot, base=10000.0,
                                 freq_scale=0.5, neox=neox, freq_factors=w.get("ff")))

        got, want = pair.run(build, m, rng.integers(0, 20, m).astype(np.int32), pos)
        check(got, want, ROPE_TOL, rng, f"M={m} pos={pos}")


# -- KV cache and attention -------------------------------------------------------------------
# (n_head, n_kv_head, head_dim): 80 is not a whole number of d-quads per thread in prefill;
# 4 heads of 256 per KV head (Gemma 3) have more (head, value quad) pairs than one-dispatch
# decode attention has threads
ATTN_SHAPES = [(4, 2, 16), (6, 2, 64), (2, 2, 8), (8, 2, 128), (2, 1, 80), (4, 1, 256)]


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "h{}kv{}d{}".format(*s))
def test_attention_runs(gpu, shape, rng):
    """kv_store + attention over several runs (prefill chunks, then decode steps) on a full
    layer and a sliding-window ring layer, out to positions past 300."""
    nh, nkv, d = shape
    window, chunk = 16, 64
    spec = KVSpec(n_ctx=512, kv_dim=(nkv * d, nkv * d), sizes=(512, window + chunk))
    vocab = 64
    pair = Pair(gpu, {"q": f32_info("q", rng.standard_normal((vocab, nh * d))),
                      "k": f32_info("k", rng.standard_normal((vocab, nkv * d))),
                      "v": f32_info("v", rng.standard_normal((vocab, nkv * d)))}, spec)

    def build(g, w):
        q, k, v = (g.get_rows(w[n], g.tokens) for n in "qkv")
        for layer, win, cap in ((0, 0, 0.0), (1, window, 0.0)):
            g.kv_store(layer, k, v)
            g.output(f"a{layer}", g.attention(q, layer, n_head=nh, n_kv_head=nkv, head_dim=d,
                                              scale=d ** -0.5, window=win, softcap=cap))

    pos = 0
    for n in (33, 7, 1, 1, chunk, chunk, chunk, chunk, chunk, 1, 1):
        got, want = pair.run(build, n, rng.integers(0, vocab, n).astype(np.int32), pos)
        check(got, want, attn_tol(gpu, n), rng, f"n={n} pos={pos}")
        pos += n
    assert pos > 300


@pytest.mark.parametrize("n", [1, 9])
def test_attention_softcap(gpu, n, rng):
    nh, nkv, d = 4, 1, 32
    spec = KVSpec(n_ctx=64, kv_dim=(nkv * d,), sizes=(64,))
    pair = Pair(gpu, {"q": f32_info("q", rng.standard_normal((32, nh * d)) * 4),
                      "k": f32_info("k", rng.standard_normal((32, nkv * d))),
                      "v": f32_info("v", rng.standard_normal((32, nkv * d)))}, spec)

    def build(g, w):
        q, k, v = (g.get_rows(w[c], g.tokens) for c in "qkv")
        g.kv_store(0, k, v)
        g.output("a", g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=d, scale=1.0,
                                  softcap=5.0))

    pos = 0
    for _ in range(3):
        got, want = pair.run(build, n, rng.integers(0, 32, n).astype(np.int32), pos)
        # scores here are ~N(0, 512) on purpose (the cap at work), so f16 Q and K tiles move
        # them by ~0.01-0.05 before the cap (observed up to 6.5e-3 of the largest output)
        check(got, want, attn_tol(gpu, n, f16_tol=2e-2), rng, f"n={n} pos={pos}")
        pos += n


def test_attention_sinks(gpu, rng, monkeypatch):
    """Attention sinks (gpt-oss): a logit per head in each softmax's denominator, on a full
    layer and a window ring, GQA, through prefill (attention.wgsl), the one-dispatch decode
    kernel up to 192 visible positions and the split kernels' reduce past them. Sinks of the
    scores' size, one far above them (a head that attends to almost nothing: its output scales
    down, which a dropped sink would miss by far)."""
    from fastllm.backends.webgpu import attention as webgpu_attention

    monkeypatch.setattr(webgpu_attention, "ATTN_DIRECT_MAX", 192)
    nh, nkv, d, window, vocab = 4, 2, 32, 16, 48
    spec = KVSpec(n_ctx=256, kv_dim=(nkv * d, nkv * d), sizes=(256, window + 64))
    sinks = rng.uniform(-2.0, 3.0, nh)
    sinks[1] = 8.0
    pair = Pair(gpu, {"q": f32_info("q", rng.standard_normal((vocab, nh * d))),
                      "k": f32_info("k", rng.standard_normal((vocab, nkv * d))),
                      "v": f32_info("v", rng.standard_normal((vocab, nkv * d))),
                      "sk": f32_info("sk", sinks)}, spec)

    def build(g, w):
        q, k, v = (g.get_rows(w[n], g.tokens) for n in "qkv")
        for layer, win in ((0, 0), (1, window)):
            g.kv_store(layer, k, v)
            g.output(f"a{layer}", g.attention(q, layer, n_head=nh, n_kv_head=nkv, head_dim=d,
                                              scale=d ** -0.5, window=win, sinks=w["sk"]))

    pos = 0
    for n in (40, 1, 1, 64, 64, 50, 1, 1):
        got, want = pair.run(build, n, rng.integers(0, vocab, n).astype(np.int32), pos)
        check(got, want, attn_tol(gpu, n), rng, f"n={n} pos={pos}")
        pos += n
    assert pos > 192


# -- a whole block --------------------------------------------------------------------------
@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.F16],
                         ids=lambda t: t.name)
def test_block_decode_after_prefill(gpu, t, rng):
    """One pre-norm decoder block (the ops a llama layer records) prefilled, then decoded
    (the decode step's own kernels: gate/up joined into silu(gate) * up, integer x written by
    its producers for the quantized types; one-dispatch attention)."""
    d, nh, nkv, hd, ff, vocab = 256, 4, 2, 64, 512, 48
    spec = KVSpec(n_ctx=128, kv_dim=(nkv * hd,), sizes=(128,))

    def mat(name, rows, cols):
        # weights of a trained model's scale keep activations O(1) and softmax not saturated
        x = rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(cols)
        return info(name, t, (rows, cols), quantize(x, t))

    infos = {"emb": mat("emb", vocab, d), "norm": f32_info("norm", rng.uniform(0.5, 1.5, d)),
             "wq": mat("wq", nh * hd, d), "wk": mat("wk", nkv * hd, d),
             "wv": mat("wv", nkv * hd, d), "wo": mat("wo", d, nh * hd),
             "gate": mat("gate", ff, d), "up": mat("up", ff, d), "down": mat("down", d, ff)}
    pair = Pair(gpu, infos, spec)

    def build(g, w):
        x = g.get_rows(w["emb"], g.tokens)
        h = g.rms_norm(x, w["norm"], 1e-5)
        q = g.rope(g.matmul(h, w["wq"]), n_head=nh, head_dim=hd, n_rot=hd, base=1e4)
        k = g.rope(g.matmul(h, w["wk"]), n_head=nkv, head_dim=hd, n_rot=hd, base=1e4)
        g.kv_store(0, k, g.matmul(h, w["wv"]))
        a = g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=hd, scale=hd ** -0.5)
        x = g.add(x, g.matmul(a, w["wo"]))
        h = g.rms_norm(x, w["norm"], 1e-5)
        x = g.add(x, g.matmul(g.swiglu(g.matmul(h, w["gate"]), g.matmul(h, w["up"])),
                              w["down"]))
        last = g.last_row(x)
        g.output("x", last)
        g.output("id", g.argmax(last))

    pos = 0
    # the prefill's mat-mats use f16 tiles with shader-f16 for every weight type (quantized
    # ones dequantize into them), and the decode steps read the cache rows it wrote, so they
    # carry its rounding too: 2.4-2.7e-3 on average over 30 runs per type, up to 4.1e-3; float
    # weights without f16 tiles: a block chains six mat-vecs, a norm and a softmax in f32
    # (1e-4; a wrong scale of 1e-3 shows)
    tol = max(mm_tol(gpu, t, 11), 1e-4 if t in FLOATS else 0.0) * 2
    for n in (11, 1, 1):
        got, want = pair.run(build, n, rng.integers(0, vocab, n).astype(np.int32), pos)
        check({"x": got["x"]}, {"x": want["x"]}, tol, rng, f"n={n} pos={pos}")
        pos += n


def test_checked_flag_compiles_both_ways(monkeypatch):
    """The backend compiles without naga's run-time checks unless asked (argument or
    FASTLLM_WEBGPU_CHECKED), and both ways give the same mat-vec on fresh inputs."""
    from fastllm.backends.webgpu import WebGPUBackend

    _backend(None).close()  # skips without an adapter
    monkeypatch.setenv("FASTLLM_WEBGPU_CHECKED", "1")
    be = WebGPUBackend()
    assert be.checked is True
    be.close()
    monkeypatch.delenv("FASTLLM_WEBGPU_CHECKED")
    rng = np.random.default_rng(secrets.randbits(63))
    w = TensorInfo("w", GGMLType.Q4_K, (64, 512),
                   random_blocks(GGMLType.Q4_K, 64, 512, rng).reshape(-1), "t.gguf")
    x = TensorInfo("x", GGMLType.F32, (3, 512),
                   rng.standard_normal((3, 512)).astype(np.float32).view(np.uint8).reshape(-1),
                   "t.gguf")
    outs = []
    for checked in (None, True):
        be = WebGPUBackend(checked=checked)
        g = Graph(1)
        g.output("y", g.matmul(g.get_rows(be.load_weight(x), g.tokens), be.load_weight(w)))
        outs.append(be.compile(g).run(np.array([2], np.int32), 0)["y"].copy())
        # after compiling: an unchecked backend that had to fall back would say checked now
        assert be.checked is bool(checked)
        be.close()
    assert np.isfinite(outs[0]).all()
    # the same arithmetic; the driver may contract or reorder it differently
    assert np.abs(outs[0] - outs[1]).max() <= 1e-5 * np.abs(outs[1]).max()
