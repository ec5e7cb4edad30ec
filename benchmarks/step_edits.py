"""What each kernel of a decode step costs in the stream, found by editing the step's dispatch
list: the GPU time of one pass of the step as it runs, then without a kernel's dispatches, with
them at a grid of one workgroup (the same dispatches, almost no work) and with each repeated.
Results are wrong on purpose; only the time counts (benchmarks/NOTES.md, section 11).

    python benchmarks/step_edits.py --model model.gguf [--pos 128] [--kernels attn]
    python benchmarks/step_edits.py --model model.gguf --rows 1,4,8 --summary

`--rows B` times the batched step of B sequences (rows mode, each row in its own slot at --pos)
instead of the one-sequence step; `--summary` prints only each step's time and dispatch count.

A kernel's "without" less its "grid 1" is its work; "grid 1" less the full step is what its
dispatch boundaries cost. `--kernels` picks kernels by a substring of their names (default: all,
one group per kernel and grid).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import bench_webgpu_ops as bo

from fastllm import Model
from fastllm.backends.webgpu import WebGPUBackend


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--pos", type=int, default=128, help="position of the step's token")
    ap.add_argument("--kernels", default="", help="comma-separated substrings of kernel names")
    ap.add_argument("--repeat", type=int, default=10, help="steps per timed pass")
    ap.add_argument("--rows", default="", help="batched steps of these numbers of rows")
    ap.add_argument("--summary", action="store_true", help="step times only, no edits")
    a = ap.parse_args(argv)
    be = WebGPUBackend()
    bs = [int(x) for x in a.rows.split(",") if x.strip()]
    m = Model.load(a.model, backend=be, n_ctx=max(4096, 2 * a.pos) if not bs else a.pos + 8,
                   n_seq=max(bs, default=1))
    print(be.describe(), a.model)
    timer = bo.Timer(be)
    for b in bs or [0]:
        d = _step(m, b, a.pos)
        _edits(timer, d, a, f"rows {b}" if b else "one sequence")
    m.close()
    be.close()


def _step(m, b: int, pos: int) -> list:
    """The dispatch list of the one-sequence step (b = 0) or of the batched step of b rows, its
    cache filled up to pos."""
    if not b:
        prog = m._program(1, False)
        for i in (2, 1, 0):  # the cache filled up to the position, then its step once more
            prog.run(np.zeros(1, np.int32), max(0, pos - i))
        return prog.dispatches
    prog = m._program(b, True, rows=True)
    sl = np.arange(b)
    for i in (2, 1, 0):
        prog.run_rows(np.zeros(b, np.int32), sl, np.full(b, max(0, pos - i)))
    return prog._lists[prog._kind(pos)][0]


def _edits(timer, d: list, a, what: str) -> None:

    def t(dl) -> float:
        return statistics.median(timer.time(dl, a.repeat, warm=0.1) for _ in range(3)) * 1e6

    if a.kernels:
        groups = [(s, lambda x, s=s: s in x[0].label) for s in a.kernels.split(",")]
    else:
        keys = list(dict.fromkeys((p.label, g) for p, _, g in d))
        groups = [(f"{k[0]} {k[1]}", lambda x, k=k: (x[0].label, x[2]) == k) for k in keys]
    t(d)  # the first timing after loading runs on cold clocks (twice the step, on an H100)
    base = t(d)
    print(f"{what}: {len(d)} dispatches, step {base:.1f} us at position {a.pos}", flush=True)
    if a.summary:
        return
    print("per group: dispatches, then the step's change without them / at grid 1 / with each "
          "twice")
    for name, sel in groups:
        n = sum(map(sel, d))
        if not n:
            continue
        without = t([x for x in d if not sel(x)]) - base
        one = t([(x[0], x[1], (1, 1, 1)) if sel(x) else x for x in d]) - base
        twice = t([y for x in d for y in ([x, x] if sel(x) else [x])]) - base
        print(f"  {name:48s} {n:4d}  {without:+9.1f} {one:+9.1f} {twice:+9.1f} us")


if __name__ == "__main__":
    main()
