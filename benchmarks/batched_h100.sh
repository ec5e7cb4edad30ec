#!/bin/bash
# Batched decode on the NVIDIA H100 beside llama.cpp CUDA's llama-batched-bench, in one device
# call (../shared/bench/README.md, "Same-run peers"): carry .gpu and .peer, run from the root.
# fastllm runs pinned to cores 0-3 while llama.cpp builds on cores 4-15; the peers run after.
set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
bash .peer/peer-build.sh > "$out/peer-build.log" 2>&1 &
build=$!
V=.peer/ggml-vocab-llama-bpe.gguf
python3 .peer/make_random_gguf.py --shape llama-3.2-1b --type q4_k_m --vocab $V --out /tmp/1b.gguf > /dev/null
python3 .peer/make_random_gguf.py --shape llama-3.1-8b --type q4_k_m --vocab $V --out /tmp/8b.gguf > /dev/null
for m in 1b 8b; do
  echo "== fastllm $m Q4_K_M: tg128 on the one-sequence path, then --parallel"
  taskset -c 0-3 python3 -m fastllm.cli bench -m /tmp/$m.gguf --backend webgpu -p 0 -n 128 -r 3 -q 2>&1
  taskset -c 0-3 python3 -m fastllm.cli bench -m /tmp/$m.gguf --backend webgpu --parallel ${PARALLEL:-1,4,8,16,32} -p 128 -n 128 -r 1 -q 2>&1
done
wait $build
for m in 1b 8b; do
  echo "== llama.cpp CUDA llama-batched-bench $m Q4_K_M"
  /tmp/lc/b/bin/llama-batched-bench -m /tmp/$m.gguf -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 \
    -npl 1,4,8,16,32 -ngl 99 -fa on 2>&1 | grep -E '^\|'
done
