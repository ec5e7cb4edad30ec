"""Slots and rows mode (the batched engine, issue 22) on the Metal backend: the kernels that add a
slot's base (kv store, rope_kv_store, prefill and decode attention, the RWKV state ops) and the
rows-mode kernels (metal/rows.metal, the *_rows_f32 variants of rwkv.metal) against the
reference backend (tests/rows_checks.py: fresh random inputs, NaN caches, unused slots NaN); then
whole models: a decode step of several sequences equal to each sequence decoded alone. On Linux
the kernels run in the MSL emulator in strict mode (outputs poisoned before each dispatch)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from metal_env import make_runtime

from fastllm import Model
from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.metal import MetalBackend
from fastllm.errors import BackendError, ContextOverflowError
from rows_checks import (
    ATTN_SHAPES,
    Twin,
    attention_case,
    f32_info,
    run_attention_case,
    run_rwkv_case,
    rwkv_case,
)
from tinymodels import write_tiny_model

rng = np.random.default_rng()


def metal(policy="forward", **kw) -> MetalBackend:
    return MetalBackend(runtime=make_runtime("emu", policy, seed=int(rng.integers(99))),
                        self_check=False, **kw)


# -- op level ------------------------------------------------------------------------------------
# (shape, kv_type, fuse, softcap, schedule, sinks)
ATTN_RUNS = [(ATTN_SHAPES[0], "f16", True, 0.0, "forward", False),
             (ATTN_SHAPES[0], "f32", False, 0.0, "reverse", False),
             (ATTN_SHAPES[1], "f16", True, 8.0, "random", False),
             (ATTN_SHAPES[1], "f32", True, 0.0, "forward", False),
             (ATTN_SHAPES[0], "f32", True, 0.0, "random", True)]


@pytest.mark.parametrize("shape,kv_type,fuse,softcap,policy,sinks", ATTN_RUNS,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_attention_slots_and_rows(shape, kv_type, fuse, softcap, policy, sinks):
    """rope, kv_store and attention (full and windowed ring layers, GQA, softcap, sink logits)
    in runs of one sequence in slots 0-2 (fused into rope_kv_store or not; prefill and decode
    attention) and in rows-mode steps over the three; slot 3 stays NaN in every cache."""
    infos, spec, build = attention_case(shape, rng, softcap, sinks=sinks)
    be = metal(policy, kv_type=kv_type, fuse=fuse)
    twin = Twin(be, infos, spec)
    # an f16 cache rounds K and V (the reference keeps f32); rope angles at positions < 32
    tol = 2e-3 if kv_type == "f16" else 1e-4
    run_attention_case(twin, build, lambda n, rows: tol, rng)

    kernels = {(n, rows): [d.kernel for d in p.plan.dispatches]
               for (b, _, n, rows), p in twin.progs.items() if b == id(be)}
    for (n, rows), ks in kernels.items():
        if rows:
            assert {"kernel_rope_rows_f32", f"kernel_kv_store_rows_{kv_type}",
                    f"kernel_attn_rows_{kv_type}", "kernel_attn_reduce_f32"} <= set(ks), ks
            assert not any("decode" in k or "prefill" in k or "kv_store_f" in k for k in ks)
        elif fuse:
            assert f"kernel_rope_kv_store_{kv_type}" in ks, ks
        else:
            assert f"kernel_kv_store_{kv_type}" in ks and "kernel_rope_f32" in ks, ks
    assert {n for n, rows in kernels if not rows} >= {1, 3, 8, 9}  # decode and prefill kernels
    # nothing was written into the unused slot: its rows still hold the 0xFF poison
    esz = 2 if kv_type == "f16" else 4
    for layer, (size, dim) in enumerate(zip(spec.sizes, spec.kv_dim)):
        for buf in (be.k[layer], be.v[layer]):
            slot3 = be.rt.host(buf)[3 * size * dim * esz:4 * size * dim * esz]
            assert (slot3 == 0xFF).all(), f"layer {layer}: slot 3 written"


@pytest.mark.parametrize("policy", ["forward", "reverse", "random"])
def test_rwkv_state_ops_slots_and_rows(policy):
    """token_shift, wkv6 and wkv7 (heads of 8 and 64) in runs of one sequence in slots 3, 1
    and 0 and in rows-mode steps: every used slot's state equals the reference's after each run,
    the unused slot's stays NaN."""
    infos, spec, states, build = rwkv_case(rng)
    twin = Twin(metal(policy), infos, spec)
    run_rwkv_case(twin, build, states, 2e-5, rng)
    rows = [p for (b, _, n, r), p in twin.progs.items() if r and b == id(twin.dev)]
    assert rows and all({"kernel_token_shift_rows_f32", "kernel_wkv6_rows_f32",
                         "kernel_wkv7_rows_f32"} <= {d.kernel for d in p.plan.dispatches}
                        for p in rows)


