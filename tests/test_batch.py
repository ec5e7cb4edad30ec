"""Several sequences at once: slots, rows-mode decode steps and fastllm.Engine (continuous
batching), checked against the one-sequence path on the same backend. A request's tokens must
not depend on what runs beside it: stories260K (F32) and the tiny models give the same greedy
and seeded-sampled tokens as alone."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

from fastllm import Engine, Model
from fastllm.errors import ContextOverflowError, FastLLMError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinymodels import write_tiny_model

BACKENDS = ["reference", "webgpu", "metal-emu"]


def make_backend(kind: str):
    """A fresh backend object for kind ("webgpu" skips without an adapter, "metal-emu" runs the
    Metal backend's kernels under the MSL emulator and skips without clang-16)."""
    if kind == "webgpu":
        from fastllm.errors import BackendError

        try:
            from fastllm.backends.webgpu import WebGPUBackend

            return WebGPUBackend()
        except (ImportError, BackendError) as e:
            pytest.skip(f"no WebGPU adapter: {e}")
    if kind == "metal-emu":
        sys.path.insert(0, str(Path(__file__).resolve().parent / "metal"))
        from metal_env import make_runtime

        from fastllm.backends.metal import MetalBackend

        return MetalBackend(runtime=make_runtime("emu"), self_check=False)
    return kind


def load(path, kind: str, **kw) -> Model:
    return Model.load(path, backend=make_backend(kind), **kw)


PROMPTS = ["Once upon a time", "The cat", "Lily and Tom went to", "A big dog", "One day",
           "Tim had a red ball", "The sun"]


def chains(n: int, rng: np.random.Generator) -> list[dict]:
    """n requests' arguments: greedy and seeded samplers with different chains and lengths."""
    out = []
    for i in range(n):
        kw: dict = {"max_tokens": int(rng.integers(3, 24))}
        if i % 2 == 0:
            kw["temperature"] = 0
        else:
            kw.update(temperature=float(rng.uniform(0.5, 1.2)), seed=int(rng.integers(1000)),
                      top_k=int(rng.choice([0, 5, 40])), top_p=float(rng.choice([1.0, 0.9])),
                      repeat_penalty=float(rng.choice([1.0, 1.3])))
        out.append(kw)
    return out


@pytest.mark.parametrize("kind", BACKENDS)
def test_rows_step_equals_single_sequence(stories260k, kind):
    """decode_rows over three slots (any order, a subset) gives each slot's logits of a
    one-sequence decode at the same position."""
    m = load(stories260k, kind, n_seq=3, n_ctx=64)
    one = Model.load(stories260k, backend="reference", n_ctx=64)
    seqs = [[1, 403, 407, 261], [1, 22, 33], [1, 400, 5, 6, 7, 8]]
    for s, ids in enumerate(seqs):
        m.prefill(ids, slot=s)
    tol = 1e-4 if kind == "reference" else 2e-3
    for step, order in enumerate(([0, 1, 2], [2, 0], [1, 2, 0])):
        toks = [50 + 7 * s + step for s in order]
        got = m.decode_rows(toks, order)
        for row, s in enumerate(order):
            one.prefill(seqs[s])
            want = one.decode(toks[row])
            seqs[s] = seqs[s] + [toks[row]]
            assert np.isfinite(got[row]).all()
            np.testing.assert_allclose(got[row], want, atol=tol * np.abs(want).max())
        assert m.cached_tokens(order[0]) == seqs[order[0]]


@pytest.mark.parametrize("kind", BACKENDS)
def test_engine_random_arrivals_equal_alone(stories260k, kind):
    """More requests than slots, arriving while others run, some cancelled: every request that
    was not cancelled gives exactly its tokens alone; none is lost."""
    rng = np.random.default_rng(7)
    kws = chains(len(PROMPTS), rng)
    one = load(stories260k, kind, n_ctx=128)
    alone = [one.generate(p, **kw) for p, kw in zip(PROMPTS, kws)]
    m = load(stories260k, kind, n_seq=3, n_ctx=128)
    with Engine(m) as eng:
        reqs = []
        for p, kw in zip(PROMPTS, kws):
            reqs.append(eng.submit(p, **kw))
            if rng.random() < 0.5:  # let some steps run before the next arrival
                next(iter(reqs[0]), None)
        victim = eng.submit("The dog and the cat", max_tokens=200, temperature=0)
        victim.cancel()
        texts = [r.text() for r in reqs]
        victim.wait()
        assert victim.finish_reason == "cancelled"
    assert texts == alone
    for r, kw in zip(reqs, kws):
        assert r.finish_reason in ("stop", "length")
        assert r.usage.completion_tokens == len(r.token_ids) <= kw["max_tokens"]
        if r.finish_reason == "length":
            assert len(r.token_ids) == kw["max_tokens"]


def test_cancel_midway_frees_the_slot(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=1, n_ctx=256)
    with Engine(m) as eng:
        long = eng.submit("Once upon a time", max_tokens=None, temperature=0)
        it = iter(long)
        next(it)
        long.cancel()
        "".join(it)  # the iterator ends after the cancel
        assert long.finish_reason == "cancelled"
        assert len(long.token_ids) < 200
        # the one slot is free again: a queued request runs
        short = eng.submit("The cat", max_tokens=4, temperature=0)
        assert short.text() == Model.load(stories260k, backend="reference",
                                          n_ctx=256).generate("The cat", max_tokens=4,
                                                              temperature=0)


@pytest.mark.parametrize("kind", ["reference", "webgpu"])
def test_prefix_reuse_picks_the_slot_that_holds_it(stories260k, kind):
    m = load(stories260k, kind, n_seq=2, n_ctx=128)
    one = load(stories260k, kind, n_ctx=128)
    base = "Once upon a time there was a little girl"
    with Engine(m) as eng:
        first = eng.submit(base, max_tokens=6, temperature=0)
        other = eng.submit("The sun was hot", max_tokens=6, temperature=0)
        first.text(), other.text()
        again = eng.submit(base + " named Lily", max_tokens=6, temperature=0)
        text = again.text()
    n_base = len(m.tokenize(base))
    assert again.usage.cached_tokens >= n_base  # the slot of `first` kept its cache
    assert again.usage.prompt_tokens == len(m.tokenize(base + " named Lily"))
    assert text == one.generate(base + " named Lily", max_tokens=6, temperature=0)


def test_long_prompt_is_read_in_chunks_between_decode_steps(stories260k):
    """A prompt of several n_batch chunks is evaluated one chunk per engine step while a running
    request keeps decoding; both give their tokens alone."""
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=256, n_batch=16)
    one = Model.load(stories260k, backend="reference", n_ctx=256, n_batch=16)
    long_prompt = " ".join(["Once upon a time there was a cat."] * 8)
    with Engine(m) as eng:
        running = eng.submit("The dog", max_tokens=40, temperature=0)
        it = iter(running)
        next(it)
        done_before = len(running.token_ids)
        late = eng.submit(long_prompt, max_tokens=5, temperature=0)
        late.wait()
        # the running request made progress while the long prompt was read (8 chunks)
        assert len(running.token_ids) > done_before + 1
        running.wait()
    assert late.text() == one.generate(long_prompt, max_tokens=5, temperature=0)
    assert one.generate("The dog", max_tokens=40, temperature=0) == m.detokenize(
        running.token_ids)


