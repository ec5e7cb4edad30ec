"""Op-level checks of the batched engine's kernels (slots and rows mode, backends/base.py) on a
device backend against the reference backend, shared by tests/metal/test_rows_metal.py (the MSL
emulator) and tests/backends/test_rows_ops.py (WebGPU).

Every check runs the same graphs on both backends from fresh random inputs: runs of one sequence
in a slot other than 0 (the kernels that add `step.slot`'s base), then decode steps of several
sequences at once (Graph.rows: each row its own slot and position, in shuffled order), then runs
of one sequence again (which read what the rows wrote). The KV caches start NaN on both backends
and the slots no run uses keep NaN states, so a kernel that reads a row or a slot it should not
gives non-finite output; the device's output buffers are poisoned by its harness (the emulator
before each dispatch, WebGPU through `prepare`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastllm.backends.base import Graph, KVSpec
from fastllm.backends.reference import ReferenceBackend
from fastllm.gguf import TensorInfo
from fastllm.quants import GGMLType


def f32_info(name: str, a: np.ndarray) -> TensorInfo:
    a = np.ascontiguousarray(a, np.float32)
    return TensorInfo(name, GGMLType.F32, a.shape, a.view(np.uint8).reshape(-1), "<test>")


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all(), "non-finite values in the device's output (a row or slot " \
                                   "read that should not be, or a skipped write)"
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))


class Twin:
    """The same weights, KV cache and recurrent states on a device backend and the reference.
    `prepare(program)` runs before each device run (WebGPU poisons its activation buffers)."""

    def __init__(self, dev, infos: list[TensorInfo], spec: KVSpec,
                 prepare: Callable | None = None):
        self.dev, self.ref = dev, ReferenceBackend()
        self.spec, self.prepare = spec, prepare
        self.w = {}
        for b in (self.dev, self.ref):
            self.w[b] = {i.name: b.load_weight(i) for i in infos}
            b.init_kv(spec)
        self.progs: dict = {}

    def _prog(self, b, build, n: int, rows: bool):
        key = (id(b), id(build), n, rows)
        if key not in self.progs:
            g = Graph(n, rows=rows)
            build(g, self.w[b])
            self.progs[key] = b.compile(g)
        return self.progs[key]

    def set_states(self, states: dict[int, dict[str, np.ndarray]]) -> None:
        for b in (self.dev, self.ref):
            for slot, st in states.items():
                b.set_state(st, slot)

    def run(self, build, tokens, pos: int, slot: int) -> tuple[dict, dict]:
        """One sequence's run of len(tokens) rows at positions pos.. of slot `slot`."""
        out = []
        for b in (self.dev, self.ref):
            p = self._prog(b, build, len(tokens), False)
            if b is self.dev and self.prepare is not None:
                self.prepare(p)
            out.append(p.run(np.asarray(tokens, np.int32), pos, slot))
        return out[0], out[1]

    def run_rows(self, build, tokens, slots, positions) -> tuple[dict, dict]:
        """A rows-mode run: row r is tokens[r] in slot slots[r] at positions[r]."""
        out = []
        for b in (self.dev, self.ref):
            p = self._prog(b, build, len(tokens), True)
            if b is self.dev and self.prepare is not None:
                self.prepare(p)
            out.append(p.run_rows(np.asarray(tokens, np.int32), np.asarray(slots),
                                  np.asarray(positions)))
        return out[0], out[1]


def check(got: dict, want: dict, tol: float | dict, what: str) -> None:
    """Each output within tol (a dict: by output name, "*" for the others)."""
    for name, w in want.items():
        t = tol.get(name, tol["*"]) if isinstance(tol, dict) else tol
        e = rel_err(got[name], w)
        assert e <= t, f"{what} {name}: relative error {e:.2e} > {t:.0e}"


# -- KV cache, rope and attention --------------------------------------------------------------
# (n_head, n_kv_head, head_dim): GQA with a partial rotation; one KV head of 256 (Gemma 3's size)
ATTN_SHAPES = [(4, 2, 32), (2, 1, 256)]
# layer 1: a sliding window over a ring of WINDOW + BATCH rows (as a model sizes its ring layers:
# the window and the longest run), fewer than the positions the checks reach
WINDOW, BATCH = 6, 9
VOCAB = 40


