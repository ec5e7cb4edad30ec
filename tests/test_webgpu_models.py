"""Whole models on the WebGPU backend: against outputs no one here wrote (stories260K's greedy
ids from llama.cpp) and against the NumPy reference backend (SmolLM2 Q4_1, tiny models of every
architecture)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastllm import Model
from tinymodels import SHAPES, write_tiny_model


@pytest.fixture(scope="module")
def webgpu_ok():
    from fastllm.errors import BackendError

    try:
        from fastllm.backends.webgpu import WebGPUBackend

        WebGPUBackend().close()
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU adapter: {e}")


def test_stories260k_greedy(webgpu_ok, stories260k, data_dir):
    """F32 end to end: 199 greedy tokens from BOS equal llama.cpp's exactly."""
    ref = json.loads((data_dir / "reference" / "stories260K.json").read_text())
    want = ref["llamacpp_0.3.36_greedy_ids"]
    with Model.load(stories260k, backend="webgpu") as m:
        got = list(m.generate_tokens([m.tokenizer.bos_id], temperature=0, max_tokens=199))
    assert got == want


@pytest.fixture(scope="module")
def smol(webgpu_ok, smollm2):
    gpu = Model.load(smollm2, backend="webgpu")
    ref = Model.load(smollm2, backend="reference")
    yield gpu, ref
    gpu.close()
    ref.close()


PROMPT = "The capital of France is"


def test_smollm2_logits(smol):
    gpu, ref = smol
    ids = gpu.tokenize(PROMPT)
    # a short prompt runs the mat-vec kernels in f32 (observed max difference ~1e-4)
    d = np.abs(gpu.logits(ids) - ref.logits(ids)).max()
    assert d < 0.02, d
    # 11 tokens run the tiled prefill kernels, whose tiles may be f16 (observed ~0.1 with
    # logits of magnitude ~30)
    ids = ids + gpu.tokenize(" Paris. It is a city", add_bos=False)
    assert len(ids) > 8
    d = np.abs(gpu.logits(ids) - ref.logits(ids)).max()
    assert d < 0.4, d


def test_smollm2_greedy(smol):
    """The greedy continuation equals the reference backend's until end-of-generation or 32
    tokens. The reference's choices come from one pass over prompt + generated tokens (at every
    step up to the first difference both backends have the same history), which costs one
    forward instead of 32. Steps up to the first one where the reference's own top-2 margin is
    under 0.5 logits must agree; past it, comparison goes on while they do agree, and the first
    difference must be at such a near-tie (it ends the comparison). With this prompt the
    reference's margin first drops under 0.5 at the sixth token (' answer' over another word,
    0.22), so at least 8 compared steps needs the second part."""
    gpu, ref = smol
    prompt = gpu.tokenize(PROMPT)
    out = list(gpu.generate_tokens(prompt, temperature=0, max_tokens=32))
    logits = ref.logits(prompt + out)
    eog = gpu.tokenizer.eog_ids
    compared = 0
    for i in range(min(len(out) + 1, 32)):
        row = logits[len(prompt) - 1 + i]
        top2 = np.sort(row)[-2:]
        want = int(np.argmax(row))
        ok = out[i] == want if i < len(out) else want in eog
        if not ok:
            assert top2[1] - top2[0] < 0.5, (i, gpu.detokenize(out[:i + 1]), want)
            break
        compared += 1
    assert compared >= 8, compared
    assert gpu.detokenize(out).startswith(" Paris")


@pytest.mark.parametrize("arch", sorted(SHAPES))
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q8_0-int"])
def test_tiny_models(webgpu_ok, tmp_path, arch, qtype, monkeypatch):
    """Every architecture's ops (biases, q/k norms, GELU, sliding-window rings that wrap,
    rope_freqs) through prefill and decode, against the reference backend. Q8_0-int: decode
    steps on the integer mat-vecs (the default), which round x to bytes per 32 values as
    llama.cpp does: their logits differ from the float reference by up to ~6% of the logits'
    spread on these random-weight models (observed); a wrong kernel is off by the spread."""
    int_dot = qtype.endswith("-int")
    qtype = qtype.removesuffix("-int")
    monkeypatch.setenv("FASTLLM_WEBGPU_INT_DOT", "1" if int_dot else "0")
    if qtype == "F32":  # f32 throughout: prefill attention's f16 tiles (shader-f16) off too
        from fastllm.backends.webgpu import attention as webgpu_attention

        monkeypatch.setattr(webgpu_attention, "PREFILL_ATTN_F16", 0)
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype=qtype, seed=1,
                            rope_freqs=arch == "llama")
    ids = [1] + list(np.random.default_rng(0).integers(3, 200, 23))
    # n_batch 8 makes gemma3's ring 8 + 8 rows, so 24 positions wrap it
    gpu = Model.load(path, backend="webgpu", n_batch=8)
    ref = Model.load(path, backend="reference", n_batch=8)
    try:
        want = ref.logits(ids)
        tol = 1e-3 if qtype == "F32" else 5e-2
        got = gpu.logits(ids)  # batches of 8: tiled prefill kernels
        assert np.abs(got - want).max() < tol
        gpu.prefill(ids[:5])  # mat-vec kernels for 5 rows, then decode steps
        if int_dot:
            tol = 0.15 * want.std()
        for i in range(5, len(ids)):
            got = gpu.decode(ids[i])
            assert np.abs(got - want[i]).max() < tol, i
    finally:
        gpu.close()
        ref.close()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prenormed_int_matvecs(webgpu_ok, tmp_path, arch, monkeypatch):
    """A mat-vec + residual that writes the next norm's quantized x itself (resq, the reader
    scaling by 1 / rms) gives the decode logits of the separate quantize_x dispatch up to float
    rounding: the bytes are the same, only where the norm's factor is applied moves. (Without
    the reader's factor the logits here move by ~8, a sixth of their largest.) qwen3's head_dim
    of 32 makes the output projection a producer too, llama's 16 does not."""
    from fastllm.backends.webgpu import matmul_shapes

    monkeypatch.setenv("FASTLLM_WEBGPU_INT_DOT", "1")
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, qtype="Q8_0", seed=2)
    ids = [1] + list(np.random.default_rng(1).integers(3, 200, 9))
    out = {}
    for on in (0, 1):
        monkeypatch.setattr(matmul_shapes, "PRENORM", on)
        with Model.load(path, backend="webgpu") as m:
            labels = [p.label for p, _, _ in m._program(1, False).dispatches]
            assert any("_resq_" in s for s in labels) == bool(on)
            m.prefill(ids[:1])
            out[on] = np.stack([m.decode(t) for t in ids[1:]])
            if on:
                n_resq = sum("_resq_" in s for s in labels)
                assert n_resq == (2 * SHAPES[arch][1] - 1 if arch == "qwen3"
                                  else SHAPES[arch][1] - 1)
    assert np.abs(out[1] - out[0]).max() < 1e-5 * np.abs(out[0]).max()
