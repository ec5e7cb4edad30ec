"""gpt-oss beyond test_archs.py's logits: each of its pieces moves llama.cpp's logits when left
out or changed (so the match there shows each one right), and the file requantized to MXFP4_MOE
(expert matrices in MXFP4) runs on the GPU backends as on the reference."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need
from fastllm import Model
from fastllm.backends.base import Graph
from fastllm.errors import UnsupportedError
from fastllm.models.gpt_oss import GptOss
from fastllm.quantize import quantize_file
from fastllm.quants import GGMLType
from test_archs import RMS_BOUND, bound, greedy_steps_to_compare, make_backend, rerun

E6K2 = "gpt-oss-moe-e6k2"


@pytest.fixture(scope="module")
def ref(archs, archs_logits) -> dict:
    need(archs / f"{E6K2}.gguf", f"archs/{E6K2}.gguf")
    return archs_logits[E6K2 + ".gguf"]


def test_each_piece_matters(archs, ref, monkeypatch):
    """On the e6k2 file (6 experts, 2 chosen): dropping the sinks, the router's or the experts'
    biases, plain SwiGLU for the clamped one, softmax gating over all experts for softmax_weight,
    applying the experts' `.scale` tensors (llama.cpp does not), or full attention on the window
    layers (only positions 32.. differ, by up to 3e-3) each move the logits at least ten times
    past the RMS bound that the right model keeps (test_archs.py)."""
    want = np.asarray(ref["logits"], np.float32)
    m = Model.load(archs / f"{E6K2}.gguf", backend="reference")

    def off() -> float:
        got = rerun(m, ref["tokens"])
        return float(np.sqrt(np.mean(np.square(got - want)))) / RMS_BOUND

    assert off() <= 1.0
    attention, route, add, biased = Graph.attention, Graph.moe_route, Graph.add, GptOss.expert

    def changed(obj, attr, value) -> float:
        with monkeypatch.context() as mp:
            mp.setattr(obj, attr, value)
            return off()

    def no_router_bias(self, a, b):
        return a if getattr(b, "name", "").endswith("ffn_gate_inp.bias") else add(self, a, b)

    assert changed(Graph, "attention", lambda self, q, layer, **kw: attention(
        self, q, layer, **{**kw, "sinks": None})) > 10
    assert changed(Graph, "attention", lambda self, q, layer, **kw: attention(
        self, q, layer, **{**kw, "window": 0})) > 10
    assert changed(Graph, "swiglu_oai", lambda self, gate, up, **kw: self.swiglu(gate, up)) > 10
    assert changed(Graph, "moe_route", lambda self, logits, k, **kw: route(
        self, logits, k, **{**kw, "gating": "softmax"})) > 10
    assert changed(Graph, "add", no_router_bias) > 10
    assert changed(GptOss, "expert", lambda self, g, x, name, ids: g.matmul_id(
        x, self.w[name + ".weight"], ids)) > 10
    assert changed(GptOss, "expert", lambda self, g, x, name, ids: g.mul_id(
        biased(self, g, x, name, ids), self.w[name + ".scale"], ids)) > 10


@pytest.fixture(scope="module")
def mxfp4_file(archs, tmp_path_factory):
    dst = tmp_path_factory.mktemp("gpt-oss") / f"{E6K2}-MXFP4_MOE.gguf"
    plan = quantize_file(archs / f"{E6K2}.gguf", dst, "MXFP4_MOE")
    assert {t for n, t in plan.items() if n.endswith("_exps.weight")} == {GGMLType.MXFP4}
    return dst


@pytest.mark.parametrize("backend", ["webgpu", "metal-emu"])
def test_mxfp4_moe_file_on_the_gpu(mxfp4_file, ref, backend):
    """The file requantized by `fastllm quantize ... MXFP4_MOE` (experts MXFP4, attention,
    embedding and output Q8_0): the GPU backend's logits are the reference's on the same file
    within test_archs.py's GPU bound (both read the same exact weights; the difference is the
    order of float32 sums and the f16 rounding of prefill tiles / the KV cache), in prefill and
    in decode steps, and so are its greedy steps while the top-2 margin allows."""
    ids = ref["tokens"]
    want = Model.load(mxfp4_file, backend="reference").logits(ids)
    if backend == "webgpu":
        make_backend(backend).close()  # skips without an adapter
        from fastllm.backends.webgpu import WebGPUBackend

        # floats throughout: the integer mat-vecs' rounding of x to bytes (the Q8_0 attention
        # and output here) has its own checks in tests/backends/test_int_dot.py
        dev = WebGPUBackend(int_dot=False)
    else:
        dev = make_backend(backend)
    m = Model.load(mxfp4_file, backend=dev)
    try:
        got = m.logits(ids)
    except UnsupportedError as e:
        if "has no Metal kernel yet" in str(e):  # the Metal MoE kernels are not there yet
            pytest.skip(f"the Metal backend lacks an op gpt-oss needs: {e}")
        raise
    tol = bound(backend, want)
    assert np.abs(got - want).max() <= tol
    # decode steps past the window: the one-token kernels (the experts' mat-vecs over MXFP4)
    ref_m = Model.load(mxfp4_file, backend="reference")
    ref_m.prefill(ids[:34])
    m.prefill(ids[:34])
    for t in ids[34:40]:
        step = ref_m.decode(t)
        assert np.abs(m.decode(t) - step).max() <= bound(backend, step)
    ref_m.reset()
    steps = list(ref_m.generate_tokens(ids, temperature=0, max_tokens=6))
    top2 = np.sort(ref_m.logits(ids + steps[:-1])[len(ids) - 1:], axis=1)[:, -2:]
    n = greedy_steps_to_compare(list(top2[:, 1] - top2[:, 0]), tol)
    assert n >= 4, "the reference's margins leave too few steps to compare"
    assert list(m.generate_tokens(ids, temperature=0, max_tokens=n)) == steps[:n]


@pytest.mark.parametrize("backend", ["reference", "webgpu", "metal-emu"])
def test_rows_step_equals_one_at_a_time(archs, ref, backend):
    """Batched decoding of the e6k2 file (rows mode: each row its own sequence, its own experts,
    its own sinks-weighted attention over its slot's cache, the 32-position window on even
    layers): a step of two sequences, one of them past the window, gives each the logits of
    decoding it alone."""
    ids = ref["tokens"]
    path = archs / f"{E6K2}.gguf"
    many = Model.load(path, backend=make_backend(backend), n_seq=2, n_ctx=64)
    alone = Model.load(path, backend="reference", n_ctx=64)
    prompts = [ids[:36], ids[5:9]]
    try:
        for s, p in enumerate(prompts):
            many.prefill(p, slot=s)
    except UnsupportedError as e:
        if "has no Metal kernel yet" in str(e):  # the Metal MoE kernels are not there yet
            pytest.skip(f"the Metal backend lacks an op gpt-oss needs: {e}")
        raise
    for step in range(3):
        toks = [ids[36 + step], ids[20 + step]]
        order = [0, 1] if step != 1 else [1, 0]
        got = many.decode_rows([toks[s] for s in order], order)
        for row, s in enumerate(order):
            prompts[s] = prompts[s] + [toks[s]]
            want = alone.logits(prompts[s])[-1]
            assert np.isfinite(got[row]).all()
            # as test_archs.py's test_moe_rows_step_equals_one_at_a_time
            tol = 2e-6 if backend == "reference" else 3 * 2.0**-11 * float(np.abs(want).max())
            np.testing.assert_allclose(got[row], want, rtol=0, atol=tol)


def test_yarn_file_runs_on_webgpu_as_on_the_reference(archs, ref, tmp_path):
    """gpt-oss as released scales rope by YaRN (models/layout.py's Yarn, checked against ggml's
    rope in test_yarn.py): a copy of the e6k2 file with rope.scaling.type "yarn", factor 4 over
    an original context of 16 (so the 40 positions reach past it) loads, its logits move from
    the unscaled file's, and WebGPU gives the reference's within test_archs.py's bound. (No
    llama.cpp logits for such a file here: the scaling's parameters are llama.cpp's generic
    ones, as for mistral3.)"""
    import gguf

    from test_archs import copy_with_keys

    f32, u32, s = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.STRING
    p = copy_with_keys(archs / f"{E6K2}.gguf", tmp_path / "yarn.gguf", {
        "gpt-oss.rope.scaling.type": ("yarn", s), "gpt-oss.rope.scaling.factor": (4.0, f32),
        "gpt-oss.rope.scaling.original_context_length": (16, u32)})
    ids = ref["tokens"]
    m = Model.load(p, backend="reference")
    assert m.config.yarn and m.config.n_ctx_orig == 16
    want = m.logits(ids)
    plain = Model.load(archs / f"{E6K2}.gguf", backend="reference").logits(ids)
    # rope moves these near-uniform attentions' logits little (as in test_archs.py's gemma3
    # scaling check), but both runs are the same arithmetic on the same data but for the
    # scaling, so any difference is the scaling at work
    assert np.abs(want - plain).max() > 2e-5
    got = Model.load(p, backend=make_backend("webgpu")).logits(ids)
    assert np.abs(got - want).max() <= bound("webgpu", want)
