#!/bin/bash
# Constrained decoding on the NVIDIA H100 (issue 24): a 1B Q4_K_M random-weight model in
# Llama 3.2's shape with Llama 3's vocabulary (make_random_gguf.py), through WebGPU on Vulkan:
# tokens/s free and under a JSON schema (one request; a batch with one constrained row beside
# free ones; all constrained), and the mask's per-token cost (llguidance on the host; upload and
# apply on the device: a batched step with and without masks). Target: constrained decoding at
# least 60% of free decoding. Carry .gpu and .peer (../shared/bench/README.md), run from the
# root; fastllm is pinned to cores 0-3 as in batched_h100.sh. The GPU machine reaches no
# registry: before the run, put llguidance's wheel beside the others in .gpu/whl (env.sh
# installs them all):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_31_x86_64 \
#     -d .gpu/whl 'llguidance>=1.7'

set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
python3 -c "from importlib.metadata import version; print('llguidance', version('llguidance'))" \
  || { echo "llguidance is not in .gpu/whl (see the head of this script)"; exit 1; }
V=.peer/ggml-vocab-llama-bpe.gguf
python3 .peer/make_random_gguf.py --shape llama-3.2-1b --type q4_k_m --vocab $V --out /tmp/1b.gguf > /dev/null
for b in ${BATCH:-8 32}; do
  echo "== fastllm 1B Q4_K_M, constrained beside free, B=$b"
  taskset -c 0-3 python3 benchmarks/bench_constrained.py -m /tmp/1b.gguf --backend webgpu \
    -n ${N:-128} -b $b -r 3 2>&1 | tee -a "$out/constrained.txt"
done
