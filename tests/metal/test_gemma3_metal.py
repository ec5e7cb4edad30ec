"""Gemma 3 through the Metal kernels: sliding-window attention over ring caches on a tiny random
model (window 8, a 20-token prompt: a real long prompt is too slow under the emulator), and the
K-quant mat-vec / mat-mat kernels on the real model's own Q4_K and Q6_K tensors."""

from __future__ import annotations

import numpy as np
import pytest
from metal_env import make_runtime

from fastllm import Model
from fastllm.backends.base import Graph
from fastllm.backends.metal.backend import MM_MIN_ROWS, MetalBackend
from fastllm.backends.reference import ReferenceBackend
from fastllm.gguf import TensorInfo, open_gguf
from fastllm.quants import GGMLType
from tinymodels import write_tiny_model


@pytest.mark.parametrize("policy", ["forward", "random"])
def test_tiny_gemma3_window8_prompt20(tmp_path, policy):
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", sliding_window=8)
    rng = np.random.default_rng()
    ids = [1] + [int(t) for t in rng.integers(3, 283, size=19)]
    ref = Model.load(path, backend="reference", n_ctx=32, n_batch=4)
    emu = Model.load(path, backend=MetalBackend(runtime=make_runtime("emu", policy)), n_ctx=32,
                     n_batch=4)
    assert min(emu.kv_spec.sizes) == 12  # < n_ctx: local layers are rings of window + batch rows
    want = ref.logits(ids)
    got = emu.logits(ids)
    # f16 KV cache on Metal (the reference keeps f32): about 1e-3 relative on these logits
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max())
    assert (np.argmax(got, -1) == np.argmax(want, -1)).mean() >= 0.9
    # decode after the prompt, one token at a time, still agrees
    a, b = ref.decode(7), emu.decode(7)
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-2 * np.abs(a).max())


def test_kquant_kernels_on_real_gemma_tensors():
    from fastllm.errors import PullError
    from fastllm.pull import pull

    try:
        path = pull("gemma3-270m", quiet=True)
    except PullError as e:
        pytest.skip(f"gemma3-270m not available: {e}")
    f = open_gguf(path)
    picked = {}
    for t in f.tensors.values():
        if t.type in (GGMLType.Q4_K, GGMLType.Q6_K) and t.type not in picked:
            picked[t.type] = t
    assert set(picked) == {GGMLType.Q4_K, GGMLType.Q6_K}
    cpu = ReferenceBackend()
    gpu = MetalBackend(runtime=make_runtime("emu"), self_check=False)
    rng = np.random.default_rng()
    for t in picked.values():
        # the first 64 rows of the real tensor keep the emulated run short
        rows = 64
        sub = TensorInfo(t.name, t.type, (rows, t.shape[1]),
                         t.data[: t.data.nbytes // t.shape[0] * rows], t.file)
        table = rng.standard_normal((40, t.shape[1])).astype(np.float32)
        x_info = TensorInfo("x", GGMLType.F32, table.shape, table.view(np.uint8).reshape(-1), "")
        for m in (1, MM_MIN_ROWS + 1):  # the mat-vec, then the simdgroup_matrix mat-mat
            outs = []
            for be in (cpu, gpu):
                w, x = be.load_weight(sub), be.load_weight(x_info)
                g = Graph(m)
                g.output("y", g.matmul(g.get_rows(x, g.tokens), w))
                outs.append(be.compile(g).run(np.arange(m, dtype=np.int32), 0)["y"])
            want, got = outs
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 2e-3, (t.name, t.type.name, m, err)
