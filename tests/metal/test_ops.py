"""Every op of base.py through MetalLowering and the metal/*.metal kernels, against the reference
backend on the same graph with fresh random inputs. On Linux the kernels run in the MSL emulator
under the forward, reverse and random schedules in strict mode (outputs poisoned with NaN before
each dispatch, redzones after each arena block); on macOS arm64 on the GPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from metal_env import POLICIES, RUNTIMES, make_runtime

from backends.test_moe_ops import assert_same_choice, selection_scores
from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.metal.backend import TYPE_NAMES, MetalBackend
from fastllm.backends.reference import ReferenceBackend
from fastllm.gguf import TensorInfo
from fastllm.quants import GGMLType, random_blocks

ALL_TYPES = list(TYPE_NAMES)
rng = np.random.default_rng()


def info(name, t, shape, data=None):
    if data is None:
        data = random_blocks(t, int(np.prod(shape[:-1])), shape[-1], rng)
    return TensorInfo(name, t, tuple(shape), np.ascontiguousarray(data).view(np.uint8).reshape(-1),
                      "<test>")


def f32(name, a):
    a = np.ascontiguousarray(a, np.float32)
    return info(name, GGMLType.F32, a.shape, a)


def rel_err(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all(), "non-finite values in the Metal output"
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))


def run_both(build, infos, runs, runtime, kv=None, kv_type="f16", kernels=None):
    """build(g, weights) records a graph on Graph(n) for each (tokens, pos) of runs; returns the
    metal and reference outputs of every run. `kernels`, a dict, receives the Metal program's
    kernel names for each token count."""
    mb = MetalBackend(runtime=runtime, self_check=False, kv_type=kv_type)
    rb = ReferenceBackend()
    outs = []
    for be in (mb, rb):
        w = {i.name: be.load_weight(i) for i in infos}
        if kv is not None:
            be.init_kv(kv)
        progs = {}
        res = []
        for toks, pos in runs:
            n = len(toks)
            if n not in progs:
                g = Graph(n)
                build(g, w)
                progs[n] = be.compile(g)
                if kernels is not None and be is mb:
                    kernels[n] = [d.kernel for d in progs[n].plan.dispatches]
            res.append(progs[n].run(np.asarray(toks, np.int32), pos))
        outs.append(res)
    return outs


@pytest.fixture(params=RUNTIMES)
def rt_kind(request):
    return request.param


# -- matmul and get_rows: every weight type ------------------------------------------------------
@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 3, 9])
def test_mul_mat_types(t, n_tok, rt_kind):
    k = 256 if t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
                     GGMLType.Q6_K) else 96
    n_out = 37  # not a multiple of any tile
    x = rng.standard_normal((n_tok + 2, k)).astype(np.float32)
    infos = [f32("x", x), info("w", t, (n_out, k))]

    def build(g, w):
        g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"]))

    toks = rng.permutation(n_tok + 2)[:n_tok]
    (got,), (want,) = run_both(build, infos, [(toks, 0)], make_runtime(rt_kind))
    assert rel_err(got["y"], want["y"]) < 2e-5


@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [2, 35])
def test_float_weights_ragged_rows(t, n_tok, rt_kind):
    """Float weights may have any row length: K = 40 ends inside a 16-value chunk and inside a
    32-wide tile; M = 35 leaves a partial tile of tokens."""
    k = 40
    infos = [f32("x", rng.standard_normal((n_tok, k))), info("w", t, (33, k)),
             info("emb", t, (5, k))]

    def build(g, w):
        g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"]))

    (got,), (want,) = run_both(build, infos[:2], [(np.arange(n_tok), 0)], make_runtime(rt_kind))
    assert rel_err(got["y"], want["y"]) < 2e-5

    def build_rows(g, w):
        g.output("e", g.get_rows(w["emb"], g.tokens))

    (got,), (want,) = run_both(build_rows, infos[2:], [([4, 0, 2], 0)], make_runtime(rt_kind))
    np.testing.assert_array_equal(got["e"], want["e"])


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows_types(t, rt_kind):
    k = 256 if TYPE_NAMES[t].endswith("K") else 96
    infos = [info("emb", t, (11, k))]

    def build(g, w):
        g.output("y", g.get_rows(w["emb"], g.tokens))

    (got,), (want,) = run_both(build, infos, [([10, 0, 3, 3], 0)], make_runtime(rt_kind))
    if rt_kind == "emu":  # -ffp-contract=off: the dequantizers' arithmetic as the reference's
        np.testing.assert_array_equal(got["y"], want["y"])
    else:
        assert_within_fma_ulp(got["y"], want["y"])


def assert_within_fma_ulp(got, want):
    """Apple's compiler contracts the dequantizers' d * q + m into one FMA (Q4_1, Q5_1, Q2_K,
    Q4_K, Q5_K), which skips the rounding of the product: a value may differ from the
    reference's by one unit in the last place of its 32-value block's largest product, which is
    at most twice the block's largest value (with cancellation that is more than the value's own
    ulp)."""
    blocks = want.reshape(want.shape[0], -1, 32)
    ulp = np.spacing(2 * np.abs(blocks).max(-1, keepdims=True).astype(np.float32))
    diff = np.abs(got.reshape(blocks.shape) - blocks)
    assert (diff <= ulp).all(), f"{int((diff > ulp).sum())} values past one ulp"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.F16])
def test_mul_mat_schedules(t, policy):
    k = 256
    x = rng.standard_normal((40, k)).astype(np.float32)
    infos = [f32("x", x), info("w", t, (70, k))]

    def build(g, w):
        g.output("y", g.matmul(g.get_rows(w["x"], g.tokens), w["w"]))

    runs = [(rng.permutation(40)[:33], 0), ([5, 7], 0)]  # mat-mat over 2 x 3 tiles, mat-vec
    got, want = run_both(build, infos, runs, make_runtime("emu", policy, seed=rng.integers(99)))
    for a, b in zip(got, want):
        assert rel_err(a["y"], b["y"]) < 2e-5


# -- norm, element-wise, rope, argmax ---------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
def test_rms_norm_elementwise_rope(policy):
    """One graph through every row-wise op: rms_norm (whole row, per head, no weight), add / mul
    with a bias row and with a full tensor, scale, swiglu, geglu, swiglu_oai, rope (normal,
    NeoX, partial rotation, frequency factors) at a run-time position, last_row and argmax."""
    d, heads, hd = 96, 4, 24
    infos = [f32("x", 3 * rng.standard_normal((9, d))), f32("y", rng.standard_normal((9, d))),
             f32("nw", 1 + 0.1 * rng.standard_normal(d)), f32("hw", rng.standard_normal(hd)),
             f32("bias", rng.standard_normal(d)), f32("ff", 1 + rng.random(8))]

    def build(g, w):
        x = g.get_rows(w["x"], g.tokens)
        y = g.get_rows(w["y"], g.tokens)
        a = g.rms_norm(x, w["nw"], 1e-5)
        b = g.rms_norm(x, w["hw"], 1e-6, group=hd)
        c = g.rms_norm(g.add(a, w["bias"]), None, 1e-5)
        e = g.mul(g.scale(c, 0.5), y)
        f = g.swiglu(e, g.mul(b, w["bias"]))
        h = g.geglu(g.add(f, x), y)
        o = g.swiglu_oai(x, g.scale(y, 4.0))  # x, 4y ~N(0, 9), N(0, 16): past the clamps at 7
        r1 = g.rope(h, n_head=heads, head_dim=hd, n_rot=hd, base=10000.0)
        r2 = g.rope(b, n_head=heads, head_dim=hd, n_rot=16, base=5e5, freq_scale=0.25,
                    neox=True, freq_factors=w["ff"])
        r3 = g.rope(a, n_head=heads, head_dim=hd, n_rot=8, base=100.0)
        outs = {"a": a, "b": b, "c": c, "e": e, "f": f, "h": h, "r1": r1, "r2": r2, "r3": r3,
                "o": o}
        for name, v in outs.items():
            g.output(name, v)
        g.output("last", g.last_row(r2))
        g.output("am", g.argmax(g.add(h, r1)))

    runs = [(rng.permutation(9)[:5], 0), (rng.permutation(9)[:5], 1000), ([4], 37)]
    got, want = run_both(build, infos, runs, make_runtime("emu", policy, seed=rng.integers(99)))
    for a, b in zip(got, want):
        for name in b:
            if name == "am":
                np.testing.assert_array_equal(a[name], b[name])
            else:  # rope angles at position 1000 carry float32's ~6e-5 rad rounding
                tol = 1e-4 if name.startswith("r") or name == "last" else 1e-5
                assert rel_err(a[name], b[name]) < tol, name


def test_argmax_ties_and_wide_rows():
    """First index on ties, rows wider than a threadgroup, a maximum in the last element."""
    x = rng.standard_normal((4, 3000)).astype(np.float32)
    x[0, [7, 2900]] = 50.0
    x[1, 2999] = 50.0
    x[2, :] = -1.0
    infos = [f32("x", x)]

    def build(g, w):
        g.output("am", g.argmax(g.get_rows(w["x"], g.tokens)))

    (got,), (want,) = run_both(build, infos, [([0, 1, 2, 3], 0)], make_runtime("emu", "random"))
    np.testing.assert_array_equal(got["am"], want["am"])
    np.testing.assert_array_equal(got["am"][:3], [7, 2999, 0])


# -- fused ops (backends/fuse.py) ---------------------------------------------------------------
def _ffn(wg, wu, wd):
    """build() of a feed-forward block: rms_norm, gate and up, SwiGLU, down, residual add."""
    def build(g, w):
        x = g.get_rows(w["x"], g.tokens)
        n = g.rms_norm(x, w["nw"], 1e-5)
        gate = g.matmul(n, w[wg])
        up = g.matmul(n, w[wu])
        g.output("gate", gate)
        g.output("y", g.add(x, g.matmul(g.swiglu(gate, up), w[wd])))
    return build


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_fused_mul_mv_types(t):
    """Each weight type through the fused mat-vec: one token row runs the norm inside a
    two-weight dispatch (gate, up) and the SwiGLU and the residual inside the down projection's;
    three rows keep the norm apart; nine take the mat-mat with the SwiGLU and the residual as its
    epilogues. Against the reference backend on the unfused graph."""
    k = 256 if TYPE_NAMES[t].endswith("K") else 96
    f = k + 32 * (TYPE_NAMES[t] in ("f32", "f16", "bf16"))  # float rows: ragged 16-value chunks
    # the norm makes the rest scale-free: x's scale sets the residual's share of y, here about
    # that of the down projection (random blocks give outputs of ~1e3-1e5)
    infos = [f32("x", 1e3 * rng.standard_normal((12, k))),
             f32("nw", 1 + 0.1 * rng.standard_normal(k)),
             info("wg", t, (f, k)), info("wu", t, (f, k)), info("wd", t, (k, f))]
    kernels = {}
    runs = [(rng.permutation(12)[:n], 0) for n in (1, 3, 9)]
    got, want = run_both(_ffn("wg", "wu", "wd"), infos, runs, make_runtime("emu", "random"),
                         kernels=kernels)
    for a, b in zip(got, want):
        for name in b:
            assert rel_err(a[name], b[name]) < 2e-5, name
    name = TYPE_NAMES[t]
    assert kernels[1] == ["kernel_get_rows_f32", f"kernel_mul_mv_fused_{name}_f32",
                          f"kernel_mul_mv_fused_{name}_f32"]
    assert kernels[3] == ["kernel_get_rows_f32", "kernel_rms_norm_f32",
                          f"kernel_mul_mv_{name}_f32", f"kernel_mul_mv_{name}_f32",
                          f"kernel_mul_mv_fused_{name}_f32"]
    assert kernels[9] == ["kernel_get_rows_f32", "kernel_rms_norm_f32"] + \
        [f"kernel_mul_mm_{name}_f32"] * 3


def test_fused_mul_mv_mixed_types():
    """gate and up of different types (as a Q4_K_M file mixes them): one norm mat-vec each."""
    k = 256
    infos = [f32("x", 1e3 * rng.standard_normal((4, k))),
             f32("nw", 1 + 0.1 * rng.standard_normal(k)),
             info("wg", GGMLType.Q4_K, (k, k)), info("wu", GGMLType.Q6_K, (k, k)),
             info("wd", GGMLType.Q8_0, (k, k))]
    kernels = {}
    (got,), (want,) = run_both(_ffn("wg", "wu", "wd"), infos, [([2], 5)],
                               make_runtime("emu", "reverse"), kernels=kernels)
    for name in want:
        assert rel_err(got[name], want[name]) < 2e-5, name
    assert kernels[1][1:] == ["kernel_mul_mv_fused_q4_K_f32", "kernel_mul_mv_fused_q6_K_f32",
                              "kernel_mul_mv_fused_q8_0_f32"]


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_fused_rope_kv_store(kv_type):
    """rope of q and k and the cache store in one dispatch (NeoX and normal pairs, a partial
    rotation, frequency factors), read back by decode and prefill attention over a ring."""
    nh, nkv, hd, ring = 4, 2, 32, 24
    total = 30
    infos = [f32("q", rng.standard_normal((total, nh * hd))),
             f32("k", rng.standard_normal((total, nkv * hd))),
             f32("v", rng.standard_normal((total, nkv * hd))), f32("ff", 1 + rng.random(8))]
    kernels = {}
    for neox, n_rot, ff in ((False, hd, None), (True, 16, "ff")):
        def build(g, w, neox=neox, n_rot=n_rot, ff=ff):
            q, k, v = (g.get_rows(w[n], g.tokens) for n in "qkv")
            rope = {"head_dim": hd, "n_rot": n_rot, "base": 1e4, "neox": neox,
                    "freq_factors": w[ff] if ff else None}
            q = g.rope(q, n_head=nh, **rope)
            g.kv_store(0, g.rope(k, n_head=nkv, **rope), v)
            g.output("o", g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=hd,
                                      scale=hd ** -0.5, window=12))

        runs, pos = [], 0
        for n in (10, 1, 11, 1, 1, 6):
            runs.append((np.arange(pos, pos + n), pos))
            pos += n
        got, want = run_both(build, infos, runs, make_runtime("emu", "random"),
                             kv=KVSpec(64, (nkv * hd,), (ring,)), kv_type=kv_type,
                             kernels=kernels)
        for i, (a, b) in enumerate(zip(got, want)):
            assert rel_err(a["o"], b["o"]) < (2e-3 if kv_type == "f16" else 1e-4), i
        for ks in kernels.values():
            assert f"kernel_rope_kv_store_{kv_type}" in ks
            assert "kernel_rope_f32" not in ks and f"kernel_kv_store_{kv_type}" not in ks


# -- KV cache and attention -------------------------------------------------------------------
ATTN_CASES = {
    # name: n_head, n_kv_head, head_dim, window, softcap, ring, runs (tokens per run)
    "gqa_decode": (8, 2, 64, 0, 0.0, 64, [5, 1, 1, 1]),
    "prefill_then_decode": (4, 4, 32, 0, 0.0, 64, [19, 1, 9, 1]),
    "window_ring": (4, 1, 16, 12, 0.0, 24, [10, 1, 11, 1, 1, 9, 1]),
    "softcap_d256": (2, 1, 256, 0, 20.0, 32, [9, 1]),
    "tiny_heads": (8, 4, 8, 0, 0.0, 64, [3, 8, 1, 1]),
    # with a sink logit per head (gpt-oss; "sinks" cases): prefill, decode past the ring's size
    "sinks_window_gqa": (4, 2, 32, 12, 0.0, 24, [10, 1, 11, 1, 1]),
}


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("case", sorted(ATTN_CASES))
def test_attention(case, kv_type, rt_kind, policy="forward"):
    nh, nkv, hd, window, softcap, ring, lens = ATTN_CASES[case]
    n_ctx = 64
    total = sum(lens)
    sinks = case.startswith("sinks")
    infos = [f32("q", rng.standard_normal((total, nh * hd))),
             f32("k", rng.standard_normal((total, nkv * hd))),
             f32("v", rng.standard_normal((total, nkv * hd)))]
    if sinks:  # of the scores' size and one far above them (that head's output nearly 0)
        infos.append(f32("sk", np.append(rng.uniform(-2.0, 3.0, nh - 1), 8.0)))
    kv = KVSpec(n_ctx, (nkv * hd,), (ring,))

    def build(g, w):
        q, k, v = (g.get_rows(w[n], g.tokens) for n in "qkv")
        g.kv_store(0, k, v)
        g.output("o", g.attention(q, 0, n_head=nh, n_kv_head=nkv, head_dim=hd,
                                  scale=hd ** -0.5, window=window, softcap=softcap,
                                  sinks=w["sk"] if sinks else None))

    runs, pos = [], 0
    for n in lens:
        runs.append((np.arange(pos, pos + n), pos))
        pos += n
    got, want = run_both(build, infos, runs, make_runtime(rt_kind, policy), kv=kv,
                         kv_type=kv_type)
    tol = 2e-3 if kv_type == "f16" else 1e-5
    for i, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a["o"], b["o"]) < tol, f"run {i}"


@pytest.mark.parametrize("policy", ["reverse", "random"])
@pytest.mark.parametrize("case", ["gqa_decode", "window_ring"])
def test_attention_schedules(case, policy):
    test_attention(case, "f32", "emu", policy)


# -- mixture of experts (moe.metal, mul_mv.metal's kernel_mul_mv_id_*) ---------------------------
N_ROUTE = 24  # rows of the router's logits table; its last row ties every expert


def route_logits(n_expert: int) -> np.ndarray:
    """(N_ROUTE, n_expert) logits: each row a random order of evenly spaced values moved by at
    most a tenth of a gap (the reference in float64 and the kernel in float32 choose alike), the
    last row all equal (ties: the lower index first)."""
    gap = 4.0 / (n_expert - 1)
    rows = [rng.permutation(np.linspace(-2.0, 2.0, n_expert))
            + rng.uniform(-0.1, 0.1, n_expert) * gap for _ in range(N_ROUTE - 1)]
    return np.concatenate([rows, np.full((1, n_expert), 0.5)]).astype(np.float32)


def route_tokens(n: int) -> list[int]:
    return [*rng.integers(0, N_ROUTE - 1, n - 1), N_ROUTE - 1]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("gating", ["softmax", "sigmoid", "softmax_weight"])
def test_moe_route(gating, policy):
    for n_expert, k in ((6, 2), (128, 8)):
        table, b = route_logits(n_expert), rng.uniform(-0.3, 0.3, n_expert) / n_expert
        infos = [f32("l", table), f32("b", b)]
        for norm, bias, scale in ((False, False, 1.0), (True, True, 2.5)):
            def build(g, w, norm=norm, bias=bias, scale=scale, k=k):
                ids, wts = g.moe_route(g.get_rows(w["l"], g.tokens), k, gating=gating,
                                       norm=norm, scale=scale, bias=w["b"] if bias else None)
                g.output("ids", ids)
                g.output("w", wts)

            runs = [(route_tokens(n), 0) for n in (1, 9)]
            got, want = run_both(build, infos, runs, make_runtime("emu", policy))
            for (toks, _), a, w in zip(runs, got, want):
                # a near-tie of the scores may break either way (test_moe_ops.py says why)
                assert_same_choice(a["ids"], w["ids"], selection_scores(
                    table.astype(np.float32), b.astype(np.float32), toks, gating, bias),
                    f"{gating} E={n_expert}")
                assert rel_err(a["w"], w["w"]) < 1e-5
                if not bias:
                    assert list(w["ids"][-1]) == list(range(k))


def moe_chain(g, w, k: int):
    """router -> matmul_id over x (n, d) -> matmul_id over its (n, k, m) output -> per-expert
    multipliers and biases -> the weighted sum."""
    ids, wts = g.moe_route(g.get_rows(w["l"], g.tokens), k, norm=True)
    h = g.matmul_id(g.get_rows(w["x"], g.tokens), w["w1"], ids)
    y = g.add_id(g.mul_id(g.matmul_id(h, w["w2"], ids), w["s"], ids), w["b"], ids)
    g.output("h", h)
    g.output("y", y)
    g.output("sum", g.moe_sum(y, wts))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_mul_mat_id_types(t, rt_kind):
    """Each weight type as the experts' first matrix; n = 1: a threadgroup per (row, expert);
    5 and 19: grouped by expert (one and three chunks of 8 rows). 37 rows per expert: not a
    whole threadgroup of rows."""
    n_expert, k, m = 6, 2, 37
    d = 256 if TYPE_NAMES[t].endswith("K") else 96
    infos = [f32("l", route_logits(n_expert)), f32("x", rng.standard_normal((N_ROUTE, d))),
             info("w1", t, (n_expert, m, d)), f32("w2", rng.standard_normal((n_expert, 20, m))),
             f32("s", rng.uniform(0.5, 2.0, n_expert)),
             f32("b", rng.standard_normal((n_expert, 20)))]
    got, want = run_both(lambda g, w: moe_chain(g, w, k), infos,
                         [(route_tokens(n), 0) for n in (1, 5, 19)], make_runtime(rt_kind))
    for a, b in zip(got, want):
        for name in ("h", "y", "sum"):
            assert rel_err(a[name], b[name]) < 2e-5, name


@pytest.mark.parametrize("policy", ["reverse", "random"])
def test_mul_mat_id_schedules(policy):
    """The grouped path's list (threadgroup atomics) under the other schedules."""
    n_expert, m, d = 6, 37, 256
    infos = [f32("l", route_logits(n_expert)), f32("x", rng.standard_normal((N_ROUTE, d))),
             info("w1", GGMLType.Q4_K, (n_expert, m, d)),
             f32("w2", rng.standard_normal((n_expert, 20, m))),
             f32("s", rng.uniform(0.5, 2.0, n_expert)),
             f32("b", rng.standard_normal((n_expert, 20)))]
    got, want = run_both(lambda g, w: moe_chain(g, w, 3), infos, [(route_tokens(19), 0)],
                         make_runtime("emu", policy))
    for name in ("h", "y", "sum"):
        assert rel_err(got[0][name], want[0][name]) < 2e-5, name


