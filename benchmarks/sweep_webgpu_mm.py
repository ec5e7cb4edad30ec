"""Prefill mat-mat settings swept in one process: GPU time of y = x W^T for each weight shape,
type and setting (a set of webgpu/matmul_shapes.py constants), with each result's error against the
first setting's, so a faster kernel that computes something else shows.

    python benchmarks/sweep_webgpu_mm.py --m 512 --types q4_K,f16 \\
        --shapes 4096x4096,14336x4096 --setting base: --setting half:MM_HALF=1,MM_NBUF=2

A setting is NAME:CONST=INT,CONST=INT (matmul_shapes constants; empty after the colon: the
defaults). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from bench_webgpu_ops import Timer, _tensor, mat_mat_dispatches

from fastllm.backends.base import Graph
from fastllm.backends.webgpu import WebGPUBackend
from fastllm.backends.webgpu import matmul_shapes as wm
from fastllm.backends.webgpu.repack import type_name
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType


def parse_setting(text: str) -> tuple[str, dict[str, int]]:
    name, _, rest = text.partition(":")
    consts = {}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        if not hasattr(wm, k):
            raise SystemExit(f"webgpu matmul_shapes has no constant {k}")
        consts[k] = int(v)
    return name, consts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=512, help="tokens")
    ap.add_argument("--types", default="q4_K,q6_K,q8_0,f16")
    ap.add_argument("--shapes", default="4096x4096,14336x4096,4096x14336,1024x4096,"
                    "2048x2048,8192x2048,2048x8192,512x2048", help="ROWSxK,...")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME:CONST=INT,...")
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args(argv)
    settings = [parse_setting(s) for s in a.setting] or [("defaults", {})]
    defaults = {k: getattr(wm, k) for _, c in settings for k in c}
    be = WebGPUBackend()
    print(be.describe())
    names = {type_name(t): t for t in SUPPORTED_TYPES}
    rng = np.random.default_rng(0)
    timer = Timer(be)
    print(f"\n{a.m} tokens; TFLOP/s (relative error against the first setting)")
    print(f"{'shape':>12} {'type':>5} " + " ".join(f"{n:>18}" for n, _ in settings))
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        x = be.load_weight(TensorInfo("x", GGMLType.F32, (a.m, k), rng.standard_normal(
            (a.m, k)).astype(np.float32).view(np.uint8).reshape(-1), ""))
        for tn in a.types.split(","):
            w = be.load_weight(_tensor("w", names[tn], n, k, rng))
            cells, ref = [], None
            for _, consts in settings:
                for c, v in {**defaults, **consts}.items():
                    setattr(wm, c, v)
                g = Graph(a.m)
                g.output("y", g.matmul(g.get_rows(x, g.tokens), w))
                prog = be.compile(g)
                y = prog.run(np.arange(a.m, dtype=np.int32), 0)["y"]
                sec = timer.time(mat_mat_dispatches(prog), a.repeat)
                if ref is None:
                    ref = y
                err = float(np.max(np.abs(y - ref)) / max(1e-30, np.max(np.abs(ref))))
                cells.append(f"{2 * a.m * n * k / sec / 1e12:7.2f} ({err:7.1e})")
                prog.release()
            print(f"{shape:>12} {tn:>5} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    be.close()


if __name__ == "__main__":
    main()
