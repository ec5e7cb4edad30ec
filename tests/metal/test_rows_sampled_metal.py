"""A batched decode step sampled on the Metal device (backends/metal/rows_loops.py): the rows-mode
step and the rows' sampling in one command buffer, only the tokens read (run_rows_sampled), and
chains of such steps fed forward on the device (run_rows_chain, metal/rows_chain.metal). Checked
on stories260K (a real model: its next-token distributions are broad, where a random model's are
one token) in the MSL emulator: each row's token equals
fastllm.sampling.sample_row's on the same step's logits (the same positions run again by
run_rows), and a chain equals one sampled step after another."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from metal_env import make_runtime

from fastllm import Model
from fastllm.backends.metal import MetalBackend, program
from fastllm.errors import ContextOverflowError
from fastllm.sampling import (
    DEVICE_BIAS,
    RowSampling,
    allowed_tokens,
    apply_token_mask,
    sample_row,
)
from row_sampling_cases import LOGPROB_TOL, log_softmax64, processed
from sampling_cases import near_edge

N_SEQ, N_CTX = 6, 48


def loaded(path, policy: str = "forward", seed: int = 0):
    """A model of N_SEQ slots on the emulator, each slot prefilled with its own prompt; its run_steps
    calls (command buffers) are logged in m.buffers."""
    rt = make_runtime("emu", policy, seed)
    m = Model.load(path, backend=MetalBackend(runtime=rt, self_check=False), n_seq=N_SEQ,
                   n_ctx=N_CTX)
    rng = np.random.default_rng(seed)
    for s in range(N_SEQ):
        m.prefill([1] + [int(t) for t in rng.integers(3, m.n_vocab, 2 + s % 3)], slot=s)
    m.buffers = []
    run_steps = rt.run_steps
    rt.run_steps = lambda recs, k: (m.buffers.append((len(recs), k)), run_steps(recs, k))[1]
    return m, rt


def chains(n_vocab: int) -> list[RowSampling]:
    """Six chains of a batch: greedy with logprobs, drawn, penalized (drawn with logprobs, and
    greedy), biased, and one past the device (top_k off: the host's row)."""
    return [RowSampling(temperature=0.0, logprobs=3),
            RowSampling(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05),
            RowSampling(temperature=1.3, top_k=64, top_p=0.9, min_p=0.0, repeat_penalty=1.8,
                        frequency_penalty=0.5, presence_penalty=0.4, last_n=8, logprobs=20),
            RowSampling(temperature=0.0, repeat_penalty=3.0, presence_penalty=1.5, last_n=64),
            RowSampling(temperature=0.7, top_k=5, logit_bias=((7, 4.0), (20, -2.0), (7, 1.5))),
            RowSampling(temperature=1.0, top_k=0, top_p=0.9, logprobs=2)]


def check_row(what, s, x, p, u, window, mask) -> int:
    """s (the device's or the host's Sampled) against sample_row on the logits x: greedy and host
    rows exactly; a drawn row the same token, or 1 where f32 rounding at a cut or at u could
    differ (near_edge); log-probabilities as float64 NumPy's."""
    host = sample_row(x, p, u, window, mask)
    if mask is not None:
        assert allowed_tokens(mask, len(x))[s.id], what
    differ = 0
    if s.id != host.id:
        y = apply_token_mask(processed(x, p, window), mask)
        chain = {k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "min_p")}
        assert not p.greedy and near_edge(y, chain, u), (what, s.id, host.id)
        differ = 1
    if p.logprobs is None:
        assert s.logprob is None and s.top is None, what
        return differ
    lp = log_softmax64(x)
    assert abs(s.logprob - lp[s.id]) <= LOGPROB_TOL, what
    assert [i for i, _ in s.top] == [int(i) for i in np.argsort(-lp, kind="stable")[:p.logprobs]]
    assert max(abs(v - lp[i]) for i, v in s.top) <= LOGPROB_TOL, what
    return differ


