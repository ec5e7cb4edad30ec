"""_NativeRuntime and the Metal program over a fake fastllm._metal (tests/metal/fake_metal.py: the
API of csrc/bindings.cpp, the no-copy contract of csrc/metal_runtime.mm, dispatches in the MSL
emulator): weights of a mapped file are used in place and never copied whole, and device-side
decoding splits its steps into command buffers by the bytes they read, not by a step count."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
from metal_env import emulator_available

from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.reference import ReferenceBackend
from fastllm.errors import BackendError
from fastllm.gguf import TensorInfo
from fastllm.quants import GGMLType

PAGE = mmap.PAGESIZE
rng = np.random.default_rng(3)


@pytest.fixture
def rt(monkeypatch, tmp_path):
    import fake_metal

    import fastllm
    from fastllm.backends.metal.runtime import _NativeRuntime

    monkeypatch.setitem(sys.modules, "fastllm._metal", fake_metal.module())
    monkeypatch.setattr(fastllm, "_metal", sys.modules["fastllm._metal"], raising=False)
    lib = tmp_path / "fastllm.metallib"
    lib.write_bytes(b"")
    monkeypatch.setenv("FASTLLM_METALLIB", str(lib))
    return _NativeRuntime()


def mapped(tmp_path, nbytes: int) -> np.memmap:
    path = tmp_path / "weights.bin"
    path.write_bytes(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return np.memmap(path, dtype=np.uint8, mode="r")


# tensors as (offset, size) in a file of 5 pages + 123 bytes: one crosses a page boundary, one
# ends the file
TENSORS = [(64, 1000), (PAGE - 100, 300), (2 * PAGE, PAGE), (4 * PAGE + 10, PAGE + 113)]


def test_tensors_of_a_mapped_file_are_used_in_place(rt, tmp_path):
    mm = mapped(tmp_path, 5 * PAGE + 123)
    bufs = set()
    for off, n in TENSORS:
        buf, at = rt.weight(mm[off:off + n])
        assert buf.nocopy and bytes(rt.host(buf)[at:at + n]) == bytes(mm[off:off + n])
        bufs.add(id(buf))
    assert len(bufs) == 1 and rt.dev.copied_bytes == 0


def test_a_file_past_the_largest_buffer_is_wrapped_in_windows(rt, tmp_path):
    rt.dev.max_buffer_length = 2 * PAGE + 5
    mm = mapped(tmp_path, 5 * PAGE + 123)
    bufs = set()
    for off, n in TENSORS:
        buf, at = rt.weight(mm[off:off + n])
        assert buf.nocopy and bytes(rt.host(buf)[at:at + n]) == bytes(mm[off:off + n])
        assert len(buf) <= 2 * PAGE
        bufs.add(id(buf))
    assert len(bufs) > 1 and rt.dev.copied_bytes == 0


def test_a_tensor_past_the_largest_buffer_is_an_error_naming_it(rt, tmp_path):
    from fastllm.backends.metal.backend import MetalBackend

    rt.dev.max_buffer_length = PAGE
    mm = mapped(tmp_path, 3 * PAGE)
    be = MetalBackend(runtime=rt, self_check=False)
    t = TensorInfo("blk.0.ffn_down.weight", GGMLType.F32, (2, PAGE // 4), mm[:2 * PAGE],
                   str(tmp_path / "weights.bin"))
    with pytest.raises(BackendError, match=r"weights\.bin: tensor 'blk\.0\.ffn_down\.weight'.*"
                                           r"largest buffer"):
        be.load_weight(t)


def test_a_mapping_metal_refuses_is_copied_tensor_by_tensor(rt, tmp_path):
    """No silent whole-file copy: a warning names the cause once, each tensor gets a buffer of
    its own bytes, and nothing else is copied."""
    rt.dev.refuse_nocopy = True
    mm = mapped(tmp_path, 5 * PAGE + 123)
    with pytest.warns(UserWarning, match=r"weights\.bin cannot be used in place .*"
                                         r"newBufferWithBytesNoCopy returned nil"):
        rt.weight(mm[:16])
    for off, n in TENSORS:
        buf, at = rt.weight(mm[off:off + n])
        assert not buf.nocopy and at == 0 and bytes(rt.host(buf)[:n]) == bytes(mm[off:off + n])
    assert rt.dev.copied_bytes == 16 + sum(n for _, n in TENSORS)


# -- decode steps per command buffer ----------------------------------------------------------
VOCAB, DIM = 64, 32
STEP = 2 * VOCAB * DIM * 4  # the embedding table and the output projection, f32


def greedy(be, kv=None):
    """A one-token program: logits = emb[token] @ out.T; its greedy chain visits many ids."""
    emb = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    out = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    w = {n: be.load_weight(TensorInfo(n, GGMLType.F32, a.shape, a.view(np.uint8).reshape(-1),
                                      "<test>")) for n, a in (("emb", emb), ("out", out))}
    if kv is not None:
        be.init_kv(kv)
    g = Graph(1)
    g.output("logits", g.matmul(g.get_rows(w["emb"], g.tokens), w["out"]))
    return be.compile(g)


@pytest.mark.parametrize("kv", [None, KVSpec(n_ctx=256, kv_dim=(64,), sizes=(256,))])
def test_greedy_steps_are_split_by_the_bytes_they_read(rt, monkeypatch, kv):
    if not emulator_available():
        pytest.skip("needs the MSL emulator")
    from fastllm.backends.metal import backend, program

    pos, n = 100, 7
    step = STEP + (0 if kv is None else 2 * 64 * 2 * (pos + n))  # K and V rows, f16
    repeats = []
    run_steps = rt.dev.run_steps
    monkeypatch.setattr(rt.dev, "run_steps",
                        lambda parts, k: (repeats.append(k), run_steps(parts, k))[1])
    got = {}
    for budget, want in ((1 << 40, [n]), (3 * step + 10, [3, 3, 1]), (step - 1, [1] * n)):
        monkeypatch.setattr(program, "STEP_BUFFER_BYTES", budget)
        state = rng.bit_generator.state
        prog = greedy(backend.MetalBackend(runtime=rt, self_check=False), kv)
        repeats.clear()
        got[budget] = prog.run_greedy(n, 5, pos)
        assert repeats == want, budget
        rng.bit_generator.state = state  # the same weights for the next budget
    rng.bit_generator.state = state
    want_tokens = greedy(ReferenceBackend(), kv).run_greedy(n, 5, pos)
    assert all(t == want_tokens for t in got.values()), (got, want_tokens)


def rows_program(be, b: int):
    """A rows-mode program of b rows: logits = emb[token] @ out.T (positions change nothing, so
    a chain's tokens follow from the feeding alone), over a cache of a slot per row."""
    emb = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    out = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    w = {n: be.load_weight(TensorInfo(n, GGMLType.F32, a.shape, a.view(np.uint8).reshape(-1),
                                      "<test>")) for n, a in (("emb", emb), ("out", out))}
    be.init_kv(KVSpec(n_ctx=32, kv_dim=(8,), sizes=(32,), n_seq=b))
    g = Graph(b, rows=True)
    g.output("logits", g.matmul(g.get_rows(w["emb"], g.tokens), w["out"]))
    return be.compile(g)


def test_batched_steps_sampled_through_the_extension(rt, monkeypatch):
    """run_rows_sampled (the step and the sampling in one command buffer) and run_rows_chain
    (three command buffers of 2, 2 and 1 steps by the bytes they read) through _NativeRuntime:
    the tokens of the reference backend's host sampling (greedy rows, a bias, top_k 1)."""
    if not emulator_available():
        pytest.skip("needs the MSL emulator")
    from fastllm.backends.metal import backend, program
    from fastllm.sampling import RowSampling

    params = [RowSampling(temperature=0.0), RowSampling(temperature=0.0, logit_bias=((3, 9.0),)),
              RowSampling(temperature=0.7, top_k=1, logprobs=2)]
    toks, slots, pos = np.array([5, 9, 60], np.int32), [2, 0, 1], [4, 0, 7]
    u = rng.random((5, 3)).astype(np.float32)
    state = rng.bit_generator.state
    ref = rows_program(ReferenceBackend(), 3)
    want = ref.run_rows_sampled(toks, slots, pos, params, u[0], [()] * 3)
    want_chain = ref.run_rows_chain(toks, slots, pos, params[:2] + [RowSampling(top_k=1)], u)
    rng.bit_generator.state = state
    prog = rows_program(backend.MetalBackend(runtime=rt, self_check=False), 3)
    repeats = []
    run_steps = rt.dev.run_steps
    monkeypatch.setattr(rt.dev, "run_steps",
                        lambda parts, k: (repeats.append((len(parts), k)), run_steps(parts, k))[1])
    got = prog.run_rows_sampled(toks, slots, pos, params, u[0], [()] * 3)
    assert [g.id for g in got] == [w.id for w in want] and repeats == [(2, 1)]
    assert [i for i, _ in got[2].top] == [i for i, _ in want[2].top]
    monkeypatch.setattr(program, "STEP_BUFFER_BYTES", 2 * STEP + STEP // 2)
    repeats.clear()
    chain = prog.run_rows_chain(toks, slots, pos, params[:2] + [RowSampling(top_k=1)], u)
    assert repeats == [(2, 2), (2, 2), (2, 1)]
    np.testing.assert_array_equal(chain, want_chain)
