"""WebGPU decode speed of a GGUF model, per decode path, as tg<N> tok/s (plus pp<P> once):

    python benchmarks/bench_webgpu_decode.py --model model.gguf [-p 512] [-n 128] [-r 3]

Paths: `logits` is Model.decode per token (the step's logits read back, then the next step
encoded: host and GPU take turns), with fused kernels off and on; `greedy` is
Program.run_greedy (argmax on the device feeding the next step, read back once at the end, so
the host encodes step i + 1 while the GPU runs step i). `encode` is the host time to record one
step's dispatches, `submit` that plus finishing and submitting the command buffer (the host's
whole share of a greedy step), `gpu step` the GPU's time for one step's dispatches in a pass
of 20 steps (timestamp queries): greedy decoding runs at about the larger of the two.
Reports the median of -r runs and their spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import bench_webgpu_ops as bo

from fastllm import Model
from fastllm.backends.webgpu import WebGPUBackend


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} tok/s (min {min(xs):.1f}, max {max(xs):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("-p", type=int, default=512, help="0: no prefill timing")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--no-unfused", action="store_true", help="skip the fuse=False run")
    ap.add_argument("--mv", default="", help="mat-vec shape R,TPR,UNR,WG instead of the defaults")
    a = ap.parse_args()
    if a.mv:
        from fastllm.backends.webgpu import matmul_shapes as wp

        wp.MV_FIXED = tuple(int(v) for v in a.mv.split(","))
    rng = np.random.default_rng(0)
    for fuse in ([False, True] if not a.no_unfused else [True]):
        be = WebGPUBackend(fuse=fuse)
        with Model.load(a.model, backend=be, n_ctx=a.p + a.n + 8) as m:
            prog = m._program(1, False)
            print(f"{Path(a.model).name} fuse={fuse}: {len(prog.dispatches)} dispatches/step, "
                  f"{be.describe()}", flush=True)
            if fuse and a.p:
                ids = rng.integers(0, m.n_vocab, a.p).tolist()
                m.prefill(ids)  # compiles the pipelines
                pp = []
                for _ in range(a.r):
                    m.prefill([ids[0] ^ 1] + ids[1:])  # a new first token: nothing reused
                    t0 = time.perf_counter()
                    m.prefill(ids)
                    pp.append(a.p / (time.perf_counter() - t0))
                print(f"  pp{a.p}: {_stats(pp)}", flush=True)
            bos = m.tokenizer.bos_id or 0
            tg = []
            for _ in range(a.r + 1):  # the first run warms up
                m.prefill([bos])
                t0 = time.perf_counter()
                for t in rng.integers(0, m.n_vocab, a.n):
                    m.decode(int(t))
                tg.append(a.n / (time.perf_counter() - t0))
            print(f"  tg{a.n} logits: {_stats(tg[1:])}", flush=True)
            enc = []
            for _ in range(50):
                e = be.device.create_command_encoder()
                t0 = time.perf_counter()
                prog._record(e, prog._raw, prog.dispatches)
                enc.append(time.perf_counter() - t0)
                e.finish()
            print(f"  encode: {1e6 * statistics.median(enc):.0f} us/step", flush=True)
            sub = []
            for _ in range(50):
                t0 = time.perf_counter()
                e = be.device.create_command_encoder()
                prog._record(e, prog._raw, prog.dispatches)
                be.queue.submit([e.finish()])
                sub.append(time.perf_counter() - t0)
            be.queue.read_buffer(prog.tokens)  # waits for them
            print(f"  submit: {1e6 * statistics.median(sub):.0f} us/step", flush=True)
            timer = bo.Timer(be)
            if timer.gpu:
                print(f"  gpu step: {1e6 * timer.time(prog.dispatches, 20):.0f} us", flush=True)
            if fuse:
                tg = []
                for _ in range(a.r + 1):
                    m.prefill([bos])
                    t0 = time.perf_counter()
                    prog.run_greedy(a.n, bos, 1)
                    tg.append(a.n / (time.perf_counter() - t0))
                print(f"  tg{a.n} greedy: {_stats(tg[1:])}", flush=True)
        be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
