"""The persistent decode step (backends/webgpu/persist.py) under FASTLLM_WEBGPU_PERSISTENT=force
on lavapipe: the same ids as the ordinary dispatches, greedy and sampled on the device; a wait
that times out sends the call back to the ordinary path; the probe and the adapter gate refuse."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from fastllm import Model

PROMPT_IDS = 24  # tokens decoded after BOS


@pytest.fixture(scope="module")
def webgpu_ok():
    from fastllm.errors import BackendError

    try:
        from fastllm.backends.webgpu import WebGPUBackend

        WebGPUBackend().close()
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU adapter: {e}")


@contextmanager
def env(**values):
    """FASTLLM_WEBGPU_PERSISTENT* set while a model loads (the backend reads them then)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load(path, **values) -> Model:
    with env(**values):
        return Model.load(path, backend="webgpu", n_ctx=128)


@pytest.fixture(scope="module")
def ordinary(webgpu_ok, stories260k):
    m = load(stories260k, FASTLLM_WEBGPU_PERSISTENT=0)
    yield m
    m.close()


@pytest.fixture(scope="module")
def forced(webgpu_ok, stories260k):
    """The persistent path's own tokens: the check against the ordinary path that a program
    runs on its first VERIFY_TOKENS tokens (returning the ordinary ones) is skipped."""
    from fastllm.backends.webgpu import loops

    m = load(stories260k, FASTLLM_WEBGPU_PERSISTENT="force")
    verify, loops.VERIFY_TOKENS = loops.VERIFY_TOKENS, 0
    yield m
    loops.VERIFY_TOKENS = verify
    m.close()


def test_greedy_ids_equal(ordinary, forced):
    bos = [ordinary.tokenizer.bos_id]
    want = list(ordinary.generate_tokens(bos, temperature=0, max_tokens=PROMPT_IDS))
    assert "persistent off: FASTLLM_WEBGPU_PERSISTENT=0" in repr(ordinary)
    got = list(forced.generate_tokens(bos, temperature=0, max_tokens=PROMPT_IDS))
    assert got == want
    assert "decode=persistent (" in repr(forced), repr(forced)
    assert "merged launches" in forced.backend.stats()["decode path"]


def test_sampled_ids_equal(ordinary, forced):
    """Sampling on the device (sample.wgsl's tail merged into the last launch's run)."""
    bos = [ordinary.tokenizer.bos_id]
    kw = {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 7, "max_tokens": PROMPT_IDS}
    want = list(ordinary.generate_tokens(bos, **kw))
    got = list(forced.generate_tokens(bos, **kw))
    assert got == want
    assert "decode=persistent (" in repr(forced), repr(forced)


def test_timeout_falls_back(ordinary, forced):
    """A spin bound of 0 loads: the first wait of every launch times out, the flag comes back
    and the call re-runs on the ordinary dispatches, with the same ids."""
    from fastllm.backends.webgpu import persist

    bos = [ordinary.tokenizer.bos_id]
    want = list(ordinary.generate_tokens(bos, temperature=0, max_tokens=8))
    pers = forced.backend.persistent
    prog = forced._program(1, False)
    spin, timeouts = pers.spin, pers.timeouts
    pers.spin = 0
    prog._loops["plists"] = {}  # the task lists hold the bound
    try:
        got = list(forced.generate_tokens(bos, temperature=0, max_tokens=8))
        assert got == want
        assert "timed out" in repr(forced), repr(forced)
        assert pers.timeouts > timeouts
        assert persist.probe(forced.backend, 1, 0) == "a wait of the probe timed out on a grid of 1"
    finally:
        pers.spin = spin
        prog._loops["plists"] = {}
    assert list(forced.generate_tokens(bos, temperature=0, max_tokens=8)) == want
    assert "decode=persistent (" in repr(forced), repr(forced)


def test_grid_halves_after_timeout(ordinary, forced):
    """On two workgroups: where they do not run at once (this lavapipe), the first wait times
    out, the call retries on one and returns its ids; where they do, it just runs on two."""
    bos = [ordinary.tokenizer.bos_id]
    want = list(ordinary.generate_tokens(bos, temperature=0, max_tokens=8))
    pers = forced.backend.persistent
    prog = forced._program(1, False)
    grid, timeouts = pers.grid, pers.timeouts
    pers.grid = 2
    prog._loops["plists"] = {}
    try:
        got = list(forced.generate_tokens(bos, temperature=0, max_tokens=8))
        assert got == want
        assert "decode=persistent (" in repr(forced), repr(forced)
        assert (pers.grid, pers.timeouts) in ((2, timeouts), (1, timeouts + 1))
    finally:
        pers.grid = grid
        prog._loops["plists"] = {}


