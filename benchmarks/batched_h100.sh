#!/bin/bash
# Batched decode on the NVIDIA H100 beside llama.cpp CUDA's llama-batched-bench, in one device
# call (../shared/bench/README.md, "Same-run peers"): carry .gpu and .peer, run from the root.
# fastllm runs pinned to cores 0-3 while llama.cpp builds on cores 4-15; the peers run after.
# Besides the default table: the batched step with its fusions off (matmul_shapes.ROWS_FUSE) and
# with the integer mat-vec past 8 rows (MVQ_ROWS_MAX, and 16 token rows a workgroup:
# MVQ_ROWS_C), and the GPU time of one batched step at
# each B (benchmarks/step_edits.py --rows), so the host's share of a step shows.
# MODELS="1b" picks some; VARIANTS=0 skips the variant rows.
set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$SECONDS
source benchmarks/peer_lc.sh  # llama.cpp CUDA, built in the background unless there
V=.peer/ggml-vocab-llama-bpe.gguf
MODELS=${MODELS:-1b 8b}
for m in $MODELS; do
  shape=$([ "$m" = 1b ] && echo llama-3.2-1b || echo llama-3.1-8b)
  [ -s /tmp/$m.gguf ] || taskset -c 0-3 python3 .peer/make_random_gguf.py --shape $shape \
    --type q4_k_m --vocab $V --out /tmp/$m.gguf > /dev/null
done
echo "== files after $(( SECONDS - t0 )) s"
# fastllm's bench with module constants of matmul_shapes set first ($1: python statements)
with() {
  local set=$1; shift
  taskset -c 0-3 python3 -c "import sys
import fastllm.backends.webgpu.matmul_shapes as s
$set
from fastllm.cli import main
sys.exit(main(sys.argv[1:]))" "$@"
}
for m in $MODELS; do
  echo "== fastllm $m Q4_K_M: tg128 on the one-sequence path, then --parallel ($(( SECONDS - t0 )) s)"
  taskset -c 0-3 python3 -m fastllm.cli bench -m /tmp/$m.gguf --backend webgpu -p 0 -n 128 -r 3 -q 2>&1
  taskset -c 0-3 timeout 200 python3 -m fastllm.cli bench -m /tmp/$m.gguf --backend webgpu \
    --parallel ${PARALLEL:-1,4,8,16,32} -p 128 -n 128 -r 1 -q 2>&1 | tee "$out/fastllm-$m.txt"
  if [ "${VARIANTS:-1}" = 1 ]; then
    echo "== $m variants: rows fusions off (B = 1 on the rows step too), integer mat-vec to 32 rows"
    with "s.ROWS_FUSE = False" bench -m /tmp/$m.gguf --backend webgpu --parallel 1,4,8 \
      --rows-alone -p 128 -n 128 -r 1 -q 2>&1 | grep -E '^\| +[0-9]'
    with "s.MVQ_ROWS_MAX = 32" bench -m /tmp/$m.gguf --backend webgpu --parallel 1,16,32 \
      --rows-alone -p 128 -n 128 -r 1 -q 2>&1 | grep -E '^\| +[0-9]'
    echo "== $m variant: integer mat-vec to 32 rows, 16 token rows a workgroup"
    with "s.MVQ_ROWS_MAX = 32; s.MVQ_ROWS_C = 16" bench -m /tmp/$m.gguf --backend webgpu \
      --parallel 16,32 -p 128 -n 128 -r 1 -q 2>&1 | grep -E '^\| +[0-9]'
    echo "== $m GPU time of one step at position 192 ($(( SECONDS - t0 )) s)"
    taskset -c 0-3 timeout 120 python3 benchmarks/step_edits.py --model /tmp/$m.gguf --pos 192 \
      --rows 1,4,8,16,32 --summary 2>&1 | grep -E "dispatches|rror"
  fi
done
echo "== waiting for llama.cpp ($(( SECONDS - t0 )) s)"
lc_wait $(( ${BUDGET:-570} - 60 - (SECONDS - t0) )) || echo "no llama.cpp results this time"
for m in $MODELS; do
  echo "== llama.cpp CUDA llama-batched-bench $m Q4_K_M ($(( SECONDS - t0 )) s)"
  /tmp/lc/b/bin/llama-batched-bench -m /tmp/$m.gguf -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 \
    -npl ${PARALLEL:-1,4,8,16,32} -ngl 99 -fa on 2>&1 | grep -E '^\|' | tee "$out/llama-$m.txt"
done
echo "== end after $(( SECONDS - t0 )) s"
