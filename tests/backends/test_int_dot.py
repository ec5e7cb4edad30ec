"""The WebGPU integer mat-vec (quantize_x.wgsl + mul_mvq.wgsl, mul_mv_multi's q8 form): one
token row x rounded to bytes per block of 32 values, multiplied with Q8_0 / Q4_K / Q6_K / MXFP4
quants as integers (MXFP4's doubled E2M1 levels). Checked against a float64 model of exactly
that rounding, built here from the gguf package's dequantizers: x_hat = d * round(x / d) with
d = max |x| / 127 per block, y = W x_hat, and for Q4_K the min term taken over the exact x
(y = W x_hat + W_min (x - x_hat)). Values of x / d within a hair of a rounding tie may round either way on the GPU (its division and norm are f32);
each such value widens the bound by |w| d, nothing else does.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.reference import ReferenceBackend
from fastllm.quants import GGMLType, dequantize

from .pairs import VARIANTS, _backend, f32_info, quant_info

INT_TYPES = (GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.MXFP4)
TIE_BAND = 2e-3  # |frac(x / d) - 0.5| below this may round either way
F32_REL = 2e-5  # the float sums of the per-block integer products, relative to max |y|


@pytest.fixture(scope="module", params=list(VARIANTS))
def gpu(request):
    disable, checked = VARIANTS[request.param]
    be = _backend(disable, checked, int_dot=True)
    yield be
    be.close()


def _min_part(inf) -> np.ndarray:
    """Q4_K's -dmin * m per weight: the tensor dequantized with every block's d set to 0."""
    raw = np.array(inf.data, np.uint8).reshape(-1, 144)
    raw[:, 0:2] = 0
    return dequantize(raw.reshape(-1), inf.type, inf.shape).astype(np.float64)


def model_y(x: np.ndarray, inf) -> tuple[np.ndarray, np.ndarray]:
    """(y, bound): the integer mat-vec of the one row x with weight `inf` in float64, and how
    far the GPU may be from it through rounding ties alone."""
    xb = x.astype(np.float64).reshape(-1, 32)
    d = (np.abs(xb).max(1, keepdims=True).astype(np.float32) / np.float32(127)).astype(np.float64)
    t = np.divide(xb, d, out=np.zeros_like(xb), where=d > 0)
    x_hat = (np.rint(t) * d).reshape(-1)
    tie = (np.abs(t - np.floor(t) - 0.5) < TIE_BAND) * d
    w = dequantize(inf.data, inf.type, inf.shape).astype(np.float64)
    y = w @ x_hat
    scale_part = w
    if inf.type == GGMLType.Q4_K:
        w_min = _min_part(inf)
        y += w_min @ (xb.reshape(-1) - x_hat)
        scale_part = w - w_min
    return y, np.abs(scale_part) @ tie.reshape(-1)


def check_model(got: np.ndarray, x: np.ndarray, inf, what: str, seed=None) -> None:
    want, bound = model_y(x, inf)
    got = got.reshape(-1).astype(np.float64)
    assert np.isfinite(got).all(), f"{what}: non-finite values (a skipped write?)"
    err = np.abs(got - want)
    lim = F32_REL * np.abs(want).max() + bound
    worst = int(np.argmax(err - lim))
    assert (err <= lim).all(), (f"{what}: row {worst} off by {err[worst]:.3e} (allowed "
                                f"{lim[worst]:.3e}, |y| max {np.abs(want).max():.3e}; "
                                f"seed {seed})")


def _labels(prog) -> list[str]:
    return [p.label for p, _bg, _grid in prog.dispatches]


def _run(be, build, token: int):
    g = Graph(1)
    build(g)
    prog = be.compile(g)
    prog.poison()
    out = prog.run(np.array([token], np.int32), 0)
    labels = _labels(prog)
    prog.release()
    return out, labels


def _silu(g):
    return g / (1.0 + np.exp(-g))


def _rms(x, nw, eps=1e-5):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * nw


@pytest.mark.parametrize("t", INT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("form", ["plain", "res", "glu", "norm"])
def test_int_dot_mul_mv(gpu, t, form, rng):
    """Each way x reaches a mat-vec (as is, + residual, silu(gate) * up, rms-normed), on 72
    rows (not a whole workgroup's) of 512 values."""
    k, n, vocab = 512, 72, 8
    tables = {"x": rng.standard_normal((vocab, k)) * 2, "u": rng.standard_normal((vocab, k)),
              "r": rng.standard_normal((vocab, n)), "nw": rng.uniform(0.5, 1.5, k)}
    wi = quant_info("w", t, n, k, rng)
    w = {name: gpu.load_weight(f32_info(name, a)) for name, a in tables.items()}
    w["w"] = gpu.load_weight(wi)

    def build(g):
        x = g.get_rows(w["x"], g.tokens)
        if form == "glu":
            x = g.swiglu(x, g.get_rows(w["u"], g.tokens))
        if form == "norm":
            x = g.rms_norm(x, w["nw"], 1e-5)
        y = g.matmul(x, w["w"])
        if form == "res":
            y = g.add(y, g.get_rows(w["r"], g.tokens))
        g.output("y", y)

    tok = int(rng.integers(0, vocab))
    out, labels = _run(gpu, build, tok)
    assert any(lab.startswith("kernel_mul_mvq") for lab in labels), labels
    assert "kernel_quantize_x_f32" in labels, labels
    x = tables["x"][tok].astype(np.float32)
    if form == "glu":
        x = _silu(x.astype(np.float64)) * tables["u"][tok].astype(np.float32)
    if form == "norm":
        x = _rms(x, tables["nw"].astype(np.float32))
    got = out["y"][0]
    if form == "res":
        got = got - tables["r"][tok].astype(np.float32)
    check_model(got, x, wi, f"{t.name} {form}", rng.seed_value)


@pytest.mark.parametrize("types", [(GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_K),
                                   (GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.MXFP4, GGMLType.Q6_K)],
                         ids=lambda ts: "-".join(t.name for t in ts))
def test_int_dot_multi(gpu, types, rng):
    """q, k, v-like readers of one normed row: one quantize_x and one mul_mv_multi q8 dispatch
    for the first three (mixed types, row counts not multiples of a group's rows), the fourth on
    its own over the same quantized x; a float reader of the same norm keeps the float path."""
    k, vocab = 512, 8
    rows = (96, 40, 72, 8)
    x = rng.standard_normal((vocab, k)) * 3
    nw = rng.uniform(0.5, 1.5, k)
    infos = [quant_info(f"w{i}", t, n, k, rng) for i, (t, n) in enumerate(zip(types, rows))]
    ws = [gpu.load_weight(i) for i in infos]
    wx, wn = gpu.load_weight(f32_info("x", x)), gpu.load_weight(f32_info("nw", nw))

    def build(g):
        h = g.rms_norm(g.get_rows(wx, g.tokens), wn, 1e-5)
        for i, wt in enumerate(ws):
            g.output(f"y{i}", g.matmul(h, wt))

    tok = int(rng.integers(0, vocab))
    out, labels = _run(gpu, build, tok)
    assert labels.count("kernel_mul_mv_multi_q8") == 1, labels
    # the multi's, which the fourth reads too (the scratch still holds the same normed x)
    assert labels.count("kernel_quantize_x_f32") == 1, labels
    xn = _rms(x[tok].astype(np.float32), nw.astype(np.float32))
    for i, inf in enumerate(infos):
        check_model(out[f"y{i}"][0], xn, inf, f"slot {i} {inf.type.name}", rng.seed_value)


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "split"])
def test_int_dot_attention_output(gpu, t, direct, rng, monkeypatch):
    """Decode attention whose one reader is the output projection (+ residual) writes its heads
    already quantized (kernel_attn_decode_direct_q8 at short contexts, else
    kernel_attn_reduce_q8; no quantize_x dispatch); where the attention output is read by
    anything else it stays floats. Steps after a prefill, each against the model of the
    rounding applied to the reference backend's attention output."""
    from fastllm.backends.webgpu import attention as webgpu_attention

    monkeypatch.setattr(webgpu_attention, "ATTN_DIRECT_MAX", 192 if direct else 0)
    writer = "kernel_attn_decode_direct" if direct else "kernel_attn_reduce"
    nh, nkv, d, vocab = 8, 2, 64, 16
    n = nh * d
    spec = KVSpec(n_ctx=32, kv_dim=(nkv * d,), sizes=(32,))
    tables = {c: rng.standard_normal((vocab, m)) for c, m in
              (("q", n), ("k", nkv * d), ("v", nkv * d), ("r", 256))}
    wi = quant_info("wo", t, 256, n, rng)
    ref = ReferenceBackend()
    w = {b: {c: b.load_weight(f32_info(c, a)) for c, a in tables.items()} for b in (ref, gpu)}
    w[gpu]["wo"] = gpu.load_weight(wi)
    for b in (ref, gpu):
        b.init_kv(spec)

    def build(g, w, also_a=False):
        q, k, v = (g.get_rows(w[c], g.tokens) for c in "qkv")
        g.kv_store(0, k, v)
        a = g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=d, scale=0.15)
        if w is not None and "wo" in w:
            g.output("y", g.add(g.matmul(a, w["wo"]), g.get_rows(w["r"], g.tokens)))
        if also_a:
            g.output("a", a)

    for pos, m in ((0, 5), (5, 1), (6, 1), (7, 1)):
        toks = rng.integers(0, vocab, m).astype(np.int32)
        want_a = ref.compile(_graph(m, lambda g: build(g, w[ref], True))).run(toks, pos)["a"]
        prog = gpu.compile(_graph(m, lambda g: build(g, w[gpu])))
        prog.poison()
        y = prog.run(toks, pos)["y"]
        labels = _labels(prog)
        prog.release()
        if m > 1:
            continue
        assert f"{writer}_q8" in labels and "kernel_quantize_x_f32" not in labels, labels
        got = y[0] - tables["r"][toks[0]].astype(np.float32)
        check_model(got, want_a[0], wi, f"{t.name} pos {pos}", rng.seed_value)
    # the attention output also a graph output: floats, and the mat-vec quantizes it itself
    prog = gpu.compile(_graph(1, lambda g: build(g, w[gpu], True)))
    labels = _labels(prog)
    prog.release()
    assert f"{writer}_f32" in labels and "kernel_quantize_x_f32" in labels, labels