def test_slot_state_api_and_errors():
    be = metal()
    be.init_kv(KVSpec(8, (), (), (("a", 5), ("b", 3)), n_seq=3))
    st = [{"a": rng.standard_normal(5), "b": rng.standard_normal(3)} for _ in range(3)]
    for s in range(3):
        be.set_state(st[s], s)
    for s in range(3):
        for name in "ab":
            np.testing.assert_array_equal(be.get_state(s)[name], st[s][name].astype(np.float32))
    be.reset_state(1)
    assert not be.get_state(1)["a"].any() and be.get_state(2)["a"].any()
    be.reset_state()
    assert not any(be.get_state(s)[n].any() for s in range(3) for n in "ab")
    with pytest.raises(ValueError, match="slot 3 is not one of the state's 3"):
        be.get_state(3)
    with pytest.raises(ValueError, match="'a' has 5 values, got 4"):
        be.set_state({"a": np.zeros(4)}, 0)

    w = be.load_weight(f32_info("t", rng.standard_normal((4, 8))))
    be.init_kv(KVSpec(8, (8,), (8,), n_seq=2))
    seq, rows = Graph(2), Graph(2, rows=True)
    for g in (seq, rows):
        x = g.get_rows(w, g.tokens)
        g.kv_store(0, x, x)
        g.output("a", g.attention(x, 0, n_head=1, n_kv_head=1, head_dim=8, scale=1.0))
    ps, pr = be.compile(seq), be.compile(rows)
    toks = np.array([1, 2], np.int32)
    with pytest.raises(ValueError, match="slot 2 is not one of the cache's 2"):
        ps.run(toks, 0, 2)
    with pytest.raises(ValueError, match="rows-mode graph runs with run_rows"):
        pr.run(toks, 0)
    with pytest.raises(ValueError, match="needs a rows-mode graph"):
        ps.run_rows(toks, [0, 1], [0, 0])
    with pytest.raises(ValueError, match="slot -1 is not one"):
        pr.run_rows(toks, [0, -1], [0, 0])
    with pytest.raises(ContextOverflowError, match=r"positions \[8\]"):
        pr.run_rows(toks, [0, 1], [8, 0])
    with pytest.raises(ValueError, match="runs 2 rows, got 1 tokens"):
        pr.run_rows(toks[:1], [0], [0])


class _SmallDevice:
    """The emulator's runtime with a device that gives no buffer past `limit` bytes."""

    def __init__(self, limit):
        self.rt, self.limit = make_runtime("emu"), limit

    def __getattr__(self, name):
        return getattr(self.rt, name)

    def buffer(self, nbytes):
        if nbytes > self.limit:
            raise RuntimeError(f"cannot allocate a Metal buffer of {nbytes} bytes")
        return self.rt.buffer(nbytes)


def test_slots_past_the_device_name_n_seq_and_n_ctx(stories260k):
    """A cache of n_seq slots that the device cannot hold: a BackendError naming n_seq and n_ctx
    (one slot of the same model loads)."""
    # stories260K: a layer's K (or V) cache of 256 positions of 4 heads of 8 in f16 is 16 KiB
    # per slot
    limit = 32 * 1024
    Model.load(stories260k, backend=MetalBackend(runtime=_SmallDevice(limit), self_check=False),
               n_ctx=256).close()
    with pytest.raises(BackendError, match=r"n_seq=4 .*n_ctx=256.*smaller n_seq or n_ctx"):
        Model.load(stories260k, n_ctx=256, n_seq=4,
                   backend=MetalBackend(runtime=_SmallDevice(limit), self_check=False))


# -- whole models --------------------------------------------------------------------------------
def _rows_equal_alone(path, prompts, steps, n_ctx, tol, **load):
    """Each prompt prefilled in a slot of one model (n_seq = len(prompts)), then decode steps of
    all of them at once (each step in its own shuffled order, one slot left out of one step),
    against one model of one sequence per prompt fed the prompt and the same tokens."""
    many = Model.load(path, backend=metal("random"), n_seq=len(prompts), n_ctx=n_ctx, **load)
    alone = [Model.load(path, backend=metal(), n_ctx=n_ctx, **load) for _ in prompts]
    for s, p in enumerate(prompts):
        many.prefill(p, slot=s)
        alone[s].prefill(p)
    for i in range(steps):
        slots = [int(s) for s in rng.permutation(len(prompts))]
        if i == 1:
            slots = slots[1:]  # a slot sits one step out
        toks = [int(t) for t in rng.integers(3, 250, len(slots))]
        got = many.decode_rows(toks, slots)
        for r, (s, t) in enumerate(zip(slots, toks)):
            want = alone[s].decode(t)
            assert np.isfinite(got[r]).all()
            err = float(np.abs(got[r] - want).max() / np.abs(want).max())
            assert err <= tol, f"step {i} slot {s}: {err:.2e}"
            assert int(np.argmax(got[r])) == int(np.argmax(want)), f"step {i} slot {s}"
    for s, m in enumerate(alone):
        assert many.cached_tokens(s) == m.cached_tokens()


