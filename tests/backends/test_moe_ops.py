"""The mixture-of-experts ops (Graph.moe_route, matmul_id, add_id, mul_id, moe_sum) on the WebGPU
backend against the NumPy reference, with fresh random inputs and NaN-poisoned activations
(pairs.py's Pair), with the adapter's features and with them forced off.

The router's logits are rows of well-separated values (a random order of evenly spaced values,
gaps far above float32 rounding), so the reference (float64 probabilities) and the kernels must
choose the same experts: ids are compared exactly. A few rows are all equal: the lower index
first on ties, as the reference's stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.backends.base import Graph
from fastllm.quants import SUPPORTED_TYPES, GGMLType, random_blocks

from .pairs import F32_TOL, FLOATS, Pair, _backend, check, f32_info, info

N_TABLE = 24  # rows of the logits / x tables (token ids pick them)
TIED = 3  # the table's last rows: all experts equal


def route_logits(gen, n_expert: int) -> np.ndarray:
    """(N_TABLE, n_expert) router logits: each row a permutation of evenly spaced values in
    [-2, 2] (gaps 4 / (E - 1)) moved by at most a tenth of a gap; the last TIED rows all 0.5."""
    gap = 4.0 / (n_expert - 1)
    base = np.linspace(-2.0, 2.0, n_expert)
    rows = [gen.permutation(base) + gen.uniform(-0.1, 0.1, n_expert) * gap
            for _ in range(N_TABLE - TIED)]
    return np.concatenate([np.array(rows), np.full((TIED, n_expert), 0.5)]).astype(np.float32)


def expert_info(name: str, t: GGMLType, n_expert: int, m: int, k: int, rng):
    return info(name, t, (n_expert, m, k), random_blocks(t, n_expert * m, k, rng))


def tokens(rng, n: int) -> np.ndarray:
    toks = rng.integers(0, N_TABLE, n).astype(np.int32)
    toks[-1] = N_TABLE - 1  # a tied row in every run
    return toks


def selection_scores(table, b, toks, gating: str, bias: bool) -> np.ndarray:
    """What the router ranks experts by, in float64, for the rows toks of the logits table:
    probabilities (the logits themselves for softmax_weight) plus the selection bias b."""
    b = np.asarray(b, np.float64).reshape(-1)
    lg = np.asarray(table, np.float64).reshape(-1, b.size)[np.asarray(toks)]
    if gating == "softmax":
        e = np.exp(lg - lg.max(axis=1, keepdims=True))
        lg = e / e.sum(axis=1, keepdims=True)
    elif gating == "sigmoid":
        lg = 1.0 / (1.0 + np.exp(-lg))
    return lg + (b if bias else 0.0)


def assert_same_choice(got, want, scores, what: str, tol: float = 1e-6) -> None:
    """got's experts equal want's; where they differ, only between experts whose scores are
    within float32 rounding of each other (a near-tie that either side may break), and got is
    still a top-k in descending order of the float64 scores."""
    for r in range(got.shape[0]):
        if list(got[r]) == list(want[r]):
            continue
        s = scores[r]
        chosen = s[got[r]]
        rest = np.delete(s, got[r])
        assert np.all(np.diff(chosen) <= tol), (what, r, got[r], want[r], chosen)
        assert rest.size == 0 or chosen.min() >= rest.max() - tol, (what, r, got[r], want[r])
        assert np.allclose(np.sort(s[want[r]]), np.sort(chosen), rtol=0, atol=tol), \
            (what, r, got[r], want[r])


@pytest.mark.parametrize("gating", ["softmax", "sigmoid", "softmax_weight"])
def test_moe_route(gpu, gating, rng):
    for n_expert, k in ((6, 2), (128, 8)):
        infos = {"l": f32_info("l", route_logits(rng, n_expert)),
                 "b": f32_info("b", rng.uniform(-0.3, 0.3, n_expert) / n_expert)}
        pair = Pair(gpu, infos)
        for norm, bias, scale in ((False, False, 1.0), (True, False, 1.0), (True, True, 2.5)):
            def build(g, w, norm=norm, bias=bias, scale=scale, k=k):
                ids, wts = g.moe_route(g.get_rows(w["l"], g.tokens), k, gating=gating,
                                       norm=norm, scale=scale, bias=w["b"] if bias else None)
                g.output("ids", ids)
                g.output("w", wts)

            for n in (1, 9):
                toks = tokens(rng, n)
                got, want = pair.run(build, n, toks)
                what = f"E={n_expert} k={k} norm={norm} bias={bias} n={n}"
                assert_same_choice(got["ids"], want["ids"], selection_scores(
                    infos["l"].data.view(np.float32), infos["b"].data.view(np.float32), toks,
                    gating, bias), what)
                check({"w": got["w"]}, {"w": want["w"]}, F32_TOL, rng, what)
                # a tied row: experts 0..k-1 (with a bias the choice follows the bias)
                if not bias:
                    assert list(want["ids"][-1]) == list(range(k)), what


def _moe_chain(g, w, k: int, x_rows: str = "x"):
    """router -> matmul_id over x (n, d) -> swiglu-free second matmul_id over its (n, k, m)
    output -> per-expert multipliers and biases -> the weighted sum."""
    x = g.get_rows(w[x_rows], g.tokens)
    ids, wts = g.moe_route(g.get_rows(w["l"], g.tokens), k, norm=True)
    h = g.matmul_id(x, w["w1"], ids)
    y = g.matmul_id(h, w["w2"], ids)
    y = g.add_id(g.mul_id(y, w["s"], ids), w["b"], ids)
    g.output("ids", ids)
    g.output("h", h)
    g.output("y", y)
    g.output("sum", g.moe_sum(y, wts))


def _k(t: GGMLType) -> int:
    return 172 if t in FLOATS else 256  # float rows that are not whole 32-value units: padded


# the experts' products sum a row's products in another order than NumPy (and the quantized
# types' kernels as 16 (f - sum(x)) from biased nibbles, quants.wgsl): float32 rounding of the
# partial sums, up to ~2e-6 of the largest output observed; a wrong expert, row or unit is off
# by a large fraction of it
ID_TOL = 3e-5


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_mul_mat_id(gpu, t, rng):
    """Every weight type as the experts' first matrix (x (n, d)); F32 second ((n, k, m) x).
    n = 1: a workgroup per (row, expert); 5 and 19: grouped by expert (one and three chunks
    of 8 rows). 40 rows per expert: not a whole workgroup of rows."""
    n_expert, k, m, d = 6, 2, 40, _k(t)
    pair = Pair(gpu, {"l": f32_info("l", route_logits(rng, n_expert)),
                      "x": f32_info("x", rng.standard_normal((N_TABLE, d))),
                      "w1": expert_info("w1", t, n_expert, m, d, rng),
                      "w2": f32_info("w2", rng.standard_normal((n_expert, 36, m))),
                      "s": f32_info("s", rng.uniform(0.5, 2.0, n_expert)),
                      "b": f32_info("b", rng.standard_normal((n_expert, 36)))})
    for n in (1, 5, 19):
        got, want = pair.run(lambda g, w: _moe_chain(g, w, k), n, tokens(rng, n))
        np.testing.assert_array_equal(got["ids"], want["ids"])
        check({a: got[a] for a in ("h", "y", "sum")}, {a: want[a] for a in ("h", "y", "sum")},
              ID_TOL, rng, f"{t.name} n={n}")


def test_mul_mat_id_split_weight(rng):
    """An expert weight split into parts (a small binding limit): an expert's rows straddle
    two parts, each dispatch writes the rows its part holds."""
    from fastllm.backends.webgpu import WebGPUBackend
    from fastllm.errors import BackendError

    try:
        be = WebGPUBackend(max_binding=16 * 1024, int_dot=False)
    except BackendError as e:
        pytest.skip(f"no WebGPU adapter: {e}")
    n_expert, k, m, d = 6, 3, 40, 256
    # Q8_0 rows of 256 values: 256 bytes of quants (the largest array), 62 rows a part, so parts
    # begin mid-expert
    pair = Pair(be, {"l": f32_info("l", route_logits(rng, n_expert)),
                     "x": f32_info("x", rng.standard_normal((N_TABLE, d))),
                     "w1": expert_info("w1", GGMLType.Q8_0, n_expert, m, d, rng),
                     "w2": f32_info("w2", rng.standard_normal((n_expert, 8, m))),
                     "s": f32_info("s", rng.uniform(0.5, 2.0, n_expert)),
                     "b": f32_info("b", rng.standard_normal((n_expert, 8)))})
    parts = pair.w[be]["w1"].handle.parts
    assert len(parts) > 2 and any(p.row0 % m for p in parts)
    for n in (1, 11):
        got, want = pair.run(lambda g, w: _moe_chain(g, w, k), n, tokens(rng, n))
        check({a: got[a] for a in ("h", "sum")}, {a: want[a] for a in ("h", "sum")}, ID_TOL,
              rng, f"n={n}")
    be.close()


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.MXFP4],
                         ids=lambda t: t.name)
def test_mul_mat_id_int_dot(t, rng):
    """Decode's integer expert mat-vec (quantize_x.wgsl + mul_mvq_id.wgsl, int_dot on): each
    pair's output against test_int_dot.py's float64 model of that rounding, over the chosen
    expert's slice of the weight, for x of one row (n, d) and of one row per pair (n, k, d)."""
    from fastllm.backends.webgpu.repack import type_name
    from fastllm.quants import row_bytes

    from .test_int_dot import check_model

    be = _backend(None, False, int_dot=True)
    n_expert, k, m, d = 6, 3, 40, 256
    wi = expert_info("w1", t, n_expert, m, d, rng)
    tables = {"l": route_logits(rng, n_expert), "x": rng.standard_normal((N_TABLE, 64)),
              "x2": rng.standard_normal((N_TABLE, d)) * 2,
              "w0": rng.standard_normal((n_expert, d, 64))}
    w = {name: be.load_weight(f32_info(name, a)) for name, a in tables.items()}
    wi2 = expert_info("w2", t, n_expert, m, d, rng)
    w["w1"], w["w2"] = be.load_weight(wi), be.load_weight(wi2)
    g = Graph(1)
    ids, _ = g.moe_route(g.get_rows(w["l"], g.tokens), k)
    h0 = g.matmul_id(g.get_rows(w["x"], g.tokens), w["w0"], ids)  # F32: the float kernel
    x2 = g.get_rows(w["x2"], g.tokens)
    for name, v in (("ids", ids), ("h0", h0), ("per_pair", g.matmul_id(h0, w["w1"], ids)),
                    ("per_row", g.matmul_id(x2, w["w1"], ids)),
                    ("per_row2", g.matmul_id(x2, w["w2"], ids)), ("x2", x2)):
        g.output(name, v)
    prog = be.compile(g)
    labels = [p.label for p, _bg, _grid in prog.dispatches]
    assert labels.count(f"kernel_mul_mvq_id_{type_name(t)}_f32") == 3
    # x2 is quantized once for its two products (as the up and gate products of a layer)
    assert labels.count("kernel_quantize_x_f32") == 2
    prog.poison()
    out = prog.run(np.array([int(rng.integers(0, N_TABLE))], np.int32), 0)
    rb = row_bytes(t, d)
    raw = np.asarray(wi.data).reshape(-1)
    raw2 = np.asarray(wi2.data).reshape(-1)
    for j, e in enumerate(out["ids"][0]):
        part = info("w1", t, (m, d), raw[e * m * rb:(e + 1) * m * rb])
        check_model(out["per_row2"][0, j], out["x2"][0],
                    info("w2", t, (m, d), raw2[e * m * rb:(e + 1) * m * rb]),
                    f"{t.name} second product of x2, expert {e}", rng.seed_value)
        check_model(out["per_pair"][0, j], out["h0"][0, j], part, f"{t.name} pair {j}",
                    rng.seed_value)
        check_model(out["per_row"][0, j], out["x2"][0], part, f"{t.name} row, expert {e}",
                    rng.seed_value)
    prog.release()
    be.close()


