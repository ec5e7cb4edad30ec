"""Mat-vec shape sweep: GPU time of y = W x per weight type and shape for each (rows per group R,
most threads per row TPR, units per pass UNR), to choose matmul_shapes.py's mat-vec shapes.

    python benchmarks/sweep_webgpu_mv.py [--types q4_K,q6_K,q8_0] [--shapes 2048x2048,...]

With --copies N, N copies of each weight take turns (N * size above the GPU's L2 cache: each
dispatch reads its weights from memory, as in a model, instead of the L2 a repeated one hits).
With --int, the integer mat-vec (mul_mvq.wgsl) over (R, TPR, WG) instead (--unr ignored), plus
the time of the quantize_x dispatch that precedes it; the float kernels are timed otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import bench_webgpu_ops as bo

from fastllm.backends.webgpu import WebGPUBackend
from fastllm.backends.webgpu import matmul_shapes as wp
from fastllm.backends.webgpu.repack import array_sizes, type_name
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="q4_K,q6_K,q8_0")
    ap.add_argument("--shapes", default="2048x2048,8192x2048,2048x8192")
    ap.add_argument("--r", default="4,8,16")
    ap.add_argument("--tpr", default="16,32,64")
    ap.add_argument("--unr", default="1,2")
    ap.add_argument("--wg", default="64")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--int", action="store_true", help="the integer mat-vec's shapes")
    a = ap.parse_args()
    be = WebGPUBackend(int_dot=a.int)
    timer = bo.Timer(be)
    rng = np.random.default_rng(0)
    names = {type_name(t): t for t in SUPPORTED_TYPES}
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    ws = {}
    for s in a.types.split(","):
        for n, k in shapes:
            ws[s, n, k] = [be.load_weight(bo._tensor("w", names[s], n, k, rng))
                           for _ in range(a.copies)]
    xs = {k: be.load_weight(TensorInfo("x", GGMLType.F32, (1, k), rng.standard_normal(k).astype(
        np.float32).view(np.uint8), "")) for k in {k for _, k in shapes}}
    combos = [c for c in itertools.product(*[list(map(int, v.split(",")))
                                             for v in (a.r, a.tpr, a.unr, a.wg)]) if c[1] <= c[3]]
    if a.int:
        combos = list(dict.fromkeys((r, t, 1, w) for r, t, _u, w in combos))
    print(f"{'type':>5} {'shape':>11} " + " ".join(f"{f'R{r}/T{t}/U{u}/W{w}':>14}"
                                                   for r, t, u, w in combos))
    for (s, n, k), w in ws.items():
        row = []
        nparts = len(w[0].handle.parts)
        for r, tpr, unr, wg in combos:
            if a.int:
                wp.MVQ_FIXED = (r, tpr, wg)
            else:
                wp.MV_FIXED = (r, tpr, unr, wg)
            progs = [bo.matmul_program(be, c, xs[k], 1) for c in w]
            sec = timer.time([d for p in progs for d in p.dispatches[-nparts:]],
                             a.repeat, warm=0.1) / len(w)
            gbs = (sum(array_sizes(names[s], n, k)) + 4 * (n + k)) / sec / 1e9
            row.append(f"{sec * 1e6:6.1f}us {gbs:5.0f}")
            if a.int and len(row) == 1:
                quant = timer.time([progs[0].dispatches[-nparts - 1]], a.repeat, warm=0.1)
            for p in progs:
                p.release()
        extra = f"  quantize_x {quant * 1e6:.1f}us" if a.int else ""
        print(f"{s:>5} {n:>5}x{k:<5} " + " ".join(f"{c:>14}" for c in row) + extra, flush=True)
    be.close()


if __name__ == "__main__":
    main()