@pytest.mark.parametrize("types", [(GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K),
                                   (GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.Q4_K),
                                   (GGMLType.MXFP4, GGMLType.MXFP4, GGMLType.Q8_0)],
                         ids=lambda ts: "-".join(t.name for t in ts))
def test_int_dot_glu(gpu, types, rng, monkeypatch):
    """rms_norm -> gate, up -> swiglu -> down (+ residual): gate and up in one glu dispatch that
    writes silu(gate) * up already quantized for down (kernel_mul_mv_glu_q8; the only
    quantize_x is the norm's)."""
    d, ff, vocab = 256, 512, 8
    tg, tu, td = types
    tables = {"x": rng.standard_normal((vocab, d)) * 2, "nw": rng.uniform(0.5, 1.5, d),
              "r": rng.standard_normal((vocab, d))}
    infos = {"gate": quant_info("gate", tg, ff, d, rng), "up": quant_info("up", tu, ff, d, rng),
             "down": quant_info("down", td, d, ff, rng)}
    w = {c: gpu.load_weight(f32_info(c, a)) for c, a in tables.items()}
    w.update({c: gpu.load_weight(i) for c, i in infos.items()})

    def build(g):
        h = g.rms_norm(g.get_rows(w["x"], g.tokens), w["nw"], 1e-5)
        a = g.swiglu(g.matmul(h, w["gate"]), g.matmul(h, w["up"]))
        g.output("y", g.add(g.matmul(a, w["down"]), g.get_rows(w["r"], g.tokens)))

    tok = int(rng.integers(0, vocab))
    out, labels = _run(gpu, build, tok)
    assert labels.count("kernel_mul_mv_glu_q8") == 1, labels
    assert labels.count("kernel_quantize_x_f32") == 1, labels
    # storage bindings enough for the glu kernel (x, out, weight arrays) but not for
    # mul_mv_multi (x, two outputs, weight arrays): still the glu kernel
    arrays = sum(len(w[c].handle.parts[0].buffers) for c in ("gate", "up"))
    monkeypatch.setitem(gpu.limits, "max-storage-buffers-per-shader-stage", 2 + arrays)
    out2, labels = _run(gpu, build, tok)
    assert labels.count("kernel_mul_mv_glu_q8") == 1, labels
    assert np.array_equal(out2["y"], out["y"])
    h = _rms(tables["x"][tok].astype(np.float32), tables["nw"].astype(np.float32))
    (g, bg), (u, bu) = model_y(h, infos["gate"]), model_y(h, infos["up"])
    sg = 1.0 / (1.0 + np.exp(-g))
    v = g * sg * u
    # a rounding tie of h that went the other way moves g and u by their bounds
    dv = np.abs(sg * (1.0 + g * (1.0 - sg)) * u) * bg + np.abs(g * sg) * bu
    want, bound = model_y(v, infos["down"])
    dw = dequantize(infos["down"].data, td, infos["down"].shape).astype(np.float64)
    bound = bound + np.abs(dw) @ dv
    got = out["y"][0].astype(np.float64) - tables["r"][tok].astype(np.float32)
    err = np.abs(got - want)
    lim = F32_REL * 4 * np.abs(want).max() + bound
    assert (err <= lim).all(), (err.max(), lim[np.argmax(err - lim)], rng.seed_value)