@pytest.mark.parametrize("fused", [False, True], ids=["gate_up", "gate_up_fused"])
def test_moe_layer_folds(rng, monkeypatch, fused):
    """A decode MoE layer as WebGPU folds it: its norm computed by its readers (a router-like
    mat-vec's norm variant, the experts' quantize_x), gate and up in one dispatch that writes
    silu(gate) * up as the down projection's quantized x (no swiglu or quantize_x dispatch)
    and the residual added by the weighted sum (no add dispatch), against the same device with
    the folds off; `fused`: gate and up as one weight of gate rows then up rows an expert, its
    halves taken by slice_cols (Qwen3.5's ffn_gate_up_exps). The folded tail is exact; the norm
    computed in another order may move a byte of the experts' rounded x (1/254 of a block's
    largest value), hence the looser bound there."""
    from fastllm.backends import fuse as fuse_mod
    from fastllm.backends.webgpu import moe as webgpu_moe
    from fastllm.backends.webgpu import program as webgpu_program

    be = _backend(None, False, int_dot=True)
    n_expert, k, m, d = 6, 2, 64, 256
    tables = {"l": route_logits(rng, n_expert), "x": rng.standard_normal((N_TABLE, d)),
              "nw": rng.uniform(0.5, 1.5, d), "r": rng.standard_normal((n_expert, d))}
    w = {name: be.load_weight(f32_info(name, a)) for name, a in tables.items()}
    for name, t, rows, cols in (("wg", GGMLType.Q4_K, m, d), ("wu", GGMLType.Q4_K, m, d),
                                ("wgu", GGMLType.Q4_K, 2 * m, d), ("wd", GGMLType.Q8_0, d, m)):
        w[name] = be.load_weight(expert_info(name, t, n_expert, rows, cols, rng))

    def run(normed: bool):
        g = Graph(1)
        x = g.get_rows(w["x"], g.tokens)
        xn = g.rms_norm(x, w["nw"], 1e-5) if normed else x
        if normed:  # as a router reads the norm (its logits are not the ones routed here)
            g.output("r", g.matmul(xn, w["r"]))
        ids, wts = g.moe_route(g.get_rows(w["l"], g.tokens), k, norm=True)
        if fused:
            gu = g.matmul_id(xn, w["wgu"], ids)
            h = g.swiglu(g.slice_cols(gu, 0, m), g.slice_cols(gu, m, m))
        else:
            h = g.swiglu(g.matmul_id(xn, w["wg"], ids), g.matmul_id(xn, w["wu"], ids))
        g.output("out", g.add(g.moe_sum(g.matmul_id(h, w["wd"], ids), wts), x))
        prog = be.compile(g)
        labels = [p.label for p, _bg, _grid in prog.dispatches]
        prog.poison()
        out = {a: v.copy() for a, v in prog.run(np.array([5], np.int32), 0).items()}
        prog.release()
        return labels, out

    folded = [run(False), run(True)]
    for labels, _ in folded:
        assert "kernel_swiglu_f32" not in labels and "kernel_add_f32" not in labels, labels
        assert "kernel_rms_norm_f32" not in labels and "kernel_slice_cols_f32" not in labels, labels
        # gate and up in one dispatch, which writes the down projection's x
        assert "kernel_mul_mvq_id_glu_q4_K_f32" in labels, labels
        assert labels.count("kernel_quantize_x_f32") == 1, labels
    monkeypatch.setattr(webgpu_moe.MoeOps, "_moe_glu_id", lambda self: {})
    monkeypatch.setattr(webgpu_moe.MoeOps, "_moe_glu", lambda self: {})
    monkeypatch.setattr(webgpu_moe.MoeOps, "_id_normed", lambda self: {})
    monkeypatch.setattr(webgpu_program, "fuse",
                        lambda *a, **kw: fuse_mod.fuse(*a, **{**kw, "moe_res": False}))
    for normed, (_, got) in enumerate(folded):
        labels, want = run(bool(normed))
        assert "kernel_swiglu_f32" in labels and "kernel_add_f32" in labels, labels
        for a in got:
            assert np.isfinite(got[a]).all(), a
            tol = (2e-2 if normed and a == "out" else 1e-6) * np.abs(want[a]).max()
            np.testing.assert_allclose(got[a], want[a], rtol=0, atol=tol, err_msg=a)
    be.close()