def test_rows_sampled_equal_sample_row(stories260k):
    """Three steps of six rows, the chains in a new order of the slots each step, some rows
    masked (a greedy row, a drawn row, the host's row): every row's token is sample_row's on
    the step's logits, the host's row exactly, with one command buffer per step and the device
    sampling every row but the host's. A masked row's token is allowed by its mask, which
    forbids the token the row takes without it."""
    m, rt = loaded(stories260k, "random", seed=5)
    v = m.n_vocab
    rng = np.random.default_rng()
    differ = 0
    toks = [int(t) for t in rng.integers(3, v, N_SEQ)]
    for step in range(3):
        slots = [int(s) for s in rng.permutation(N_SEQ)]
        params = [p.check(v) for p in chains(v)]
        u = rng.random(N_SEQ).astype(np.float32)
        windows = [m.cached_tokens(s) + [toks[r]] for r, s in enumerate(slots)]
        t, sl, pos, prog = m._rows_args(toks, slots)
        x = prog.run_rows(t, sl, pos)["logits"]
        masks = [None] * N_SEQ
        for r in (0, 1, 5) if step != 1 else ():
            allow = rng.random(v) < 0.3
            allow[int(rng.integers(v))] = True
            # the token the row takes without its mask is not allowed: a mask left out shows
            allow[sample_row(x[r], params[r], float(u[r]), windows[r]).id] = False
            masks[r] = np.packbits(np.r_[allow, np.zeros(-v % 32, bool)],
                                   bitorder="little").view(np.uint32)
        m.buffers.clear()
        finals = rt.counts["kernel_sample_rows_final"]
        got = prog.run_rows_sampled(t, sl, pos, params, u, windows,
                                    masks if step != 1 else None)
        assert m.buffers == [(2, 1)]  # the step and the sampling: one command buffer
        assert rt.counts["kernel_sample_rows_final"] == finals + 1
        for r, p in enumerate(params):
            what = f"step {step} row {r} ({p}) mask {masks[r] is not None}"
            differ += check_row(what, got[r], x[r], p, float(u[r]), windows[r], masks[r])
        host = sample_row(x[5], params[5], float(u[5]), windows[5], masks[5])
        assert got[5] == host  # the host's row: its logits, sample_row itself
        toks = [g.id for g in got]
        for r, s in enumerate(slots):
            m._slot_tokens[s].append(int(t[r]))
    assert differ <= 1


def test_rows_sampled_host_rows_only_and_errors(stories260k):
    """A step whose rows the device cannot sample (top_k 100, a window of 65, 65 biases) runs
    the step alone and samples each row on the host; wrong counts and masks are ValueErrors."""
    m, rt = loaded(stories260k)
    params = [RowSampling(temperature=0.8, top_k=100),
              RowSampling(temperature=0.0, repeat_penalty=1.5, last_n=65),
              RowSampling(temperature=0.0, logit_bias=tuple((i, 0.1)
                                                            for i in range(DEVICE_BIAS + 1)))]
    toks, slots = [5, 6, 7], [4, 0, 2]
    t, sl, pos, prog = m._rows_args(toks, slots)
    x = prog.run_rows(t, sl, pos)["logits"]
    windows = [list(range(3, 80)) for _ in slots]
    u = np.array([0.2, 0.5, 0.9], np.float32)
    finals = rt.counts["kernel_sample_rows_final"]
    got = prog.run_rows_sampled(t, sl, pos, params, u, windows)
    assert got == [sample_row(x[r], params[r], float(u[r]), windows[r]) for r in range(3)]
    assert rt.counts["kernel_sample_rows_final"] == finals
    with pytest.raises(ValueError, match="runs 3 rows, got 2 sampling chains"):
        prog.run_rows_sampled(t, sl, pos, params[:2], u[:2], windows[:2])
    with pytest.raises(ValueError, match="token mask must be"):
        prog.run_rows_sampled(t, sl, pos, [RowSampling()] * 3, u, windows,
                              [None, np.zeros(3, np.uint32), None])
    with pytest.raises(ContextOverflowError, match=r"positions \[.*\] and the 47 after"):
        prog.run_rows_chain(t, sl, pos, [RowSampling()] * 3, np.zeros((48, 3)))


