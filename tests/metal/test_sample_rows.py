"""The Metal backend's sampling of a batched step's rows (backends/metal/sample_rows.py,
metal/sample_rows.metal) against fastllm.sampling.sample_row and float64 NumPy, on fresh random
rows with the outputs poisoned before each call: on Linux in the MSL emulator under the
forward, reverse and random schedules in strict mode (as tests/metal/test_ops.py), on macOS
arm64 on the GPU; the same rows as the WebGPU checks (tests/row_sampling_cases.py)."""

from __future__ import annotations

import secrets
import sys

import numpy as np
import pytest
from metal_env import POLICIES, RUNTIMES, emulator_available, make_runtime

from fastllm.backends.metal.backend import MetalBackend
from fastllm.backends.metal.sample_rows import RowSampler
from fastllm.sampling import RowSampling, sample_row
from row_sampling_cases import ROWS, check_rows


def _sampler(runtime, n_vocab: int, max_rows: int) -> RowSampler:
    return RowSampler(MetalBackend(runtime=runtime, self_check=False), n_vocab, max_rows)


def poisoned(s):
    def sample(x, params, u, windows):
        s.poison()
        return s.sample(x, params, u, windows)
    return sample


def _rng():
    seed = secrets.randbits(63)
    return np.random.default_rng(seed), seed


@pytest.mark.parametrize("policy", POLICIES)
def test_rows_on_the_emulator(policy):
    """Every chain of row_sampling_cases.ROWS in one batch, rows of 4,999 logits (three parts:
    2048, 2048, 903), under each schedule."""
    rt = make_runtime("emu", policy, seed=7)
    s = _sampler(rt, 4999, len(ROWS) + 2)
    rng, seed = _rng()
    assert check_rows(poisoned(s), rng, 4999, 1, seed=seed) <= 1
    assert rt.counts["kernel_sample_rows_part"] == rt.counts["kernel_sample_rows_final"] == 1
    # all rows on the device but the four past it (top_k 0 and 100, 65 ids, 65 biases)
    assert sum(g is not None for g in s.unpack()) == len(ROWS) - 4


@pytest.mark.parametrize("rt_kind", RUNTIMES)
@pytest.mark.parametrize("n_vocab", [300, 20011])
def test_rows_as_sample_row(rt_kind, n_vocab):
    """One part shorter than a chunk (300), ten parts (20,011); batches of every size up to
    the sampler's rows, the rows in a random order."""
    s = _sampler(make_runtime(rt_kind), n_vocab, len(ROWS))
    rng, seed = _rng()
    differ = check_rows(poisoned(s), rng, n_vocab, 1, seed=seed)
    for k in (1, 3):
        rows = [ROWS[int(i)] for i in rng.choice(len(ROWS), k, replace=False)]
        differ += check_rows(poisoned(s), rng, n_vocab, 1, rows=rows, seed=seed)
    assert differ <= 1


def test_native_runtime_glue(monkeypatch, tmp_path):
    """The same dispatches through _NativeRuntime over the fake extension (tests/metal/
    fake_metal.py: csrc/bindings.cpp's API, dispatches in the emulator): buffers, the
    recording's bindings and the output read in place from shared memory."""
    if not emulator_available():
        pytest.skip("needs the MSL emulator")
    import fake_metal

    import fastllm
    from fastllm.backends.metal.runtime import _NativeRuntime

    monkeypatch.setitem(sys.modules, "fastllm._metal", fake_metal.module())
    monkeypatch.setattr(fastllm, "_metal", sys.modules["fastllm._metal"], raising=False)
    lib = tmp_path / "fastllm.metallib"
    lib.write_bytes(b"")
    monkeypatch.setenv("FASTLLM_METALLIB", str(lib))
    s = _sampler(_NativeRuntime(), 2500, 4)
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 2500)).astype(np.float32)
    params = [RowSampling(temperature=0, logprobs=2), RowSampling(top_k=3),
              RowSampling(top_k=0)]
    u = [0.3, 0.6, 0.9]
    got = s.sample(x, params, u, [[], [], []])
    want = [sample_row(x[r], params[r], u[r]) for r in range(3)]
    assert [g.id for g in got] == [w.id for w in want]
    assert [i for i, _ in got[0].top] == [i for i, _ in want[0].top]
    assert s.unpack()[2] is None  # top_k off: the host's row
