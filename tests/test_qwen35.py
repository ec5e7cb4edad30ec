"""Qwen3.5 (`qwen35`, `qwen35moe`: Gated DeltaNet hybrids) against llama.cpp on ../shared/archs'
qwen35-dense.gguf, qwen35moe-moe.gguf (2 experts, both used) and qwen35moe-moe-e6k2.gguf (2 of 6):
a layer of Gated DeltaNet (conv state + delta state) and a layer of gated full attention, the
MoE files with a fused gate-up expert tensor, per-expert down scales and a gated shared expert,
written by llama.cpp's model saver with every optional tensor (q/k/v biases, per-tensor
`.scale`s), and llama.cpp's logits for 40 tokens and its 12 greedy steps (archs/README.md).

The bounds are test_archs.py's (its docstring says why): llama.cpp keeps the attention layer's
KV cache in f16 and prints its logits to 5 decimals; its delta rule and convolution are float32
as fastllm's. Measured: max 7.9e-6 to 8.3e-6 (reference), 6.2e-6 to 7.6e-6 (WebGPU, Metal
emulator), RMS 2.9e-6.

Then what a recurrent state changes for the rest of fastllm: the same tokens in several chunks
(the states carried from one run to the next), one token at a time, several sequences in one
rows-mode step, save_state / restore_state, and state checkpoints for prefix reuse.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastllm import Model
from fastllm.errors import UnsupportedError
from test_archs import RMS_BOUND, bound, copy_with_keys, greedy_steps_to_compare, make_backend

NAME = "qwen35-dense"
MOE = ["qwen35moe-moe", "qwen35moe-moe-e6k2"]
BACKENDS = ["reference", "webgpu", "metal-emu"]
CASES = [(f, b) for f in [NAME, *MOE] for b in BACKENDS]


@pytest.fixture(scope="module")
def ref(archs_logits) -> dict:
    return archs_logits[NAME + ".gguf"]


def load(archs, backend="reference", name=NAME, **kw) -> Model:
    return Model.load(archs / f"{name}.gguf", backend=make_backend(backend), **kw)


@pytest.mark.parametrize("name,backend", CASES)
def test_logits_chunks_and_greedy_match_llamacpp(archs, archs_logits, name, backend):
    """The 40 tokens at once, then in runs of 7 (the states carried over six runs), then
    llama.cpp's greedy steps decoded one token at a time (each step's argmax fed back through
    Model.decode) and on the device's own greedy loop (generate)."""
    ref = archs_logits[name + ".gguf"]
    want = np.asarray(ref["logits"], np.float32)
    tol = bound(backend, want)
    m = load(archs, backend, name)
    got = m.logits(ref["tokens"])
    err = np.abs(got - want).max(axis=1)
    assert err.max() <= tol, f"worst position {err.argmax()}: {err.max():.3g} > {tol:.3g}"
    assert float(np.sqrt(np.mean(np.square(got - want)))) <= RMS_BOUND
    chunked = load(archs, backend, name, n_batch=7).logits(ref["tokens"])
    # the same arithmetic over other row counts (test_archs.py's two-chunk bound)
    np.testing.assert_allclose(chunked, got, rtol=0, atol=2e-6)

    # a greedy step is compared where llama.cpp's top-2 margin is more than twice what the two
    # may differ by: the bound, or ten times the difference measured at the 40 positions if
    # that is less (qwen35moe-moe's first margin, 1.5e-3, is within the 3-ulp bound of the GPU
    # backends, 2.1e-3, but 200 times the 7.6e-6 measured)
    n = greedy_steps_to_compare(ref["greedy_margins"], min(tol, 10 * float(err.max())))
    assert n >= 4, "llama.cpp's margins leave too few steps to compare"
    logits = m.prefill(ref["tokens"])
    steps = []
    for _ in range(n):
        steps.append(int(np.argmax(logits)))
        logits = m.decode(steps[-1])
    assert steps == ref["greedy"][:n]
    assert list(m.generate_tokens(ref["tokens"], temperature=0, max_tokens=n)) == ref["greedy"][:n]