def test_chain_equals_single_steps(stories260k, monkeypatch):
    """run_rows_chain (greedy, drawn and biased rows) gives the tokens of one run_rows_sampled
    after another from the same positions: 3 steps in one command buffer, then 9 (the chain's
    buffers grown, the end of a step recorded again) in command buffers of 4 steps (a budget of
    bytes that 4 steps fit); a chain with a penalty window or logprobs takes the steps one by
    one."""
    m, _ = loaded(stories260k, "random", seed=2)
    v = m.n_vocab
    rng = np.random.default_rng()
    params = [RowSampling(temperature=0.0), RowSampling(temperature=0.9, top_k=20),
              RowSampling(temperature=1.1, top_k=64, top_p=0.9, min_p=0.02),
              RowSampling(temperature=0.8, top_k=3, logit_bias=((9, 3.0),))]
    params = [p.check(v) for p in params]
    slots = [3, 1, 5, 0]
    toks = [int(t) for t in rng.integers(3, v, 4)]
    t, sl, pos, prog = m._rows_args(toks, slots)
    for k, per in ((3, 3), (9, 4)):
        u = rng.random((k, 4)).astype(np.float32)
        step_bytes = step_bytes_of(prog, pos + k)
        monkeypatch.setattr(program, "STEP_BUFFER_BYTES", per * step_bytes + step_bytes // 2)
        m.buffers.clear()
        chained = prog.run_rows_chain(t, sl, pos, params, u)
        assert m.buffers == [(2, per)] * (k // per) + [(2, k % per)] * (k % per > 0)
        want, tt = [], t
        for i in range(k):
            got = prog.run_rows_sampled(tt, sl, pos + i, params, u[i], [()] * 4)
            tt = np.array([g.id for g in got], np.int32)
            want.append(tt)
        np.testing.assert_array_equal(chained, np.stack(want))
    # with logprobs, one step at a time (the base class over run_rows_sampled)
    lp = [params[0], RowSampling(temperature=0.0, logprobs=1)] + params[2:]
    u = rng.random((2, 4)).astype(np.float32)
    m.buffers.clear()
    got = prog.run_rows_chain(t, sl, pos, lp, u)
    assert m.buffers == [(2, 1), (2, 1)]
    np.testing.assert_array_equal(got[:, [0, 2, 3]], prog.run_rows_chain(
        t, sl, pos, params, u)[:, [0, 2, 3]])


def step_bytes_of(prog, ends) -> int:
    """What _steps_per_buffer counts for one step of prog ending at positions `ends`."""
    b = prog.b
    weights = sum(r.nbytes for d in prog.plan.dispatches for r in d.buffers
                  if r.kind == "weight")
    return weights + sum(2 * dim * 2 * min(int(e), ring) for e in ends
                         for ring, dim in zip(b.spec.sizes, b.spec.kv_dim))


def test_every_chain_kernel_ran(request):
    """Runs last in this module: when the whole module ran on the emulator, the kernels of
    metal/sample_rows.metal and metal/rows_chain.metal have run in a batched step."""
    module = request.node.parent
    ran = {i.nodeid for i in request.session.items}
    if not {i.nodeid for i in module.collect()} <= ran or "mslemu_runtime" not in sys.modules:
        pytest.skip("only meaningful when every test of this module runs on the emulator")
    rt = sys.modules["mslemu_runtime"]
    mine = ["kernel_sample_rows_part", "kernel_sample_rows_final", "kernel_rows_chain_next"]
    assert not [k for k in mine if k not in rt.EmuRuntime.total]