def attention_case(shape, rng, softcap: float = 0.0, n_rot: int = 16, sinks: bool = False,
                   head_norm: bool = False):
    """(infos, spec, build): q, k, v rows from random tables; rope of q and k (NeoX pairs over
    n_rot values of each head, frequency factors), the KV store and attention on a full layer
    (0) and a ring layer with a window (1, softcap `softcap`), both with a sink logit per head
    if `sinks` and each head of q and k rms-normed first if `head_norm` (Qwen3's q and k
    norms); outputs the roped q and both attentions. Four slots of 32 positions; slot 3 is
    never used."""
    nh, nkv, d = shape
    infos = [f32_info("q", rng.standard_normal((VOCAB, nh * d))),
             f32_info("k", rng.standard_normal((VOCAB, nkv * d))),
             f32_info("v", rng.standard_normal((VOCAB, nkv * d))),
             f32_info("ff", rng.uniform(1.0, 4.0, n_rot // 2)),
             f32_info("sk", rng.uniform(-1.0, 4.0, nh)),
             f32_info("qn", rng.uniform(0.5, 1.5, d)), f32_info("kn", rng.uniform(0.5, 1.5, d))]
    spec = KVSpec(32, (nkv * d,) * 2, (32, WINDOW + BATCH), n_seq=4)
    rope = {"head_dim": d, "n_rot": n_rot, "base": 1e4, "neox": True}

    def build(g, w):
        q, k, v = (g.get_rows(w[c], g.tokens) for c in "qkv")
        for layer, window, cap in ((0, 0, 0.0), (1, WINDOW, softcap)):
            # recorded as a model records a layer (rope of q and k, the store, attention): the
            # GPU backends fuse the first three (rope_kv_store; on WebGPU with attention too,
            # and the head norms, where q is not an output; Metal keeps rows mode's apart)
            qh, kh = q, k
            if head_norm:
                qh = g.rms_norm(q, w["qn"], 1e-6, group=d)
                kh = g.rms_norm(k, w["kn"], 1e-6, group=d)
            ql = g.rope(qh, n_head=nh, freq_factors=w["ff"], **rope)
            kl = g.rope(kh, n_head=nkv, freq_factors=w["ff"], **rope)
            g.kv_store(layer, kl, v)
            if layer == 0:
                g.output("q", ql)
            g.output(f"a{layer}", g.attention(ql, layer, n_head=nh, n_kv_head=nkv, head_dim=d,
                                              scale=d ** -0.5, window=window, softcap=cap,
                                              sinks=w["sk"] if sinks else None))

    return infos, spec, build


def run_attention_case(twin: Twin, build, tol: Callable[[int, bool], float | dict], rng,
                       rows_steps: int = 4) -> None:
    """Runs of one sequence fill slots 2 (9 rows then 8: prefill, past the ring's size), 0 (3
    rows) and 1 (1 row); then `rows_steps` decode steps of the three at once in shuffled order,
    one of two of them and one of a single row; then runs of one sequence in slots 1 (1 row,
    then 9 past the ring's size) and 0 that read what the rows stored. tol(n, rows) is the
    tolerance of a run of n rows (`check`'s)."""
    pos = {0: 0, 1: 0, 2: 0}

    def seq(slot, n):
        toks = rng.integers(0, VOCAB, n)
        got, want = twin.run(build, toks, pos[slot], slot)
        check(got, want, tol(n, False), f"slot {slot} positions {pos[slot]}..{pos[slot] + n - 1}")
        pos[slot] += n

    def step(slots):
        toks = rng.integers(0, VOCAB, len(slots))
        at = [pos[s] for s in slots]
        got, want = twin.run_rows(build, toks, slots, at)
        check(got, want, tol(len(slots), True), f"rows step slots {slots} at {at}")
        for s in slots:
            pos[s] += 1

    seq(2, BATCH)
    seq(0, 3)
    seq(1, 1)
    seq(2, BATCH - 1)
    for _ in range(rows_steps):
        step([int(s) for s in rng.permutation(3)])
    step([1, 2][::int(rng.choice([1, -1]))])
    step([0])
    seq(1, 1)
    seq(1, BATCH)
    seq(0, 1)
    assert max(pos.values()) < twin.spec.n_ctx and pos[2] > WINDOW + BATCH


# -- RWKV state ops ----------------------------------------------------------------------------
# head size: channels (5 heads of 8: a partial threadgroup). The rows steps below are of 3 and 1
# rows: the reference's rows mode splits any 2-D argument of as many rows as the step by row,
# time_first (n_head x head_size) included, so no step has as many rows as a head count
HEAD_SIZES = {8: 40, 64: 128}


def rwkv_case(rng):
    """(infos, spec, states, build): token_shift, wkv6 and wkv7 (head sizes 8 and 64) over rows
    from random tables; four slots, random states in slots 0, 1 and 3, NaN in slot 2 (unused)."""
    n, d = 12, 24
    infos = [f32_info("x", rng.standard_normal((n, d)))]
    for hs, c in HEAD_SIZES.items():
        kk = rng.standard_normal((n, c // hs, hs))
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        kk = kk.reshape(n, c)
        infos += [f32_info(f"r{hs}", rng.standard_normal((n, c))),
                  f32_info(f"k{hs}", 0.5 * rng.standard_normal((n, c))),
                  f32_info(f"v{hs}", rng.standard_normal((n, c))),
                  f32_info(f"w{hs}", rng.uniform(0.3, 1.0, (n, c))), f32_info(f"a{hs}", -kk),
                  f32_info(f"b{hs}", kk * rng.uniform(0, 1, (n, c))),
                  f32_info(f"u{hs}", rng.standard_normal((c // hs, hs)))]
    state = (("shift", d),) + tuple((f"s{v}_{hs}", c * hs) for hs, c in HEAD_SIZES.items()
                                    for v in (6, 7))
    spec = KVSpec(64, (), (), state, n_seq=4)
    states = {s: {name: 0.5 * rng.standard_normal(size).astype(np.float32)
                  for name, size in state} for s in (0, 1, 3)}
    states[2] = {name: np.full(size, np.nan, np.float32) for name, size in state}

    def build(g, w):
        def rows(name):
            return g.get_rows(w[name], g.tokens)

        g.output("shift", g.token_shift(rows("x"), "shift"))
        for hs in HEAD_SIZES:
            r, k, v, wd, a, b = (rows(f"{t}{hs}") for t in "rkvwab")
            g.output(f"wkv6_{hs}", g.wkv6(r, k, v, wd, w[f"u{hs}"], f"s6_{hs}", hs))
            g.output(f"wkv7_{hs}", g.wkv7(r, wd, k, v, a, b, f"s7_{hs}", hs))

    return infos, spec, states, build


def run_rwkv_case(twin: Twin, build, states, tol, rng) -> None:
    """Runs of one sequence in slots 3 (3 rows) and 1 (1 row), rows steps over slots 0, 1 and 3
    in shuffled order and over one of them, a run of one sequence in slot 0; after each run the
    states of every used slot equal the reference's and slot 2's stay NaN (never touched)."""
    twin.set_states(states)

    def states_match(what):
        for slot in range(twin.spec.n_seq):
            got, want = twin.dev.get_state(slot), twin.ref.get_state(slot)
            for name, w in want.items():
                if slot == 2:
                    assert np.isnan(got[name]).all(), f"{what}: unused slot 2's {name} written"
                    continue
                e = rel_err(got[name], w)
                assert e <= tol, f"{what}: state {name} of slot {slot}: {e:.2e} > {tol:.0e}"

    def seq(slot, n):
        got, want = twin.run(build, rng.integers(0, 12, n), 0, slot)
        check(got, want, tol, f"slot {slot}, {n} rows")
        states_match(f"slot {slot}, {n} rows")

    def step(slots):
        got, want = twin.run_rows(build, rng.integers(0, 12, len(slots)), slots,
                                  [5] * len(slots))
        check(got, want, tol, f"rows step slots {slots}")
        states_match(f"rows step slots {slots}")

    seq(3, 3)
    seq(1, 1)
    for _ in range(2):
        step([int(s) for s in rng.permutation([0, 1, 3])])
    step([3])
    seq(0, 2)