@pytest.mark.parametrize("name,backend", [(f, b) for f in (NAME, MOE[1]) for b in BACKENDS])
def test_rows_step_equals_each_sequence_alone(archs, ref, name, backend):
    """Two sequences of different lengths in slots 1 and 0, then decode steps of both at once
    (Graph.rows: each row its own KV rows, recurrent states and chosen experts) give each one's
    logits alone."""
    ids = ref["tokens"]
    prompts = {1: ids[:9], 0: ids[5:20]}
    m = load(archs, backend, name, n_seq=2)
    alone = {}
    for slot, p in prompts.items():
        m.prefill(p, slot)
        one = load(archs, "reference", name)
        one.prefill(p)
        alone[slot] = one
    toks = [ids[30], ids[31]]
    for step in range(3):
        got = m.decode_rows(toks, [1, 0])
        for r, slot in enumerate((1, 0)):
            want = alone[slot].decode(toks[r])
            np.testing.assert_allclose(got[r], want, rtol=0, atol=3e-6,
                                       err_msg=f"step {step}, slot {slot}")
        toks = [int(np.argmax(got[0])), int(np.argmax(got[1]))]


@pytest.mark.parametrize("name", [NAME, MOE[1]])
@pytest.mark.parametrize("backend,chunk,least", [("webgpu", 32, 16), ("webgpu", 8, 1),
                                                 ("metal-emu", 32, 16)])
def test_chunked_gated_delta_prefill_matches_llamacpp(archs, archs_logits, monkeypatch, name,
                                                      backend, chunk, least):
    """The chunked gated_delta (taken by runs of GD_CHUNK_MIN rows or more, 64 by default: more
    than the 40 tokens) lowered to take these runs: the 40 tokens at once (chunks of 32 and 8, or
    five of 8 on WebGPU), then in runs of 20 (the state carried) within the same bound as the
    per-row kernel, and as close to its logits as two row counts are (test_logits_chunks_...'s
    2e-6). This checks the chunked kernels in the model's graph (its scratch among the other
    values, the head tiling, the slot); these random weights hardly resolve the delta rule's
    arithmetic (a chunk's decays left out of P moves the logits by 5e-7), which
    tests/backends/test_delta_chunked.py and tests/metal/test_delta_metal.py check against the
    reference op."""
    if backend == "webgpu":
        from fastllm.backends.webgpu import delta

        monkeypatch.setattr(delta, "GD_CHUNK", chunk)
    else:
        from fastllm.backends.metal import delta

        assert delta.GD_C == chunk
    ref = archs_logits[name + ".gguf"]
    want = np.asarray(ref["logits"], np.float32)
    per_row = load(archs, backend, name).logits(ref["tokens"])
    monkeypatch.setattr(delta, "GD_CHUNK_MIN", least)
    for n_batch in (512, 20):
        got = load(archs, backend, name, n_batch=n_batch).logits(ref["tokens"])
        err = np.abs(got - want).max()
        assert err <= bound(backend, want), f"runs of {n_batch}: {err:.3g}"
        np.testing.assert_allclose(got, per_row, rtol=0, atol=2e-6, err_msg=f"runs of {n_batch}")


