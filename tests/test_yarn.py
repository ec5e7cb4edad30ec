"""YaRN rope scaling (models/layout.py) against ggml's own rope.

`data/ggml_rope_yarn.json` holds the output of ggml_rope_ext (ggml's CPU backend of the
llama.cpp tree in PyPI's llama-cpp-python 0.3.36 sdist, built from source) with YaRN
parameters, produced by `data/ggml_rope_yarn.c`: the attention factor as llama.cpp's context
derives it for a YaRN file (llama-context.cpp), ext_factor 1, normal and NeoX pairs, with and
without frequency factors, positions up to 3000. fastllm computes the same as the ordinary rope
op with per-pair divisors and one scale; the reference backend runs it here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastllm.backends.base import Graph
from fastllm.backends.reference import ReferenceBackend
from fastllm.gguf import TensorInfo
from fastllm.models.layout import yarn_corr_dims, yarn_divisors, yarn_magnitude
from fastllm.quants import GGMLType

CASES = json.loads((Path(__file__).parent / "data" / "ggml_rope_yarn.json").read_text())
POS = [0, 1, 5, 100, 1000, 3000]
HD, NH = 16, 2


def f32(name: str, a: np.ndarray) -> TensorInfo:
    a = np.ascontiguousarray(a, np.float32)
    return TensorInfo(name, GGMLType.F32, a.shape, a.view(np.uint8).reshape(-1), "")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"neox={c['neox']}-ff={c['freq_factors']}")
def test_yarn_rope_matches_ggml(case):
    t, h, j = np.meshgrid(np.arange(len(POS)), np.arange(NH), np.arange(HD), indexing="ij")
    x = np.sin(np.float32(0.37) * j + np.float32(1.3) * h + np.float32(0.11) * t,
               dtype=np.float32).reshape(len(POS), NH * HD)
    div = yarn_divisors(HD, case["freq_scale"], yarn_corr_dims(
        HD, case["n_ctx_orig"], case["base"], case["beta_fast"], case["beta_slow"]), 1.0)
    if case["freq_factors"]:
        div = div * (1.0 + 0.4 * np.arange(HD // 2))
    be = ReferenceBackend()
    w = {"x": be.load_weight(f32("x", x)), "ff": be.load_weight(f32("ff", div))}
    mag = yarn_magnitude(case["freq_scale"], case["log_mul"], case["attn_factor"])
    want = np.asarray(case["y"], np.float32).reshape(len(POS), NH * HD)
    for row, p in enumerate(POS):
        g = Graph(1)
        y = g.rope(g.get_rows(w["x"], g.tokens), n_head=NH, head_dim=HD, n_rot=HD,
                   base=case["base"], neox=case["neox"], freq_factors=w["ff"])
        g.output("y", g.scale(y, mag))
        got = be.compile(g).run(np.array([row], np.int32), p)["y"][0]
        # ggml rounds each angle in float32 (p * base^(-2i/n) by repeated products), fastllm
        # once: an error growing with the position (measured 6e-7 up to position 100, 1.8e-5
        # at 1000 and 3000); plain linear scaling in place of YaRN is off by 1 or more
        np.testing.assert_allclose(got, want[row], rtol=0, atol=2e-6 + 3e-8 * p,
                                   err_msg=f"position {p}")