def test_check_catches_a_mismatch(ordinary, forced, monkeypatch):
    """Within the check's window a persistent run whose tokens differ from the ordinary run's
    turns the path off for the program, and the ordinary tokens are returned."""
    from fastllm.backends.webgpu import loops

    bos = [ordinary.tokenizer.bos_id]
    want = list(ordinary.generate_tokens(bos, temperature=0, max_tokens=8))
    prog = forced._program(1, False)
    run = type(prog)._loop_run

    def skewed(self, g, lists, n, first, pos, slot, persistent=False):
        ids, timed_out = run(self, g, lists, n, first, pos, slot, persistent)
        return ([t + 1 for t in ids] if persistent else ids), timed_out

    monkeypatch.setattr(loops, "VERIFY_TOKENS", 256)
    monkeypatch.setattr(type(prog), "_loop_run", skewed)
    try:
        assert list(forced.generate_tokens(bos, temperature=0, max_tokens=8)) == want
        assert "tokens differed from the ordinary path" in repr(forced), repr(forced)
    finally:
        prog._loops.pop("persist_off", None)


def test_loop_limit_falls_back(ordinary, forced, monkeypatch):
    """A launch whose sentinel reports cut loops (llvmpipe's loop budget): the call re-runs on
    the ordinary dispatches with the same ids, and the lists are built again with half the
    virtual workgroups a launch."""
    from fastllm.backends.webgpu import persist

    bos = [ordinary.tokenizer.bos_id]
    want = list(ordinary.generate_tokens(bos, temperature=0, max_tokens=8))
    pers = forced.backend.persistent
    prog = forced._program(1, False)
    run = type(prog)._loop_run
    cut = []

    def once_cut(self, g, lists, n, first, pos, slot, persistent=False):
        ids, flag = run(self, g, lists, n, first, pos, slot, persistent)
        if persistent and not cut:
            cut.append(1)
            return [0] * len(ids), persist.LOOP_LIMIT  # what a cut launch's ids may be
        return ids, flag

    rounds, limits = pers.rounds, pers.loop_limits
    monkeypatch.setattr(type(prog), "_loop_run", once_cut)
    try:
        assert list(forced.generate_tokens(bos, temperature=0, max_tokens=8)) == want
        assert cut and pers.loop_limits == limits + 1
        assert pers.rounds == (rounds or persist.MAX_ROUNDS) // 2
        assert "decode=persistent (" in repr(forced) and "cut loops" in repr(forced)
    finally:
        pers.rounds = rounds
        prog._loops["plists"] = {}


def test_sentinel_sees_cut_loops(webgpu_ok):
    """The sentinel at the end of every launch: llvmpipe ends all of an invocation's loops after
    65,535 iterations in all, so a probe whose phases spin 70,000 iterations each must report
    cut loops there (and nowhere else), one that spins 1,000 must pass everywhere."""
    from fastllm.backends.webgpu import WebGPUBackend, persist

    with env(FASTLLM_WEBGPU_PERSISTENT="force"):
        be = WebGPUBackend()
    try:
        assert persist.probe(be, 1, persist.SPIN_DEFAULT, work=1000) is None
        why = persist.probe(be, 1, persist.SPIN_DEFAULT, work=70000)
        if "llvmpipe" in str(be.info.get("device", "")).lower():
            assert why == "the probe's loops were cut short on a grid of 1"
        else:
            assert why is None
    finally:
        be.close()


def test_probe_and_gate(webgpu_ok, stories260k):
    """Without force, a CPU adapter is refused before any probe; the probe passes on one
    workgroup (every hand-off its own) with the default bound."""
    from fastllm.backends.webgpu import WebGPUBackend, persist

    with env(FASTLLM_WEBGPU_PERSISTENT="1"):
        be = WebGPUBackend()
    try:
        if be.info.get("adapter_type") == "CPU":
            assert not be.persistent.usable()
            assert be.persistent.refused == "a CPU adapter"
        assert persist.probe(be, 1, persist.SPIN_DEFAULT) is None
    finally:
        be.close()
    with env(FASTLLM_WEBGPU_PERSISTENT="sometimes"), pytest.raises(ValueError, match="PERSIS"):
        persist.mode()


def _pulled(name: str):
    from conftest import need
    from fastllm.errors import PullError
    from fastllm.pull import pull

    try:
        return pull(name, quiet=True)
    except PullError as e:
        return need(None, f"{name} ({e})")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTLLM_SLOW") != "1",
                    reason="~3 min each on lavapipe (one workgroup walks each step); FASTLLM_SLOW=1")
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_pulled_models_greedy_ids_equal(webgpu_ok, name):
    """SmolLM2 (Q4_1, 30 layers: lavapipe's 32 bindings cut a layer's run in two) and Gemma 3
    (its norms in the merged runs; its 262,144-row output mat-vec is what ran past llvmpipe's
    loop budget before launches were bounded by Persistent.rounds)."""
    path = _pulled(name)
    with load(path, FASTLLM_WEBGPU_PERSISTENT=0) as m:
        ids = m.tokenize("The capital of France is")
        want = list(m.generate_tokens(ids, temperature=0, max_tokens=12))
    from fastllm.backends.webgpu import loops

    verify, loops.VERIFY_TOKENS = loops.VERIFY_TOKENS, 0  # the persistent path's own tokens
    try:
        with load(path, FASTLLM_WEBGPU_PERSISTENT="force") as m:
            got = list(m.generate_tokens(ids, temperature=0, max_tokens=12))
            assert "decode=persistent (" in repr(m), repr(m)
    finally:
        loops.VERIFY_TOKENS = verify
    assert got == want