def test_weighted_sum_writes_the_next_layers_x(archs, tmp_path, monkeypatch):
    """A MoE layer's weighted sum (+ residual) also writes the next layer's q, k, v mat-vec's
    quantized x, its norm applied by that reader (kernel_moe_sum_q8, PRENORM): llama.cpp's
    qwen3moe file with its weights in Q8_0, against the same device with a quantize_x
    dispatch starting each layer; equal to float rounding."""
    from fastllm import Model
    from fastllm.backends.webgpu import matmul as webgpu_matmul
    from fastllm.quantize import quantize_file

    path = tmp_path / "q8.gguf"
    quantize_file(archs / "qwen3moe-moe-e6k2.gguf", path, "Q8_0")
    ids = [1, 5, 9, 20, 33, 7, 8]

    def run():
        m = Model.load(path, backend=_backend(None, False, int_dot=True), n_ctx=32)
        m.prefill(ids)
        out = m.decode(2)
        labels = [p.label for p, _bg, _grid in m._program(1, False).dispatches]
        m.close()
        return out, labels

    got, labels = run()
    assert "kernel_moe_sum_q8" in labels, labels
    orig = webgpu_matmul.MatmulOps._prenormed

    def without(self):
        return {k: v for k, v in orig(self).items()
                if not any(id(n) == k and n.op == "moe_sum" for n in self.nodes)}

    monkeypatch.setattr(webgpu_matmul.MatmulOps, "_prenormed", without)
    want, labels = run()
    assert "kernel_moe_sum_q8" not in labels, labels
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
