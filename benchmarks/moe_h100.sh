#!/bin/bash
# Qwen3-30B-A3B's shape (random weights, llama.cpp's Q4_K_M mix; make_moe_gguf.py) on the NVIDIA
# H100: fastllm WebGPU beside llama.cpp CUDA's llama-bench in one device call
# (../shared/bench/README.md, "Same-run peers"): carry .gpu and .peer, run from the root, with
# the Qwen2 vocabulary copied beside the peer's first (cp ../shared/vocab/ggml-vocab-qwen2.gguf
# .peer/). LAYERS (default 48, the whole 17.3 GiB model) writes fewer layers of the real width
# where the whole does not fit the call. fastllm runs pinned to cores 0-3 while llama.cpp builds
# on cores 4-15; the peer runs after. make_moe_gguf.py prints the bytes of weights a decode step
# reads (the chosen experts only): over the measured tokens/s, the share of the bandwidth floor.
set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
bash .peer/peer-build.sh > "$out/peer-build.log" 2>&1 &
build=$!
M=/tmp/q30b.gguf
taskset -c 0-3 python3 benchmarks/make_moe_gguf.py --layers "${LAYERS:-48}" \
  --vocab "${VOCAB:-.peer/ggml-vocab-qwen2.gguf}" --out $M
echo "== fastllm WebGPU: pp512 and tg128"
taskset -c 0-3 python3 -m fastllm.cli bench -m $M --backend webgpu -p 512 -n 128 -r 3 2>&1
wait $build
echo "== llama.cpp CUDA llama-bench"
/tmp/lc/b/bin/llama-bench -m $M -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E '^\|'