@pytest.mark.parametrize("kind", ["reference", "webgpu"])
def test_unused_slots_stay_unread(stories260k, kind):
    """Slots 1 and 3 of 4 run; the others hold the NaN the caches start with (a kernel that
    read another slot's rows would turn the outputs into NaN)."""
    m = load(stories260k, kind, n_seq=4, n_ctx=64)
    m.prefill([1, 403, 407], slot=1)
    m.prefill([1, 22], slot=3)
    got = m.decode_rows([261, 33], [3, 1])
    assert np.isfinite(got).all()


def test_bad_requests_are_rejected_without_disturbing_others(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=64)
    want = Model.load(stories260k, backend="reference", n_ctx=64).generate(
        "The cat", max_tokens=10, temperature=0)
    with Engine(m) as eng:
        good = eng.submit("The cat", max_tokens=10, temperature=0)
        for bad, field in (({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"),
                           ({"max_tokens": -3}, "max_tokens"), ({"top_k": -1}, "top_k"),
                           ({"logit_bias": {10_000: 1.0}}, "logit_bias"),
                           ({"logprobs": 21}, "logprobs"),
                           ({"presence_penalty": 3}, "presence_penalty")):
            with pytest.raises(ValueError, match=field):
                eng.submit("The dog", **bad)
        with pytest.raises(ContextOverflowError):
            eng.submit(list(range(1, 80)))
        with pytest.raises(ValueError, match="vocabulary"):
            eng.submit([1, 999])
        assert good.text() == want
    with pytest.raises(FastLLMError, match="closed"):
        eng.submit("The cat")


def test_logit_bias_penalties_and_logprobs(stories260k):
    """logit_bias forbids the greedy choice; logprobs give the chosen token's log-probability
    and the top alternatives of the raw distribution (checked against float64 NumPy)."""
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=64)
    one = Model.load(stories260k, backend="reference", n_ctx=64)
    ids = one.tokenize("The cat")
    logits = one.logits(ids)[-1].astype(np.float64)
    top = int(np.argmax(logits))
    with Engine(m) as eng:
        r = eng.submit(ids, max_tokens=1, temperature=0, logit_bias={top: -100.0}, logprobs=3)
        r.wait()
    assert r.token_ids[0] != top
    lp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    entry = r.logprobs[0]
    assert entry.token == r.token_ids[0]
    assert abs(entry.logprob - lp[entry.token]) < 1e-4
    assert [t for t, _ in entry.top] == list(np.argsort(-lp, kind="stable")[:3])


def test_generate_and_chat_take_lists(stories260k, tmp_path):
    m = Model.load(stories260k, backend="reference", n_seq=3, n_ctx=128)
    one = Model.load(stories260k, backend="reference", n_ctx=128)
    kw = {"max_tokens": 12, "temperature": 0.9, "seed": 3}
    got = m.generate(PROMPTS[:4], **kw)
    assert got == [one.generate(p, **kw) for p in PROMPTS[:4]]
    assert one.generate(PROMPTS[:2], **kw) == got[:2]  # n_seq 1: one after another
    with pytest.raises(ValueError, match="stream"):
        m.generate(PROMPTS[:2], stream=True)


def test_async_stream(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=64)
    want = Model.load(stories260k, backend="reference", n_ctx=64).generate(
        "The cat", max_tokens=8, temperature=0)

    async def run():
        with Engine(m) as eng:
            reqs = [eng.submit("The cat", max_tokens=8, temperature=0) for _ in range(2)]
            outs = []
            for r in reqs:
                outs.append("".join([p async for p in r.stream()]))
            return outs

    assert asyncio.run(run()) == [want, want]


@pytest.mark.parametrize("kind", ["reference", "webgpu"])
def test_ring_layers_in_batches(tmp_path, kind):
    """Gemma 3's sliding-window layers keep a ring per slot: sequences that run past the window
    in a batch give the tokens they give alone."""
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", sliding_window=8)
    m = load(path, kind, n_seq=3, n_ctx=64)
    one = load(path, kind, n_ctx=64)
    prompts = [[1, 5, 9, 20, 3], [1, 7], [1, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]
    kw = {"max_tokens": 14, "temperature": 0}
    alone = [one.generate(p, **kw) for p in prompts]
    with Engine(m) as eng:
        got = [r.text() for r in [eng.submit(p, **kw) for p in prompts]]
    assert got == alone


@pytest.fixture(scope="module")
def rwkv7(data_dir, tmp_path_factory):
    from conftest import need
    from fastllm.convert_rwkv import convert

    src = need(data_dir / "rwkv", "rwkv.cpp tiny models (shared/rwkv)")
    out = tmp_path_factory.mktemp("rwkv") / "v7.gguf"
    convert(src / "tiny-rwkv-7v0-834K-FP32.bin", out)
    return out


@pytest.mark.parametrize("kind", ["reference", "webgpu"])
def test_recurrent_state_per_slot(rwkv7, kind):
    """RWKV-7 batches too: one state per slot; each sequence's bytes equal its bytes alone."""
    m = load(rwkv7, kind, n_seq=3)
    one = load(rwkv7, kind)
    prompts = [[34, 105, 110], [72, 101], [65, 66, 67, 68]]
    kw = {"max_tokens": 10, "temperature": 0}
    alone = [list(one.generate_tokens(p, **kw)) for p in prompts]
    with Engine(m) as eng:
        reqs = [eng.submit(p, **kw) for p in prompts]
        for r in reqs:
            r.wait()
    assert [r.token_ids for r in reqs] == alone


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_quantized_rows_on_webgpu(tmp_path, arch):
    """Q8_0 weights: a one-row step runs the one-sequence kernels (integer mat-vecs, the
    attention output written as their x) and gives its logits; two rows take the integer
    mat-vec over several token rows, each row's x rounded to bytes as one row's is, so a row
    gives the one-sequence decode's logits. (Slot 1's token 30 went in by a decode step here
    and by a prefill's f16 tiles in `one`: its row differs by that rounding, ~0.5%.)"""
    path = write_tiny_model(tmp_path / "q.gguf", arch, qtype="Q8_0")
    m = load(path, "webgpu", n_seq=2, n_ctx=64)
    one = load(path, "webgpu", n_ctx=64)
    seqs = [[1, 5, 9, 20], [1, 7, 8]]
    for s, ids in enumerate(seqs):
        m.prefill(ids, slot=s)
    g1 = m.decode_rows([30], [1])
    g2 = m.decode_rows([31, 32], [0, 1])
    one.prefill(seqs[1])
    w1 = one.decode(30)
    one.prefill(seqs[0])
    w20 = one.decode(31)
    one.prefill(seqs[1] + [30])
    w21 = one.decode(32)
    scale = np.abs(w1).max()
    np.testing.assert_allclose(g1[0], w1, atol=1e-5 * scale)
    np.testing.assert_allclose(g2[0], w20, atol=1e-5 * scale)
    np.testing.assert_allclose(g2[1], w21, atol=2e-2 * scale)


@pytest.mark.parametrize("kind", BACKENDS)
def test_chained_steps_equal_single_steps(stories260k, kind):
    """decode_rows_chain (the steps back to back, tokens fed forward on the device) gives the
    tokens of one decode_rows_sampled after another, greedy and seeded rows mixed."""
    from fastllm.sampling import RowSampling

    params = [RowSampling(temperature=0), RowSampling(temperature=0.9, top_k=20),
              RowSampling(temperature=1.1, top_k=64, top_p=0.9, min_p=0.02)]
    u = np.random.default_rng(3).random((6, 3)).astype(np.float32)
    got, want = [], []
    for chained, out in ((True, got), (False, want)):
        m = load(stories260k, kind, n_seq=3, n_ctx=64)
        for s, ids in enumerate(([1, 403, 407], [1, 22], [1, 400, 5, 6])):
            m.prefill(ids, slot=s)
        toks = [261, 33, 7]
        if chained:
            out.extend(m.decode_rows_chain(toks, [0, 1, 2], params, u).tolist())
        else:
            for i in range(len(u)):
                toks = [r.id for r in m.decode_rows_sampled(toks, [0, 1, 2], params, u[i],
                                                            [()] * 3)]
                out.append(toks)
        assert len(m.cached_tokens(1)) == 2 + len(u)
    assert got == want


def test_slots_past_the_device_name_n_seq_and_n_ctx(stories260k):
    """Caches past the device's largest binding: a BackendError naming both arguments, and
    nothing left allocated (the backend is closed)."""
    from fastllm.errors import BackendError

    be = make_backend("webgpu")
    with pytest.raises(BackendError, match=r"n_seq=10000 .*n_ctx=256"):
        Model.load(stories260k, backend=be, n_seq=10000, n_ctx=256)
    with pytest.raises(ValueError, match="n_seq"):
        Model.load(stories260k, backend="reference", n_seq=0)


@pytest.mark.parametrize("b,mixed", [(3, False), (11, False), (5, True)])
def test_integer_matvecs_over_many_rows(tmp_path, b, mixed, monkeypatch):
    """A batched step of Q8_0 weights over more rows than one integer mat-vec workgroup takes
    (MVQ_ROWS_C; the integer path allowed past its default MVQ_ROWS_MAX, where the mat-mat
    takes over): every row gives the logits of its own one-sequence decode (the same bytes
    of x, the same sums). `mixed`: v and up in MXFP4, so that the multi-weight mat-vecs over
    rows join weights of two types (as Q4_K_M's Q4_K and Q6_K), and the one-dispatch decode
    attention only up to 6 positions, so that the rows straddle it and the step takes the
    split attention's list for all of them."""
    from fastllm.backends.webgpu import attention, matmul_shapes

    monkeypatch.setattr(matmul_shapes, "MVQ_ROWS_MAX", 64)
    if mixed:
        monkeypatch.setattr(attention, "ATTN_DIRECT_MAX", 6)
    qtypes = {"attn_v": "MXFP4", "ffn_up": "MXFP4"} if mixed else None
    path = write_tiny_model(tmp_path / "q.gguf", "qwen3", qtype="Q8_0", qtypes=qtypes)
    m = load(path, "webgpu", n_seq=b, n_ctx=64)
    one = load(path, "webgpu", n_ctx=64)
    rng = np.random.default_rng(b)
    seqs = [[1] + [int(t) for t in rng.integers(3, 200, size=int(rng.integers(1, 12)))]
            for _ in range(b)]
    for s, ids in enumerate(seqs):
        m.prefill(ids, slot=s)
    toks = [int(t) for t in rng.integers(3, 200, size=b)]
    order = list(rng.permutation(b))
    got = m.decode_rows([toks[s] for s in order], order)
    for row, s in enumerate(order):
        one.reset()  # the same prefill path as the slot's (no reuse of another prompt)
        one.prefill(seqs[s])
        want = one.decode(toks[s])
        np.testing.assert_allclose(got[row], want, atol=1e-5 * np.abs(want).max())
    # the batched step as the one-row step is built (matmul_shapes.ROWS_FUSE): q, k and v one
    # multi-weight integer mat-vec; gate and up one that writes silu(gate) * up as the down
    # projection's x; attention (rotating q and k and storing k and v itself, in one dispatch
    # at short contexts) writing the output projection's x; the output and down projections
    # writing the next norm's x (resq), so that only the first layer's norm and the output
    # norm quantize x on their own (past MV_MAX_M rows the graph keeps swiglu apart from the
    # down projection)
    kernels = [p.label for p, _, _ in m._program(b, True, rows=True).dispatches]
    n_layer = sum("kernel_attn_decode_direct_q8" in k for k in kernels)
    assert n_layer == 2, kernels
    if b > matmul_shapes.MV_MAX_M:
        return
    assert sum("quantize_x" in k for k in kernels) == 2, kernels
    assert sum("mul_mv_multi_q8" in k for k in kernels) == n_layer, kernels
    assert sum("mul_mv_glu_q8" in k for k in kernels) == n_layer, kernels
    assert sum("mul_mvq_resq" in k for k in kernels) == 2 * n_layer - 1, kernels


@pytest.mark.parametrize("op", ["wkv6", "wkv7"])
def test_reference_state_ops_in_rows_mode(op):
    """The reference's rows mode: row r is one step of slot slots[r]'s state, as a one-row
    sequence-mode run of that slot; weights are not split by row even when their first
    dimension equals the row count (two rows, two heads)."""
    from fastllm.backends.base import Graph, KVSpec
    from fastllm.backends.reference import ReferenceBackend
    from test_rwkv import _inputs, _weight

    rng = np.random.default_rng(5)
    h, hs, b = 2, 4, 2
    c = h * hs
    xs = [rng.standard_normal((b, c)).astype(np.float32) for _ in range(6)]
    xs[1 if op == "wkv7" else 3] = rng.uniform(0.5, 0.99, (b, c)).astype(np.float32)  # decay
    u = rng.standard_normal((h, hs)).astype(np.float32)
    s0 = rng.standard_normal((3, c * hs)).astype(np.float32)

    def graph(n: int, be, rows: bool):
        g = Graph(n, rows=rows)
        if op == "wkv6":
            r, k, v, w = _inputs(be, g, *xs[:4])
            g.output("y", g.wkv6(r, k, v, w, _weight(be, "u", u), "s", hs))
        else:
            g.output("y", g.wkv7(*_inputs(be, g, *xs), "s", hs))
        return be.compile(g)

    def backend():
        be = ReferenceBackend()
        be.init_kv(KVSpec(8, (), (), (("s", c * hs),), n_seq=3))
        for s in range(3):
            be.set_state({"s": s0[s]}, s)
        return be

    rows_be, seq_be = backend(), backend()
    slots = [2, 0]
    got = graph(b, rows_be, True).run_rows(np.arange(b, dtype=np.int32), slots, [5, 9])["y"]
    for i, s in enumerate(slots):  # row i alone: a one-row run of slot s fed row i's inputs
        g1 = Graph(1)
        if op == "wkv6":
            r, k, v, w = _inputs(seq_be, g1, *(x[i:i + 1] for x in xs[:4]))
            g1.output("y", g1.wkv6(r, k, v, w, _weight(seq_be, "u", u), "s", hs))
        else:
            g1.output("y", g1.wkv7(*_inputs(seq_be, g1, *(x[i:i + 1] for x in xs)), "s", hs))
        want = seq_be.compile(g1).run(np.zeros(1, np.int32), 0, slot=s)["y"]
        np.testing.assert_allclose(got[i:i + 1], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rows_be.get_state(s)["s"], seq_be.get_state(s)["s"])
    np.testing.assert_array_equal(rows_be.get_state(1)["s"], s0[1])  # untouched


def test_bias_adds_inside_the_multi_weight_matvec(tmp_path, monkeypatch):
    """Qwen2's q, k and v biases added by the multi-weight integer mat-vec as it stores (no add
    dispatches), in a one-sequence step and a batched one (whose graph interleaves the adds
    with q, k and v), give the logits of the same device with the adds dispatched."""
    from fastllm.backends.webgpu import matmul

    path = write_tiny_model(tmp_path / "q.gguf", "qwen2", qtype="Q8_0")
    seqs = [[1, 5, 9, 20], [1, 7, 8], [1, 3, 4, 6, 2]]

    def run():
        m = load(path, "webgpu", n_seq=3, n_ctx=64)
        for s, ids in enumerate(seqs):
            m.prefill(ids, slot=s)
        one = m.decode(30, slot=0)
        rows = m.decode_rows([31, 32, 33], [0, 1, 2])
        kernels = [[p.label for p, _, _ in m._program(n, rows, rows=rows).dispatches]
                   for n, rows in ((1, False), (3, True))]
        return np.concatenate([one[None], rows]), kernels

    got, kernels = run()
    for k in kernels:
        assert "kernel_add_f32" not in k and "kernel_mul_mv_multi_q8" in k, k
    monkeypatch.setattr(matmul.MatmulOps, "_bias_adds", lambda self: {})
    monkeypatch.setattr(matmul.MatmulOps, "_bias_add_of", staticmethod(lambda *a: False))
    want, kernels = run()
    assert all("kernel_add_f32" in k for k in kernels), kernels
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
