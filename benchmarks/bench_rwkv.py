"""RWKV decode speed against context length: a recurrent model's per-token cost must not grow
with the tokens before it (its state has a fixed size), unlike a transformer's attention.

For each model, a context of N random bytes is prefilled, then D tokens are decoded one at a time
and timed (after one untimed warm-up token). Models are rwkv.cpp's tiny test models, converted
on the fly, or any rwkv6/rwkv7 GGUF given with --model.

    PYTHONPATH=python python3 benchmarks/bench_rwkv.py [--data ../shared/rwkv] [--backend reference]
        [--contexts 100 4000] [--decode 64] [--model extra.gguf ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TINY = ("tiny-rwkv-7v0-834K-FP32.bin", "tiny-rwkv-7v0-834K-Q5_1.bin",
        "tiny-rwkv-6v0-3m-Q5_1.bin")


def _load(path: str, backend: str, n_ctx: int):
    from fastllm import Model
    return Model.load(path, backend=backend, n_ctx=n_ctx)


def bench(path: str, backend: str, contexts: list[int], n_decode: int) -> list[tuple]:
    m = _load(path, backend, max(contexts) + n_decode + 2)
    rng = np.random.default_rng(0)
    rows = []
    for n in contexts:
        ids = [int(t) for t in rng.integers(0, m.n_vocab, size=n)]
        t0 = time.perf_counter()
        m.prefill(ids)  # not an extension of the previous context: starts from a zero state
        t_pre = time.perf_counter() - t0
        m.decode(int(rng.integers(0, m.n_vocab)))  # warm-up
        times = []
        for t in rng.integers(0, m.n_vocab, size=n_decode):
            t0 = time.perf_counter()
            m.decode(int(t))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append((os.path.basename(path), m.backend.describe(), n, n / t_pre, 1.0 / med,
                     med * 1e3))
    m.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = os.environ.get("FASTLLM_TEST_DATA")
    ap.add_argument("--data", default=str(Path(shared) / "rwkv") if shared else None,
                    help="folder of rwkv.cpp's tiny models (default $FASTLLM_TEST_DATA/rwkv)")
    ap.add_argument("--model", nargs="*", default=[], help="rwkv6/rwkv7 GGUF files to add")
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--contexts", nargs="+", type=int, default=[100, 4000])
    ap.add_argument("--decode", type=int, default=64, help="decoded tokens timed per context")
    a = ap.parse_args(argv)
    from fastllm.convert_rwkv import convert

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(a.model)
        if a.data:
            for name in TINY:
                src = Path(a.data) / name
                if src.exists():
                    dst = os.path.join(tmp, name.replace(".bin", ".gguf"))
                    convert(src, dst)
                    paths.append(dst)
        if not paths:
            print("bench_rwkv: no models (set FASTLLM_TEST_DATA or give --data / --model)",
                  file=sys.stderr)
            return 1
        for p in paths:
            rows += bench(p, a.backend, a.contexts, a.decode)
    print("| model | backend | context | prefill t/s | decode t/s | ms/token (median) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, be, n, pre, dec, ms in rows:
        print(f"| {name} | {be} | {n} | {pre:.1f} | {dec:.1f} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