def test_every_kernel_ran(request):
    """Runs last in this module: when the whole module ran on the emulator, each kernel of
    metal/*.metal has run at least once (a kernel no test reaches would be untested)."""
    module = request.node.parent
    ran = {i.nodeid for i in request.session.items}
    every = {i.nodeid for i in module.collect()}
    if not every <= ran or "mslemu_runtime" not in sys.modules:
        pytest.skip("only meaningful when every test of test_ops.py runs on the emulator")
    rt = sys.modules["mslemu_runtime"]
    # rwkv.metal's kernels are run by test_rwkv_metal.py and rows.metal's by
    # test_rows_metal.py, which check them the same way; probe.metal's by test_native.py (the
    # capability probe, through the fake extension); sample_rows.metal's by test_sample_rows.py
    # and rows_chain.metal's by test_rows_sampled_metal.py (a batched step sampled on the device);
    # delta.metal's by test_delta_metal.py
    libs = rt.libraries()
    others = {libs[k] for k in ("kernel_wkv7_f32", "kernel_attn_rows_f32", "kernel_probe_simd",
                                "kernel_sample_rows_final", "kernel_rows_chain_next",
                                "kernel_gated_delta_f32")}
    missing = sorted(k for k, lib in libs.items()
                     if lib not in others and k not in rt.EmuRuntime.total)
    assert not missing, f"kernels no test ran: {missing}"