def test_save_and_restore_state_cover_both_states(archs, ref):
    m = load(archs)
    ids = ref["tokens"]
    m.prefill(ids[:20])
    m.decode(ids[20])
    snap = m.save_state()
    assert {"blk.0.conv", "blk.0.ssm"} <= set(snap["state"])
    assert snap["state"]["blk.0.ssm"].size == 2 * 128 * 128
    assert snap["state"]["blk.0.conv"].size == 3 * 768
    first = [m.decode(t) for t in ids[21:25]]
    m.restore_state(snap)
    again = [m.decode(t) for t in ids[21:25]]
    np.testing.assert_array_equal(np.stack(again), np.stack(first))
    fresh = load(archs).logits(ids[:25])[-1]
    np.testing.assert_allclose(again[-1], fresh, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", ["reference", "webgpu"])
def test_state_checkpoints_resume_a_prompt_that_leaves_the_cache(archs, ref, backend):
    """With state_checkpoints=2 and runs of 8 tokens, a 30-token prompt leaves checkpoints after
    24 and 30 tokens. A prompt that leaves those tokens after 27 resumes from the one at 24
    (reading 3 + its new tokens, not all of them), after 22 it finds none that fits (the one at 16
    was dropped: only the last 2 are kept) and starts afresh; its logits equal a fresh model's
    either way. Without checkpoints the state cannot roll back at all."""
    ids = ref["tokens"]
    m = load(archs, backend, n_batch=8, state_checkpoints=2)
    m.prefill(ids[:30])
    assert [len(t) for t, _ in m._checkpoints[0]] == [24, 30]
    for t in ids[30:34]:  # a reply after the prompt: the slot's tokens move past 30
        m.decode(t)
    fresh = load(archs)
    for cut, reused in ((27, 24), (22, 0), (30, 24)):
        prompt = ids[:cut] + ids[35:40]
        if cut == 30:  # the first prompt again, then a different continuation
            m.prefill(ids[:30])
            prompt = ids[:30] + ids[36:38]
            reused = 30
        assert m.common_prefix(prompt) == reused, cut
        got = m.prefill(prompt)
        np.testing.assert_allclose(got, fresh.logits(prompt)[-1], rtol=0, atol=2e-6,
                                   err_msg=f"cut {cut}")
    plain = load(archs, backend, n_batch=8)
    plain.prefill(ids[:30])
    plain.decode(ids[30])
    assert plain.common_prefix(ids[:27] + ids[35:40]) == 0
    assert plain.common_prefix(ids[:31] + ids[35:40]) == 31  # an exact extension continues


def test_state_checkpoints_argument(archs):
    with pytest.raises(ValueError, match="state_checkpoints must be an int >= 0"):
        load(archs, state_checkpoints=-1)
    m = Model.load(archs / "qwen3-dense.gguf", backend="reference", state_checkpoints=4)
    assert m.state_checkpoints == 0  # a KV cache rolls back by itself


def test_rope_sections_that_leave_pairs_unrotated_fail(archs, tmp_path):
    """IMROPE rotates a pair by the text position only where sections 0..2 cover its sector;
    a file whose sections leave pairs on the fourth component is refused, naming the key."""
    import gguf

    p = copy_with_keys(archs / f"{NAME}.gguf", tmp_path / "s.gguf",
                       {"qwen35.rope.dimension_sections": ([8, 8, 4, 4], gguf.GGUFValueType.ARRAY)})
    with pytest.raises(UnsupportedError, match="dimension_sections"):
        Model.load(p, backend="reference")


def test_moe_down_scales_matter(archs, archs_logits):
    """What these random MoE weights resolve: leaving out the per-expert down scales moves the
    logits far past the bound (matching llama.cpp shows they are applied as it applies them).
    The shared expert's gate does not resolve so well: without it the logits move by 1.7e-5 at
    most (4.6e-6 RMS), within llama.cpp's own rounding; dot_gate's arithmetic is checked by the
    op tests (tests/delta_cases.py) and its place in the graph by llama.cpp's source."""
    r = archs_logits["qwen35moe-moe-e6k2.gguf"]
    want = np.asarray(r["logits"], np.float32)
    m = load(archs, "reference", "qwen35moe-moe-e6k2")
    assert np.abs(m.logits(r["tokens"]) - want).max() <= bound("reference", want)
    for i in range(m.config.n_layer):
        del m.net.w[f"blk.{i}.ffn_down_exps.scale"]
    m._programs.clear()
    assert np.abs(m.logits(r["tokens"]) - want).max() > 0.01


def test_recurrent_layers_by_flags_or_interval():
    """llama.cpp's is_recr: attention.recurrent_layers, else every layer but each
    full_attention_interval-th (4 when the key is absent)."""
    from fastllm.errors import GGUFError
    from fastllm.models.qwen35 import recurrent_layers

    key = "qwen35.attention.recurrent_layers"
    assert recurrent_layers({}, "qwen35", 8, "") == (True, True, True, False) * 2
    assert recurrent_layers({"qwen35.full_attention_interval": 2}, "qwen35", 4, "") == (
        True, False, True, False)
    assert recurrent_layers({key: np.array([0, 1, 1])}, "qwen35", 3, "") == (False, True, True)
    with pytest.raises(GGUFError, match=f"q.gguf: {key} has 1 values for 2 layers"):
        recurrent_layers({key: np.array([1])}, "qwen35", 2, "q.gguf")
