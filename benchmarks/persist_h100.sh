#!/bin/bash
# The persistent decode step (backends/webgpu/persist.py) against the ordinary dispatches on the
# NVIDIA H100: tg128 greedy and sampled (`fastllm bench -p 0 -n 128 --sampled`) for the 1B
# Q4_K_M / Q8_0 and 8B Q4_K_M / F16 shapes, each model first with FASTLLM_WEBGPU_PERSISTENT=0
# and then on by default (the probe and the first call's check against the ordinary path
# decide; bench's stderr line "decode path ..." says which ran and on what grid), then over
# the grids in GRIDS. Carry .gpu and .peer (../shared/bench/README.md), run from the root.
set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
V=.peer/ggml-vocab-llama-bpe.gguf
GRIDS=${GRIDS:-"264 528 1056 2112"}
make() {  # shape type name
  [ -f /tmp/$3.gguf ] || python3 .peer/make_random_gguf.py --shape $1 --type $2 --vocab $V \
    --out /tmp/$3.gguf > /dev/null
}
make llama-3.2-1b q4_k_m 1b-q4km
make llama-3.2-1b q8_0 1b-q8
make llama-3.1-8b q4_k_m 8b-q4km
make llama-3.1-8b f16 8b-f16
echo "== the probe (two launches of a ring of hand-offs) per grid"
python3 - <<'PY'
import time
from fastllm.backends.webgpu import WebGPUBackend, persist
be = WebGPUBackend()
for g in (132, 264, 528, 1056, 2112, 4224, 8448):
    t = time.perf_counter()
    why = persist.probe(be, g, persist.SPIN_DEFAULT)
    print(f"grid {g}: {why or 'passed'} ({time.perf_counter() - t:.2f} s)")
be.close()
PY
bench() {
  taskset -c 0-3 python3 -m fastllm.cli bench -m /tmp/$1.gguf --backend webgpu -p 0 -n 128 \
    --sampled -r 3 2>&1 | grep -E '^\| |decode path'
}
for m in ${MODELS:-1b-q4km 1b-q8 8b-q4km 8b-f16}; do
  echo "== $m: ordinary"
  FASTLLM_WEBGPU_PERSISTENT=0 bench $m
  echo "== $m: persistent (default grid)"
  FASTLLM_WEBGPU_PERSISTENT=1 bench $m
  echo "== $m: persistent, argmax, attention and quantize_x at 64 (one launch a step; not bit-exact)"
  FASTLLM_WEBGPU_PERSISTENT=1 FASTLLM_WEBGPU_PERSISTENT_RESIZE=all bench $m
  echo "== $m: persistent, at most 12 dispatches a launch (about two layers)"
  FASTLLM_WEBGPU_PERSISTENT=1 FASTLLM_WEBGPU_PERSISTENT_PHASES=12 bench $m
  for g in $GRIDS; do
    echo "== $m: persistent, grid $g"
    FASTLLM_WEBGPU_PERSISTENT=1 FASTLLM_WEBGPU_PERSISTENT_GRID=$g bench $m
  done
done
