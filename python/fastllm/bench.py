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

    path = resolve(a.model)
    n_ctx = a.ctx or max(a.n_prompt, a.n_gen + 1, 16)
    m = Model.load(path, backend=a.backend, n_ctx=n_ctx)
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
    print("fastllm bench: " + ", ".join(extra), file=sys.stderr)
    m.close()
    return 0
