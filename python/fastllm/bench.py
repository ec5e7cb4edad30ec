"""`fastllm bench`: prefill (pp) and decode (tg) speed in llama-bench's table shape.

pp<N>: N random prompt tokens evaluated from an empty cache (logits of the last one, as
llama-bench). tg<N>: N tokens decoded one at a time after a single BOS, as llama-bench's tg test
(which starts from an empty context), greedily, as generate() does at temperature 0; with
--sampled also with generate()'s default sampling chain. Each test runs once to warm up, then
-r times.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np


def _time_pp(m, n: int, rng) -> float:
    ids = rng.integers(0, m.n_vocab, size=n).astype(np.int32)
    m.reset()
    t0 = time.perf_counter()
    m.prefill(ids)
    return n / (time.perf_counter() - t0)


def _tg_start(m) -> int:
    """An empty cache, a single BOS evaluated (as llama-bench's tg test): the first token."""
    m.reset()
    bos = m.tokenizer.bos_id if m.tokenizer.bos_id is not None else 0
    return int(np.argmax(m.prefill([bos])))


def _time_tg(m, n: int, rng) -> float:
    """n greedy steps through Model.decode_greedy: the path generate() takes at temperature 0
    (on GPU backends the loop stays on the device, one read-back at the end)."""
    first = _tg_start(m)
    t0, c0 = time.perf_counter(), time.process_time()
    m.decode_greedy(first, n)
    wall = time.perf_counter() - t0
    _CPU_SHARE.append((time.process_time() - c0) / wall)
    return n / wall


def _time_tg_sampled(m, n: int, rng) -> float:
    """n steps through Model.decode_sampled with make_sampler's default chain (temperature
    0.8, top_k 40, top_p 0.95, min_p 0.05): the path generate() takes by default (on GPU
    backends the chain and the draw run on the device)."""
    from .sampling import make_sampler

    first = _tg_start(m)
    chain = make_sampler().chain
    u = rng.random(n)
    t0 = time.perf_counter()
    m.decode_sampled(first, n, chain, u)
    return n / (time.perf_counter() - t0)


# process CPU time / wall time of each timed tg run: how much of a token's time the host spends
# (encoding, submitting, Python); on a GPU backend it should stay well under 100%
_CPU_SHARE: list[float] = []


def run_bench(a) -> int:
    from .model import Model
    from .pull import resolve

    quiet = getattr(a, "quiet", False)
    path = resolve(a.model, quiet=quiet)
    n_ctx = a.ctx or max(a.n_prompt, a.n_gen + 1, 16)
    m = Model.load(path, backend=a.backend, n_ctx=n_ctx, quiet=quiet)
    rng = np.random.default_rng(0)
    size = sum(t.data.nbytes for t in m.file.tensors.values())
    name = os.path.basename(m.path)
    rows = []
    tests = []
    if a.n_prompt > 0:
        tests.append((f"pp{a.n_prompt}", lambda: _time_pp(m, a.n_prompt, rng)))
    if a.n_gen > 0:
        tests.append((f"tg{a.n_gen}", lambda: _time_tg(m, a.n_gen, rng)))
        if getattr(a, "sampled", False):
            tests.append((f"tg{a.n_gen} sampled",
                          lambda: _time_tg_sampled(m, a.n_gen, rng)))
    for label, fn in tests:
        fn()  # warm-up: compiles programs, fills caches
        vals = [fn() for _ in range(max(1, a.repetitions))]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append((label, statistics.mean(vals), sd))
    print("| model | size | backend | test | t/s |")
    print("| --- | ---: | --- | --- | ---: |")
    for label, mean, sd in rows:
        print(f"| {name} | {size / 2**20:.2f} MiB | {m.backend.describe()} | {label} | "
              f"{mean:.2f} ± {sd:.2f} |")
    extra = [f"load {m.load_seconds:.2f} s"]
    if _CPU_SHARE and a.n_gen > 0:
        timed = _CPU_SHARE[-max(1, a.repetitions):]
        extra.append(f"tg host CPU time {100 * statistics.mean(timed):.0f}% of wall time")
    stats = getattr(m.backend, "stats", None)
    if callable(stats):
        extra += [f"{k} {v}" for k, v in stats().items()]
    if not quiet:  # -q: the table alone
        print("fastllm bench: " + ", ".join(extra), file=sys.stderr)
    m.close()
    return 0


def parse_parallel(text: str) -> list[int]:
    """--parallel's list of batch sizes ("1,4,8,16,32")."""
    try:
        bs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        bs = []
    if not bs or min(bs) < 1:
        raise ValueError(f"--parallel takes a list of batch sizes >= 1 like 1,4,8, got {text!r}")
    return bs


def run_parallel(a) -> int:
    """llama-batched-bench's table: for each B, B sequences of a.n_prompt random tokens are
    read (one slot each), then a.n_gen tokens decoded greedily for all of them at once, in steps
    of B rows (Model.decode_rows_chain, as fastllm.Engine runs them: the weights read once per
    step, the next tokens chosen on the device and fed to the next step there, one read-back
    per ALONE_STEPS steps; B = 1 through the one-sequence loop, as the engine runs a request
    that runs alone, or through the rows step with --rows-alone). PP, TG: tokens per sequence; N_KV:
    positions held in all; S_PP, S_TG, S: aggregate tokens/s of the prompts, the decoding and
    both."""
    from .engine import ALONE_STEPS
    from .model import Model
    from .pull import resolve
    from .sampling import RowSampling

    bs = parse_parallel(a.parallel)
    pp, tg = a.n_prompt, a.n_gen
    m = Model.load(resolve(a.model), backend=a.backend, n_ctx=max(pp + tg + 1, 16),
                   n_seq=max(bs))
    rng = np.random.default_rng(0)
    greedy = RowSampling(temperature=0.0)

    def one(b: int) -> tuple[float, float]:
        m.reset()
        slots = list(range(b))
        t0 = time.perf_counter()
        toks = []
        for s in slots:
            ids = rng.integers(0, m.n_vocab, size=max(pp, 1)).astype(np.int32)
            toks.append(int(np.argmax(m.prefill(ids, slot=s))))
        t_pp = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = 0
        while done < tg:  # as fastllm.Engine decodes: up to ALONE_STEPS steps per read-back
            k = min(ALONE_STEPS, tg - done)
            if b == 1 and not a.rows_alone:  # a request running alone: the one-sequence loop
                toks = m.decode_greedy(toks[0], k, slot=0)[-1:]
            else:
                toks = m.decode_rows_chain(toks, slots, [greedy] * b, np.zeros((k, b)))[-1]
            done += k
        return t_pp, time.perf_counter() - t0

    print("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |"
          "      T s |    S t/s |")
    print("|-------|--------|------|--------|----------|----------|----------|----------|"
          "----------|----------|")
    for b in bs:
        one(b)  # warm-up: compiles the programs of this B
        runs = [one(b) for _ in range(max(1, a.repetitions))]
        t_pp = statistics.mean(r[0] for r in runs)
        t_tg = statistics.mean(r[1] for r in runs)
        s_pp, s_tg = b * pp / t_pp, b * tg / t_tg if t_tg else 0.0
        t = t_pp + t_tg
        print(f"| {pp:5d} | {tg:6d} | {b:4d} | {b * (pp + tg):6d} | {t_pp:8.3f} | "
              f"{s_pp:8.2f} | {t_tg:8.3f} | {s_tg:8.2f} | {t:8.3f} | "
              f"{b * (pp + tg) / t:8.2f} |", flush=True)
    print(f"fastllm bench: {os.path.basename(m.path)}, {m.backend.describe()}, load "
          f"{m.load_seconds:.2f} s", file=sys.stderr)
    m.close()
    return 0
