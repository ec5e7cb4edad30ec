"""WebGPU kernel speed on whatever adapter exists: mat-vec bandwidth per weight type, tiled
mat-mat throughput, and the host cost of encoding a dispatch.

    python benchmarks/bench_webgpu_ops.py [--n 4096 --k 4096] [--mm 512] [--types q4_K,q8_0]
    python benchmarks/bench_webgpu_ops.py --model model.gguf   # GPU time per kernel of a step

Mat-vec time is the GPU's (timestamp queries around a pass that repeats the dispatch), and its
GB/s counts the bytes a dispatch must read: the repacked weight arrays plus x and y. Encode cost
is the Python time to record set_pipeline + set_bind_group + dispatch_workgroups, as a compiled
program does for every dispatch of a step. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from fastllm.backends.base import Graph
from fastllm.backends.webgpu import WebGPUBackend
from fastllm.backends.webgpu.repack import array_sizes, type_name
from fastllm.gguf import TensorInfo
from fastllm.quants import SUPPORTED_TYPES, GGMLType, random_blocks


def _tensor(name: str, t: GGMLType, rows: int, cols: int, rng) -> TensorInfo:
    raw = random_blocks(t, rows, cols, rng)
    return TensorInfo(name, t, (rows, cols), raw.reshape(-1), "")


class Timer:
    """GPU time of a compute pass (timestamp queries), else wall time of submit + wait."""

    def __init__(self, be: WebGPUBackend):
        self.be = be
        self.gpu = "timestamp-query" in be.device.features
        self.sync = be.device.create_buffer(size=16, usage="STORAGE|COPY_SRC")
        if self.gpu:
            self.qs = be.device.create_query_set(type="timestamp", count=2)
            self.res = be.device.create_buffer(size=16, usage="QUERY_RESOLVE|COPY_SRC")

    def _encode(self, dispatches, repeat: int, stamp: bool):
        enc = self.be.device.create_command_encoder()
        tw = ({"query_set": self.qs, "beginning_of_pass_write_index": 0,
               "end_of_pass_write_index": 1} if stamp else None)
        cp = enc.begin_compute_pass(timestamp_writes=tw)
        for _ in range(repeat):
            for p, bg, (x, y, z) in dispatches:
                cp.set_pipeline(p)
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(x, y, z)
        cp.end()
        if stamp:
            enc.resolve_query_set(self.qs, 0, 2, self.res, 0)
        return enc.finish()

    def time(self, dispatches, repeat: int, warm: float = 0.25) -> float:
        """Seconds per repetition of the dispatch list. Untimed passes of the same work for
        `warm` seconds first bring the GPU's clocks up: they drop while the host compiles
        pipelines, and one short pass is not enough (an H100 then reads at half speed)."""
        be = self.be
        t_end = time.perf_counter() + warm
        while True:
            be.queue.submit([self._encode(dispatches, repeat, False)])
            be.queue.read_buffer(self.sync)
            if time.perf_counter() >= t_end:
                break
        cb = self._encode(dispatches, repeat, self.gpu)
        t0 = time.perf_counter()
        be.queue.submit([cb])
        if self.gpu:
            ts = np.frombuffer(be.queue.read_buffer(self.res), np.uint64)
            return float(ts[1] - ts[0]) * 1e-9 / repeat
        be.queue.read_buffer(self.sync)  # waits for the submitted work
        return (time.perf_counter() - t0) / repeat


def matmul_program(be: WebGPUBackend, w, x, m: int):
    g = Graph(m)
    g.output("y", g.matmul(g.get_rows(x, g.tokens), w))
    prog = be.compile(g)
    prog.run(np.zeros(m, np.int32), 0)  # warm up (pipelines compiled, buffers touched)
    return prog


def bench_mul_mv(be, timer, types, n, k, rng, repeat):
    print(f"\nmat-vec y = x W^T, W {n} x {k} (decode, M = 1)")
    print(f"{'type':>6} {'MiB read':>9} {'us':>9} {'GB/s':>8}")
    x = be.load_weight(TensorInfo("x", GGMLType.F32, (1, k),
                                  rng.standard_normal(k).astype(np.float32).view(np.uint8), ""))
    for t in types:
        if t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) and k % 256 and t.name.endswith(
                "K"):
            continue
        w = be.load_weight(_tensor("w", t, n, k, rng))
        prog = matmul_program(be, w, x, 1)
        mv = prog.dispatches[-len(w.handle.parts):]
        sec = timer.time(mv, repeat)
        nbytes = sum(array_sizes(t, n, k)) + 4 * (k + n)
        print(f"{type_name(t):>6} {nbytes / 2**20:9.1f} {sec * 1e6:9.1f} {nbytes / sec / 1e9:8.1f}")
        prog.release()


def mat_mat_dispatches(prog):
    """A mat-mat program's dispatches of the mat-mat itself: its parts, and the sum of the
    partial sums where K is split (not the get_rows that fills x)."""
    return [d for d in prog.dispatches if d[0].label.startswith("kernel_mul_mm")]


def bench_mul_mm(be, timer, types, n, k, m, rng, repeat):
    print(f"\nmat-mat y = x W^T, x {m} x {k}, W {n} x {k} (prefill)")
    print(f"{'type':>6} {'ms':>9} {'TFLOP/s':>8}")
    x = be.load_weight(TensorInfo("x", GGMLType.F32, (m, k), rng.standard_normal(
        (m, k)).astype(np.float32).view(np.uint8).reshape(-1), ""))
    for t in types:
        w = be.load_weight(_tensor("w", t, n, k, rng))
        g = Graph(m)
        g.output("y", g.matmul(g.get_rows(x, g.tokens), w))
        prog = be.compile(g)
        prog.run(np.arange(m, dtype=np.int32), 0)
        sec = timer.time(mat_mat_dispatches(prog), repeat)
        print(f"{type_name(t):>6} {sec * 1e3:9.2f} {2 * m * n * k / sec / 1e12:8.2f}")
        prog.release()


def bench_encode(be, rng, count=2000, timer=None):
    print("\nhost cost per dispatch")
    x = be.load_weight(TensorInfo("x", GGMLType.F32, (4, 64), rng.standard_normal(
        (4, 64)).astype(np.float32).view(np.uint8).reshape(-1), ""))
    g = Graph(1)
    h = g.get_rows(x, g.tokens)
    for _ in range(count):
        h = g.scale(h, 1.0)
    g.output("h", h)
    prog = be.compile(g)
    prog.run(np.zeros(1, np.int32), 0)
    d = prog.dispatches
    enc = be.device.create_command_encoder()
    cp = enc.begin_compute_pass()
    t0 = time.perf_counter()
    for p, bg, (gx, gy, gz) in d:
        cp.set_pipeline(p)
        cp.set_bind_group(0, bg)
        cp.dispatch_workgroups(gx, gy, gz)
    t1 = time.perf_counter()
    cp.end()
    cb = enc.finish()
    t2 = time.perf_counter()
    be.queue.submit([cb])
    print(f"  record: {(t1 - t0) / len(d) * 1e6:.2f} us, finish: {(t2 - t1) / len(d) * 1e6:.2f} us"
          f" (of {len(d)} dispatches)")
    t0 = time.perf_counter()
    runs = 5
    for _ in range(runs):
        prog.run(np.zeros(1, np.int32), 0)
    per = (time.perf_counter() - t0) / runs / len(d)
    print(f"  Program.run (record + submit + GPU + read back), per dispatch: {per * 1e6:.2f} us")
    if timer is not None and timer.gpu:
        # each scale reads the previous one's output: a barrier between every two dispatches
        print(f"  GPU time per dispatch of a dependent chain of one-workgroup kernels: "
              f"{timer.time(d, 1) / len(d) * 1e6:.2f} us")
    prog.release()


def kernel_profile(be, prog, label: str) -> None:
    """GPU time of each dispatch of a compiled program (each in its own timestamped pass, so the
    sum is a little above one pass's time), summed per kernel."""
    d = prog.dispatches
    qs = be.device.create_query_set(type="timestamp", count=2 * len(d))
    res = be.device.create_buffer(size=16 * len(d), usage="QUERY_RESOLVE|COPY_SRC")
    for _ in range(2):  # the first round brings the clocks up
        enc = be.device.create_command_encoder()
        for i, (p, bg, (x, y, z)) in enumerate(d):
            cp = enc.begin_compute_pass(timestamp_writes={
                "query_set": qs, "beginning_of_pass_write_index": 2 * i,
                "end_of_pass_write_index": 2 * i + 1})
            cp.set_pipeline(p)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(x, y, z)
            cp.end()
        enc.resolve_query_set(qs, 0, 2 * len(d), res, 0)
        be.queue.submit([enc.finish()])
        ts = np.frombuffer(be.queue.read_buffer(res), np.uint64).reshape(-1, 2)
    dt = (ts[:, 1] - ts[:, 0]).astype(np.float64) * 1e-3
    agg = collections.defaultdict(lambda: [0, 0.0])
    for (p, _, _), t in zip(d, dt):
        agg[p.label][0] += 1
        agg[p.label][1] += t
    print(f"\n{label}: {len(d)} dispatches, GPU {dt.sum():.0f} us")
    for name, (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:34s} {n:4d} {t:9.1f} us")


def step_ablation(be, prog, label: str, repeat: int = 10) -> None:
    """GPU time of a step in one pass (as it runs), and without each kernel's dispatches: the
    difference is what that kernel costs in the stream, its waits on the others included
    (results are wrong on purpose; only the time counts)."""
    timer = Timer(be)
    d = prog.dispatches
    full = timer.time(d, repeat)
    print(f"\n{label}: {len(d)} dispatches, GPU {full * 1e6:.0f} us in one pass; without:")
    for name in sorted({p.label for p, _, _ in d}):
        rest = [x for x in d if x[0].label != name]
        n = len(d) - len(rest)
        print(f"  {name:34s} {n:4d} {(full - timer.time(rest, repeat)) * 1e6:9.1f} us")


def bench_model(path: str, disable: set[str], prompt: int = 512) -> None:
    """Per-kernel GPU time of a decode step (at position 64) and of a prompt of `prompt`
    tokens, and the wall time of Program.run for both."""
    from fastllm import Model

    m = Model.load(path, backend=WebGPUBackend(disable=disable), n_ctx=max(2048, 2 * prompt))
    print(m.backend.describe(), m)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.n_vocab, prompt).astype(np.int32)
    pre = m._program(prompt, False)
    pre.run(ids, 0)
    t0 = time.perf_counter()
    pre.run(ids, 0)
    print(f"prefill {prompt}: Program.run {(time.perf_counter() - t0) * 1e3:.1f} ms")
    kernel_profile(m.backend, pre, f"prefill {prompt}")
    dec = m._program(1, False)
    for i in range(8):
        dec.run(ids[i:i + 1], 64 + i)
    t0 = time.perf_counter()
    for i in range(32):
        dec.run(ids[i:i + 1], 64 + i)
    print(f"\ndecode: Program.run {(time.perf_counter() - t0) / 32 * 1e3:.2f} ms")
    kernel_profile(m.backend, dec, "decode")
    step_ablation(m.backend, dec, "decode")
    m.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="rows of W")
    ap.add_argument("--k", type=int, default=4096, help="row length")
    ap.add_argument("--mm", type=int, default=0, help="also time mat-mat with this many tokens")
    ap.add_argument("--types", default="", help="comma-separated, e.g. q4_K,q8_0 (default: all)")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--disable", default="", help="features to leave off, e.g. subgroup")
    ap.add_argument("--model", default="", help="a GGUF file: per-kernel time of its steps")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="override a matmul_shapes constant (e.g. MM8_MIN_WG=128), repeatable")
    a = ap.parse_args(argv)
    from fastllm.backends.webgpu import matmul_shapes as wp

    for kv in a.set:
        name, value = kv.split("=")
        if not hasattr(wp, name):
            raise SystemExit(f"webgpu matmul_shapes has no constant {name}")
        setattr(wp, name, int(value))
    disable = {f for f in a.disable.split(",") if f}
    if a.model:
        bench_model(a.model, disable)
        return
    be = WebGPUBackend(disable=disable)
    print(be.describe())
    names = {type_name(t): t for t in SUPPORTED_TYPES}
    types = [names[s] for s in a.types.split(",")] if a.types else list(SUPPORTED_TYPES)
    rng = np.random.default_rng(0)
    timer = Timer(be)
    bench_mul_mv(be, timer, types, a.n, a.k, rng, a.repeat)
    if a.mm:
        bench_mul_mm(be, timer, types, a.n, a.k, a.mm, rng, max(1, a.repeat // 10))
    bench_encode(be, rng, timer=timer)
    be.close()


if __name__ == "__main__":
    main()
