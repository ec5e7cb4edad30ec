"""The recurrent-model ops (RWKV-6 / RWKV-7) through MetalLowering and metal/rwkv.metal, against
the reference backend on the same graphs with fresh random inputs. On Linux the kernels run in
the MSL emulator in strict mode (outputs poisoned with NaN before each dispatch, redzones after
each arena block) under the forward, reverse and random schedules; on macOS arm64 on the GPU.
The state ops run several times in a row from a random state, so each run starts from the
state the previous one left in the device buffers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from metal_env import POLICIES, RUNTIMES, make_runtime

from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.metal.backend import TYPE_NAMES, MetalBackend
from fastllm.backends.reference import ReferenceBackend
from fastllm.errors import BackendError, UnsupportedError
from fastllm.gguf import TensorInfo
from fastllm.quants import GGMLType, random_blocks

rng = np.random.default_rng()
TOL = 2e-5  # f32 sums in another order; the wkv recurrences over a few rows


def f32(name, a):
    a = np.ascontiguousarray(a, np.float32)
    return TensorInfo(name, GGMLType.F32, a.shape, a.view(np.uint8).reshape(-1), "<test>")


def rel_err(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all(), "non-finite values in the Metal output"
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))


def run_both(build, infos, runs, runtime, spec=None, state=None):
    """build(g, w) records the graph for each run of `runs` (lists of token ids); returns, per
    backend (Metal, reference), the outputs and the state after each run."""
    res = []
    for be in (MetalBackend(runtime=runtime, self_check=False), ReferenceBackend()):
        w = {i.name: be.load_weight(i) for i in infos}
        if spec is not None:
            be.init_kv(spec)
            be.set_state(state)
        progs, outs = {}, []
        for toks in runs:
            n = len(toks)
            if n not in progs:
                g = Graph(n)
                build(g, w)
                progs[n] = be.compile(g)
            outs.append((progs[n].run(np.asarray(toks, np.int32), 0), be.get_state()))
        res.append(outs)
    return res


def compare(got, want, tol=TOL):
    for (go, gs), (wo, ws) in zip(got, want):
        for name in wo:
            assert rel_err(go[name], wo[name]) < tol, name
        for name in ws:
            assert rel_err(gs[name], ws[name]) < tol, f"state {name}"


@pytest.mark.parametrize("policy", POLICIES)
def test_rwkv_ops_schedules(policy):
    """Every op of rwkv.metal but the typed products in one graph: layer_norm (row, groups, no
    weight or bias), l2_norm, the unary functions (with arguments that reach their limits),
    lerp (row mix, LoRA column block, per-token only), wkv7_bonus, token_shift, wkv6 and wkv7
    with heads of 8 over 3 heads (a partial threadgroup) and of 64 over 2; runs of 4, 1 and 3
    rows."""
    n, d = 8, 24
    cols = {8: 24, 64: 128}
    infos = [f32("x", 30 * rng.standard_normal((n, d))), f32("y", rng.standard_normal((n, d))),
             f32("z", rng.standard_normal((n, d)) + 5.0), f32("m", rng.standard_normal((n, 3 * d))),
             f32("mu", rng.standard_normal((4, 1, 1, d))), f32("lw", rng.standard_normal(d)),
             f32("lb", rng.standard_normal(d)), f32("rk", rng.standard_normal(d))]
    for hs, c in cols.items():
        kk = rng.standard_normal((n, c // hs, hs))
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        kk = kk.reshape(n, c)
        infos += [f32(f"r{hs}", rng.standard_normal((n, c))),
                  f32(f"k{hs}", 0.5 * rng.standard_normal((n, c))),
                  f32(f"v{hs}", rng.standard_normal((n, c))),
                  f32(f"w{hs}", rng.uniform(0.3, 1.0, (n, c))), f32(f"a{hs}", -kk),
                  f32(f"b{hs}", kk * rng.uniform(0, 1, (n, c))),
                  f32(f"u{hs}", rng.standard_normal((c // hs, hs)))]
    spec = KVSpec(64, (), (), (("shift", d), ("s6_8", 24 * 8), ("s7_8", 24 * 8),
                               ("s6_64", 128 * 64), ("s7_64", 128 * 64)))
    state = {name: 0.5 * rng.standard_normal(size).astype(np.float32) for name, size in spec.state}

    def build(g, w):
        def rows(name):
            return g.get_rows(w[name], g.tokens)

        x, y, z, m = (rows(k) for k in "xyzm")
        small = g.scale(x, 1 / 30)
        outs = {
            "ln_row": g.layer_norm(z, w["lw"], w["lb"], 1e-5),
            "ln_group": g.layer_norm(z, w["lw"], w["lb"], 64e-5, group=8),
            "ln_plain": g.layer_norm(y, None, None, 1e-5, group=4),
            "l2": g.l2_norm(y, 1e-12, 8),
            "l2_eps": g.l2_norm(g.scale(y, 1e-9), 1e-6, 4),
            "lerp_mu": g.lerp(small, y, w["mu"], mu_row=3),
            "lerp_both": g.lerp(small, y, w["mu"], mu_row=1, mu_v=m, mu_col=2 * d),
            "lerp_v": g.lerp(small, y, mu_v=z),
            "bonus": g.wkv7_bonus(small, y, z, w["rk"], 8),
            "shift": g.token_shift(y, "shift"),
            **{f: g.unary(x, f) for f in Graph.UNARY_FNS},
        }
        for hs in cols:
            r, k, v, wd, a, b = (rows(f"{t}{hs}") for t in "rkvwab")
            outs[f"wkv6_{hs}"] = g.wkv6(r, k, v, wd, w[f"u{hs}"], f"s6_{hs}", hs)
            outs[f"wkv7_{hs}"] = g.wkv7(r, wd, k, v, a, b, f"s7_{hs}", hs)
        for name, val in outs.items():
            g.output(name, val)

    runs = [[0, 1, 2, 3], [4], [5, 6, 7]]
    got, want = run_both(build, infos, runs, make_runtime("emu", policy, seed=rng.integers(99)),
                         spec, state)
    compare(got, want)


@pytest.mark.parametrize("t", list(TYPE_NAMES), ids=lambda t: t.name)
def test_mul_mat_blocks_types(t, rt_kind):
    """RWKV-6's five token-mix LoRAs as one block-diagonal product, in every weight type; 1 row
    (decode) and 5; 3 blocks of 5 rows: not a whole threadgroup of outputs."""
    nb, m = 3, 5
    k = 256 if TYPE_NAMES[t].endswith("K") else 32
    data = random_blocks(t, nb * m, k, rng)
    infos = [TensorInfo("w", t, (nb, m, k), np.ascontiguousarray(data).view(np.uint8).reshape(-1),
                        "<test>"), f32("x", rng.standard_normal((6, nb * k)))]

    def build(g, w):
        g.output("y", g.matmul_blocks(g.get_rows(w["x"], g.tokens), w["w"]))

    got, want = run_both(build, infos, [[5], [0, 2, 1, 4, 3]], make_runtime(rt_kind))
    compare(got, want)


@pytest.fixture(params=RUNTIMES)
def rt_kind(request):
    return request.param


def test_errors():
    be = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    w = be.load_weight(f32("x", np.zeros((2, 256))))
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    g.output("y", g.token_shift(x, "s"))
    with pytest.raises(BackendError, match="no recurrent state buffer 's'"):
        be.compile(g)
    be.init_kv(KVSpec(8, (), (), (("s", 16),)))
    with pytest.raises(UnsupportedError, match="256 state values"):
        be.compile(g)
    g = Graph(2)
    x = g.get_rows(w, g.tokens)
    g.output("y", g.wkv7(x, x, x, x, x, x, "s", 128))
    with pytest.raises(UnsupportedError, match="head size 128"):
        be.compile(g)


def test_every_rwkv_kernel_ran(request):
    """Runs last in this module: when the whole module ran on the emulator, each kernel of
    metal/rwkv.metal has run at least once."""
    module = request.node.parent
    ran = {i.nodeid for i in request.session.items}
    if not {i.nodeid for i in module.collect()} <= ran or "mslemu_runtime" not in sys.modules:
        pytest.skip("only meaningful when every test of this module runs on the emulator")
    rt = sys.modules["mslemu_runtime"]
    libs = rt.libraries()
    rwkv = libs["kernel_wkv7_f32"]
    # the rows-mode variants (kernel_*_rows_f32) are test_rows_metal.py's
    missing = sorted(k for k, lib in libs.items()
                     if lib is rwkv and "_rows_" not in k and k not in rt.EmuRuntime.total)
    assert not missing, f"kernels no test ran: {missing}"
