"""Run `fastllm bench` over a matrix of model shapes and types and write a results table with the
machine, date and commit.

Models are random-weight GGUFs in real shapes, written by a `make_random_gguf.py` (the project's
test-data folder has one: bench/make_random_gguf.py) with a real tokenizer from a vocab GGUF:

    python benchmarks/run_matrix.py --make ../shared/bench/make_random_gguf.py \
        --vocab ../shared/vocab/ggml-vocab-llama-bpe.gguf --models /tmp/models \
        --matrix llama-3.2-1b:q4_k_m llama-3.2-1b:q8_0 --backend webgpu --out results.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def adapter_name(backend: str) -> str:
    if backend != "webgpu":
        return platform.processor() or platform.machine()
    try:
        import wgpu

        a = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        return f"{a.info['device']} ({a.info['backend_type']})"
    except Exception as e:  # noqa: BLE001 (the table still records that no adapter was found)
        return f"no adapter ({e})"


def commit() -> str:
    if os.environ.get("FASTLLM_COMMIT"):  # a copy of the tree without .git (a remote machine)
        return os.environ["FASTLLM_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent,
                              check=False).stdout.strip() or "?"
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--make", required=True, help="path of make_random_gguf.py")
    ap.add_argument("--vocab", required=True, help="vocab GGUF whose tokenizer the models copy")
    ap.add_argument("--models", default="/tmp/fastllm-bench-models")
    ap.add_argument("--matrix", nargs="+", default=["llama-3.2-1b:q4_k_m", "llama-3.2-1b:q8_0"],
                    help="shape:type pairs")
    ap.add_argument("--backend", default="webgpu")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    a = ap.parse_args()
    models = Path(a.models)
    models.mkdir(parents=True, exist_ok=True)
    lines = [(f"machine: {adapter_name(a.backend)}; host {platform.node()} "
              f"({os.cpu_count()} cores); date {dt.date.today()}; commit {commit()}"), "",
             "| model | size | backend | test | t/s |", "| --- | ---: | --- | --- | ---: |"]
    for item in a.matrix:
        shape, qtype = item.split(":")
        path = models / f"{shape}-{qtype}.gguf"
        if not path.exists():
            t0 = time.time()
            subprocess.run([sys.executable, a.make, "--shape", shape, "--type", qtype, "--vocab",
                            a.vocab, "--out", str(path)], check=True)
            print(f"wrote {path} in {time.time() - t0:.1f} s", file=sys.stderr)
        r = subprocess.run([sys.executable, "-m", "fastllm.cli", "bench", "-m", str(path),
                            "-p", str(a.p), "-n", str(a.n), "-r", str(a.r),
                            "--backend", a.backend], capture_output=True, text=True, check=False)
        sys.stderr.write(r.stderr[-2000:])
        rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "---" not in ln
                and not ln.startswith("| model")]
        lines += rows or [f"| {path.name} | | {a.backend} | failed (rc {r.returncode}) | |"]
        print("\n".join(rows), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
