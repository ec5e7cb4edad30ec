"""The Gated DeltaNet ops of backends/base.py (slice_cols, dot_gate, norm_gate, ssm_conv with and
without its silu, gated_delta, unary softplus) as one graph over random tables, shared by tests/backends/test_delta_ops.py (WebGPU) and
tests/metal/test_delta_metal.py (the MSL emulator); rows_checks.run_rwkv_case runs it in slots
and rows mode against the reference backend.

Shapes: gated_delta with heads of 128 (Qwen3.5's: a state row of 128 keys per thread, the head
split over two workgroups of 64 value rows) with 1 key head read by 2 value heads, and with
heads of 32 (a partial workgroup) with 2 key heads read by 6 value heads (the tiling h % Hk);
ssm_conv with 4 taps over 40 channels (a partial workgroup) and with 2 taps. gated_delta
normalizes q and k itself and makes the (negative) log decays from softplus and a < 0, as the
model does, so the state stays bounded; q and k carry values far from norm 1, and one row's q
is all zero (the l2 norm's eps keeps it finite).
"""

from __future__ import annotations

import numpy as np

from fastllm.backends.base import KVSpec
from rows_checks import f32_info

N = 12  # rows of each table
HEADS = {128: (1, 2), 32: (2, 6)}  # head size: (key heads, value heads)
CONV = {4: 40, 2: 16}  # taps: channels


def delta_case(rng):
    """(infos, spec, states, build) as rows_checks.rwkv_case: four slots, random states in slots
    0, 1 and 3, NaN in slot 2 (unused)."""
    infos = [f32_info("x", 8 * rng.standard_normal((N, 48))),
             f32_info("h", rng.standard_normal((N, 300))), f32_info("hw", rng.standard_normal(300)),
             f32_info("z", 4 * rng.standard_normal((N, 48))), f32_info("nw", rng.standard_normal(16))]
    state = []
    for taps, c in CONV.items():
        infos += [f32_info(f"cx{taps}", rng.standard_normal((N, c))),
                  f32_info(f"cw{taps}", rng.standard_normal((c, taps)))]
        state.append((f"conv{taps}", c * (taps - 1)))
    for s, (hk, hv) in HEADS.items():
        qkv = rng.standard_normal((N, (2 * hk + hv) * s)) * rng.uniform(0.1, 3.0, (N, 1))
        qkv[3, :s] = 0.0
        alpha = 4 * rng.standard_normal((N, hv))
        alpha[0, 0] = 25.0  # softplus past its threshold
        infos += [f32_info(f"qkv{s}", qkv), f32_info(f"al{s}", alpha),
                  f32_info(f"be{s}", 3 * rng.standard_normal((N, hv))),
                  f32_info(f"dt{s}", rng.standard_normal(hv)),
                  f32_info(f"a{s}", -rng.uniform(0.01, 0.2, hv))]
        state.append((f"ssm{s}", hv * s * s))
    state = tuple(state)
    spec = KVSpec(64, (), (), state, n_seq=4)
    states = {sl: {name: 0.5 * rng.standard_normal(size).astype(np.float32)
                   for name, size in state} for sl in (0, 1, 3)}
    states[2] = {name: np.full(size, np.nan, np.float32) for name, size in state}

    def build(g, w):
        def rows(name):
            return g.get_rows(w[name], g.tokens)

        x = rows("x")
        g.output("softplus", g.unary(x, "softplus"))  # both sides of its threshold at 20
        g.output("slice_whole", g.slice_cols(x, 5, 30))
        g.output("slice_heads", g.slice_cols(x, 4, 4, 12))  # the second half of 8-wide heads
        g.output("dot_gate", g.dot_gate(x, rows("h"), w["hw"]))  # a dot of 300: 5 passes of 64
        g.output("norm_gate", g.norm_gate(x, w["nw"], rows("z"), 1e-6, 16))
        for taps in CONV:
            g.output(f"conv{taps}", g.ssm_conv(rows(f"cx{taps}"), w[f"cw{taps}"], f"conv{taps}",
                                               silu=taps == 4))
        for s, (hk, _) in HEADS.items():
            g.output(f"delta{s}", g.gated_delta(
                rows(f"qkv{s}"), rows(f"al{s}"), rows(f"be{s}"), w[f"dt{s}"], w[f"a{s}"],
                f"ssm{s}", head_dim=s, n_k_heads=hk, eps=1e-6))

    return infos, spec, states, build


TABLE = 96


def chunked_case(rng, s, hk, hv):
    """gated_delta alone over tables of TABLE rows (tokens pick them, repeats included), for the
    chunked form's tests (tests/backends/test_delta_chunked.py, tests/metal/test_delta_metal.py):
    (infos, spec, states, build) with random states in slots 0 and 1, NaN in slot 2."""
    qkv = rng.standard_normal((TABLE, (2 * hk + hv) * s)) * rng.uniform(0.1, 3.0, (TABLE, 1))
    qkv[3, :s] = 0.0  # a zero query (the l2 norm's eps)
    alpha = 4 * rng.standard_normal((TABLE, hv))
    alpha[0, 0] = 25.0  # softplus past its threshold
    infos = [f32_info("qkv", qkv), f32_info("al", alpha),
             f32_info("be", 3 * rng.standard_normal((TABLE, hv))),
             f32_info("dt", rng.standard_normal(hv)), f32_info("a", -rng.uniform(0.01, 0.2, hv))]
    spec = KVSpec(256, (), (), (("ssm", hv * s * s),), n_seq=3)
    states = {sl: {"ssm": 0.5 * rng.standard_normal(hv * s * s).astype(np.float32)}
              for sl in (0, 1)}
    states[2] = {"ssm": np.full(hv * s * s, np.nan, np.float32)}

    def build(g, w):
        def rows(name):
            return g.get_rows(w[name], g.tokens)

        g.output("y", g.gated_delta(rows("qkv"), rows("al"), rows("be"), w["dt"], w["a"], "ssm",
                                    head_dim=s, n_k_heads=hk, eps=1e-6))

    return infos, spec, states, build