def test_stories260k_decode_rows_equal_alone(stories260k):
    """A step of three sequences at once equals each decoded alone at the same positions: the
    mat-muls of three rows round the norms apart instead of folding them into the mat-vec (a
    one-row step), so equal up to float32 rounding."""
    _rows_equal_alone(stories260k, [[1, 403, 407, 261], [1, 22, 33], [1, 400, 5, 6, 7, 8]], 3,
                      64, 1e-5)


def test_device_loops_in_a_slot(stories260k):
    """Greedy and sampled decoding on the device (the loops that move the step on themselves)
    in slot 1 equal one sequence's, and leave slot 0's sequence as it was."""
    from fastllm.sampling import make_sampler

    a, b = [1, 403, 407, 261], [1, 22, 33, 90, 7]
    many = Model.load(stories260k, backend=metal("random"), n_seq=2, n_ctx=64)
    alone = [Model.load(stories260k, backend=metal(), n_ctx=64) for _ in range(2)]
    for s, p in enumerate((a, b)):
        many.prefill(p, slot=s)
        alone[s].prefill(p)
    greedy = many.decode_greedy(50, 6, slot=1)
    assert greedy == alone[1].decode_greedy(50, 6)
    chain = make_sampler(temperature=0.9, top_k=20, top_p=0.9, min_p=0.0).chain
    u = rng.random(6)
    t = greedy[-1]
    assert many.decode_sampled(t, 6, chain, u, slot=1) == alone[1].decode_sampled(t, 6, chain, u)
    got, want = many.decode(60, slot=0), alone[0].decode(60)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_gemma3_ring_layers_decode_rows_equal_alone(tmp_path):
    """Gemma 3's sliding-window layers are rings of window + batch rows per slot (12 < n_ctx):
    prompts longer than the ring, then rows steps past it."""
    path = write_tiny_model(tmp_path / "g.gguf", "gemma3", sliding_window=8)
    prompts = [[1] + [int(t) for t in rng.integers(3, 283, n)] for n in (13, 4, 10)]
    probe = Model.load(path, backend="reference", n_ctx=32, n_batch=4, n_seq=3)
    assert min(probe.kv_spec.sizes) == 12  # < 14, the longest prompt
    _rows_equal_alone(path, prompts, 3, 32, 1e-5, n_batch=4)


@pytest.mark.parametrize("name", ["v6-q5_1", "v7-fp32"])
def test_rwkv_decode_rows_equal_alone(data_dir, tmp_path, name):
    """RWKV-6 and RWKV-7 (rwkv.cpp's tiny models): one recurrent state per slot; a step of
    three sequences equals each decoded alone (the same products and state updates per row)."""
    from conftest import need
    from fastllm.convert_rwkv import convert

    src = {"v6-q5_1": "tiny-rwkv-6v0-3m-Q5_1.bin", "v7-fp32": "tiny-rwkv-7v0-834K-FP32.bin"}
    path = tmp_path / f"{name}.gguf"
    convert(need(data_dir / "rwkv" / src[name], "rwkv.cpp tiny models (shared/rwkv)"), path)
    _rows_equal_alone(path, [[84, 104, 101], [99, 97, 116, 32, 115], [1]], 3, 32, 1e-5)


def test_every_rows_kernel_ran(request):
    """Runs last in this module: when the whole module ran on the emulator, every kernel of
    metal/rows.metal and every rows variant of rwkv.metal has run at least once."""
    module = request.node.parent
    ran = {i.nodeid for i in request.session.items}
    if not {i.nodeid for i in module.collect()} <= ran or "mslemu_runtime" not in sys.modules:
        pytest.skip("only meaningful when every test of this module runs on the emulator")
    rt = sys.modules["mslemu_runtime"]
    libs = rt.libraries()
    rows, rwkv = libs["kernel_attn_rows_f32"], libs["kernel_wkv7_f32"]
    mine = [k for k, lib in libs.items() if lib is rows or (lib is rwkv and "_rows_" in k)]
    assert len(mine) == 8
    missing = sorted(k for k in mine if k not in rt.EmuRuntime.total)
    assert not missing, f"kernels no test ran: {missing}"
