"""The recurrent-model ops of backends/base.py (RWKV-6 / RWKV-7) on the WebGPU backend against
the NumPy reference: fresh random inputs, activation buffers poisoned with NaN before each run,
each test with the adapter's optional features and with them forced off (as test_ops.py).
The state ops run twice in a row from a random state, so the second run starts from what the
first left on the device."""

from __future__ import annotations

import numpy as np
import pytest

from fastllm.backends.base import Graph, KVSpec
from fastllm.errors import UnsupportedError
from fastllm.quants import GGMLType

from .pairs import F32_TOL, MATMUL_TOL, Pair, check, f32_info, quant_info


def _rows(g, w, *names):
    return [g.get_rows(w[n], g.tokens) for n in names]


def test_norms_unary_lerp_bonus(gpu, rng):
    n, d, hs = 7, 96, 32
    wide = 30 * rng.standard_normal((n, d))  # reaches the clamped ends of tanh / sigmoid / exp
    wide[0, :6] = [-100.0, -89.0, 89.0, 100.0, 0.0, -0.0]
    infos = {"x": f32_info("x", wide), "y": f32_info("y", rng.standard_normal((n, d))),
             "z": f32_info("z", rng.standard_normal((n, d)) + 5.0),  # a mean far from 0
             "m": f32_info("m", rng.standard_normal((n, 3 * d))),
             "mu": f32_info("mu", rng.standard_normal((4, 1, 1, d))),
             "lw": f32_info("lw", rng.standard_normal(d)), "lb": f32_info("lb", rng.standard_normal(d)),
             "rk": f32_info("rk", rng.standard_normal(d))}
    pair = Pair(gpu, infos)

    def build(g, w):
        x, y, z, m = _rows(g, w, "x", "y", "z", "m")
        small = g.scale(x, 1 / 30)
        outs = {
            "ln_row": g.layer_norm(z, w["lw"], w["lb"], 1e-5),
            "ln_group": g.layer_norm(z, w["lw"], w["lb"], 64e-5, group=hs),
            "ln_plain": g.layer_norm(y, None, None, 1e-5, group=8),
            "ln_w": g.layer_norm(y, w["lw"], None, 1e-5),
            "ln_b": g.layer_norm(y, None, w["lb"], 1e-5),
            "l2": g.l2_norm(y, 1e-12, hs),
            "l2_eps": g.l2_norm(g.scale(y, 1e-9), 1e-6, 4),  # the eps floor divides
            "lerp_mu": g.lerp(small, y, w["mu"], mu_row=3),
            "lerp_both": g.lerp(small, y, w["mu"], mu_row=1, mu_v=m, mu_col=2 * d),
            "lerp_v": g.lerp(small, y, mu_v=z),
            "bonus": g.wkv7_bonus(small, y, z, w["rk"], hs),
            **{f: g.unary(x, f) for f in Graph.UNARY_FNS},
        }
        for k, v in outs.items():
            g.output(k, v)

    got, want = pair.run(build, n, rng.permutation(n).astype(np.int32))
    check(got, want, F32_TOL, rng)


@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.F16, GGMLType.Q5_1, GGMLType.Q8_0,
                               GGMLType.Q4_K], ids=lambda t: t.name)
def test_matmul_blocks(gpu, t, rng):
    nb, m, k = 5, 24, 256 if t == GGMLType.Q4_K else 32  # RWKV-6: 5 blocks of rank 32
    w = quant_info("w", t, nb * m, k, rng)
    w = type(w)(w.name, w.type, (nb, m, k), w.data, w.file)
    pair = Pair(gpu, {"w": w, "x": f32_info("x", rng.standard_normal((9, nb * k)))})
    for rows in (1, 9):
        got, want = pair.run(lambda g, w: g.output("y", g.matmul_blocks(
            g.get_rows(w["x"], g.tokens), w["w"])), rows, rng.permutation(9)[:rows].astype(np.int32))
        check(got, want, MATMUL_TOL[t] if t != GGMLType.F32 else F32_TOL, rng, f"{t.name}")


def _wkv_case(rng, op: str, hs: int, heads: int, n: int) -> dict:
    c = heads * hs
    ins = {k: rng.standard_normal((n, c)) for k in ("r", "k", "v", "a", "b")}
    ins["w"] = rng.uniform(0.3, 1.0, (n, c))
    ins["k"] *= 0.5
    if op == "wkv6":
        ins["u"] = rng.standard_normal((heads, hs))
    else:  # RWKV-7's a = -kk, b = kk * iclr along an l2-normalized kk keeps the state bounded
        kk = ins["a"].reshape(n, heads, hs)
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        ins["a"] = -kk.reshape(n, c)
        ins["b"] = (kk.reshape(n, c) * rng.uniform(0, 1, (n, c)))
    return {k: f32_info(k, v) for k, v in ins.items()}


@pytest.mark.parametrize("op", ["wkv6", "wkv7"])
@pytest.mark.parametrize("hs,heads", [(64, 3), (8, 5), (4, 2)])
def test_wkv_state_carries_across_runs(gpu, rng, op, hs, heads):
    """A prefill of 5 rows then single rows and a 3-row run, from a random state: outputs, the
    state left on the device (get_state), and the token-shift buffer beside it."""
    c = heads * hs
    n = 10
    infos = _wkv_case(rng, op, hs, heads, n)
    spec = KVSpec(64, (), (), (("s", c * hs), ("shift", c)))
    pair = Pair(gpu, infos, kv=spec)
    s0 = {"s": rng.standard_normal(c * hs).astype(np.float32) * 0.5,
          "shift": rng.standard_normal(c).astype(np.float32)}
    for be in (pair.ref, pair.gpu):
        be.set_state(s0)

    def build(g, w):
        r, k, v, wd, a, b = _rows(g, w, "r", "k", "v", "w", "a", "b")
        if op == "wkv6":
            y = g.wkv6(r, k, v, wd, w["u"], "s", hs)
        else:
            y = g.wkv7(r, wd, k, v, a, b, "s", hs)
        g.output("y", y)
        g.output("shift", g.token_shift(r, "shift"))

    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 10)):
        got, want = pair.run(build, hi - lo, np.arange(lo, hi, dtype=np.int32))
        check(got, want, 2e-5, rng, f"{op} rows {lo}..{hi}")
        gs, rs = pair.gpu.get_state(), pair.ref.get_state()
        check(gs, rs, 2e-5, rng, f"{op} state after rows {lo}..{hi}")
    pair.gpu.reset_state()
    assert not any(v.any() for v in pair.gpu.get_state().values())


def test_state_errors(gpu):
    gpu.init_kv(KVSpec(8, (), (), (("s", 16),)))
    with pytest.raises(ValueError, match="16 values"):
        gpu.set_state({"s": np.zeros(3, np.float32)})
    w = gpu.load_weight(f32_info("x", np.zeros((2, 16))))
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    g.output("y", g.wkv7(x, x, x, x, x, x, "s", 16))  # needs 16 * 16 values
    with pytest.raises(UnsupportedError, match="256 state values"):
        gpu.compile(g)
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    g.output("y", g.token_shift(x, "other"))
    with pytest.raises(UnsupportedError, match="no recurrent state buffer 'other'"):
        gpu.compile(g)