def _graph(n, build):
    g = Graph(n)
    build(g)
    return g


def test_int_dot_split_weight(rng):
    """A weight split by rows over bindings: one quantize_x, one integer mat-vec per part."""
    from fastllm.backends.webgpu import WebGPUBackend

    _backend(None).close()  # skips without an adapter
    be = WebGPUBackend(max_binding=24 * 1024, int_dot=True)
    try:
        k, n, vocab = 512, 150, 4
        x = rng.standard_normal((vocab, k))
        wi = quant_info("w", GGMLType.Q6_K, n, k, rng)
        w = be.load_weight(wi)
        assert len(w.handle.parts) > 1
        wx = be.load_weight(f32_info("x", x))
        tok = int(rng.integers(0, vocab))
        out, labels = _run(be, lambda g: g.output("y", g.matmul(g.get_rows(wx, g.tokens), w)),
                           tok)
        assert labels.count("kernel_mul_mvq_q6_K_f32") == len(w.handle.parts), labels
        check_model(out["y"][0], x[tok].astype(np.float32), wi, "split Q6_K", rng.seed_value)
    finally:
        be.close()


def test_int_dot_only_where_it_applies(gpu, rng):
    """Float weights, other quant types and more than one token row keep the float kernels."""
    k, vocab = 256, 8
    x = gpu.load_weight(f32_info("x", rng.standard_normal((vocab, k))))
    for t, m in ((GGMLType.F16, 1), (GGMLType.Q5_K, 1), (GGMLType.Q4_K, 2)):
        wt = gpu.load_weight(quant_info("w", t, 16, k, rng))
        g = Graph(m)
        g.output("y", g.matmul(g.get_rows(x, g.tokens), wt))
        prog = gpu.compile(g)
        labels = _labels(prog)
        prog.release()
        assert not any("mvq" in lab or "quantize_x" in lab for lab in labels), (t, m, labels)


def test_int_dot_program_rebuilt(rng):
    """A program rebuilt because the KV cache was replaced (init_kv again) gets a new
    quantize_x scratch buffer: the old one went with the old build."""
    _backend(None).close()  # skips without an adapter
    from fastllm.backends.webgpu import WebGPUBackend

    be = WebGPUBackend(int_dot=True)
    try:
        spec = KVSpec(n_ctx=16, kv_dim=(64,), sizes=(16,))
        be.init_kv(spec)
        wi = quant_info("w", GGMLType.Q8_0, 64, 64, rng)
        x = rng.standard_normal((4, 64))
        wt, wx = be.load_weight(wi), be.load_weight(f32_info("x", x))

        def build(g):
            a = g.get_rows(wx, g.tokens)
            g.kv_store(0, a, a)
            g.output("y", g.matmul(a, wt))
            g.output("a", g.attention(a, 0, n_head=1, n_kv_head=1, head_dim=64, scale=0.1))

        prog = be.compile(_graph(1, build))
        assert "kernel_quantize_x_f32" in _labels(prog)
        for _ in range(2):
            y = prog.run(np.array([2], np.int32), 0)["y"]
            check_model(y[0], x[2].astype(np.float32), wi, "after init_kv", rng.seed_value)
            be.init_kv(spec)
        prog.release()
    finally:
        be.close()


def test_int_dot_zero_row(gpu, rng):
    """A block of x that is all zeros has d = 0: its bytes are 0 and nothing divides by it."""
    k = 256
    xs = rng.standard_normal((2, k))
    xs[1, 32:96] = 0.0
    wi = quant_info("w", GGMLType.Q4_K, 24, k, rng)
    wt = gpu.load_weight(wi)
    wx = gpu.load_weight(f32_info("x", xs))
    out, _ = _run(gpu, lambda g: g.output("y", g.matmul(g.get_rows(wx, g.tokens), wt)), 1)
    check_model(out["y"][0], xs[1].astype(np.float32), wi, "zero blocks", rng.seed_value)


def test_int_dot_close_to_float_path(rng):
    """The float and integer paths on the same Q8_0 weights and x agree to x's rounding: each
    output within the worst case of rounding x to bytes, half a step (max |x| / 127 of the
    block) times the sum of the weight row's |w| over the block, added over the blocks (the
    model check above is the exact one)."""
    from fastllm.quants import dequantize

    _backend(None).close()
    from fastllm.backends.webgpu import WebGPUBackend

    k, n = 256, 64
    x = rng.standard_normal((1, k)).astype(np.float32)
    wi = quant_info("w", GGMLType.Q8_0, n, k, rng)
    ys = []
    for flag in (False, True):
        be = WebGPUBackend(int_dot=flag)
        try:
            wt, wx = be.load_weight(wi), be.load_weight(f32_info("x", x))
            out, _ = _run(be, lambda g, wt=wt, wx=wx: g.output(
                "y", g.matmul(g.get_rows(wx, g.tokens), wt)), 0)
            ys.append(out["y"][0])
        finally:
            be.close()
    w = dequantize(wi.data, GGMLType.Q8_0, (n, k)).astype(np.float64)
    step = np.abs(x[0].astype(np.float64)).reshape(-1, 32).max(1) / 127.0  # a block's step
    worst = 0.5 * (np.abs(w).reshape(n, -1, 32).sum(2) * step).sum(1)
    assert (np.abs(ys[0] - ys[1]) <= worst + 1e-5 * np.abs(ys[0]).max()).all()
