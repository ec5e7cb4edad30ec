#!/bin/bash
# `fastllm serve` beside llama.cpp's llama-server on the NVIDIA H100, in one device call
# (../shared/bench/README.md, "Same-run peers"): carry .gpu and .peer, run from the root.
#
# Both servers get the same load from benchmarks/serve_load.py on loopback: N concurrent
# streaming /v1/completions clients (N = 1, 8, 32), each sending REQUESTS requests of a
# ~100-token prompt (75 words, distinct per request) and 128 generated tokens at temperature 0;
# reported: aggregate generated tok/s and time to first token. Each server's first pass is a
# warm-up burst of 32 requests (pipelines and batch shapes built), not counted.
# fastllm: -np 32 slots of 512 tokens; llama-server: -np 32 -c 16384 (512 a slot), flash
# attention, all layers on the GPU, ignore_eos so every request runs its 128 tokens (fastllm
# has no such switch: its token counts are what it generated, from the usage chunk).
# Placement: each server on cores 0-2 and the load generator on core 3, for both servers;
# llama.cpp builds on cores 4-15 while fastllm runs, and llama-server runs after the build.
set -u
export PYTHONUNBUFFERED=1
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/peer_lc.sh  # llama.cpp CUDA, built in the background unless there
V=.peer/ggml-vocab-llama-bpe.gguf
MODELS=${MODELS:-1b 8b}
for m in $MODELS; do
  shape=$([ "$m" = 1b ] && echo llama-3.2-1b || echo llama-3.1-8b)
  python3 .peer/make_random_gguf.py --shape $shape --type q4_k_m --vocab $V --out /tmp/$m.gguf > /dev/null
done
LOAD=(taskset -c 3 python3 benchmarks/serve_load.py --clients "${CLIENTS:-1,8,32}"
      --requests "${REQUESTS:-2}" --max-tokens 128 --prompt-words 75 --warmup 32)

wait_ready() {  # $1: base URL, $2: server pid; /health is 503 while the model loads
  python3 - "$1" "$2" <<'EOF'
import os, sys, time, urllib.request
for _ in range(1200):
    try:
        if urllib.request.urlopen(sys.argv[1] + "/health", timeout=5).status == 200:
            sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(int(sys.argv[2]), 0)
    except OSError:
        sys.exit("the server exited")
    time.sleep(0.5)
sys.exit("the server never became ready")
EOF
}

for m in $MODELS; do
  echo "== fastllm serve, $m Q4_K_M (WebGPU)"
  taskset -c 0-2 python3 -m fastllm.cli serve -m /tmp/$m.gguf --backend webgpu -np 32 -c 512 \
    --port 8090 -q > "$out/fastllm-serve-$m.log" 2>&1 &
  srv=$!
  if wait_ready http://127.0.0.1:8090 $srv; then
    "${LOAD[@]}" --url http://127.0.0.1:8090 --label "fastllm $m" --json "$out/fastllm-$m.json"
    curl -s http://127.0.0.1:8090/metrics > "$out/fastllm-metrics-$m.txt" 2>/dev/null
  else
    tail -5 "$out/fastllm-serve-$m.log"
  fi
  kill -INT $srv; wait $srv
done

lc_wait
for m in $MODELS; do
  echo "== llama.cpp CUDA llama-server, $m Q4_K_M"
  taskset -c 0-2 /tmp/lc/b/bin/llama-server -m /tmp/$m.gguf -ngl 99 -fa on -np 32 -c 16384 \
    --host 127.0.0.1 --port 8091 > "$out/llama-server-$m.log" 2>&1 &
  srv=$!
  if wait_ready http://127.0.0.1:8091 $srv; then
    "${LOAD[@]}" --url http://127.0.0.1:8091 --label "llama $m" --extra '{"ignore_eos": true}' \
      --json "$out/llama-server-$m.json"
  else
    tail -5 "$out/llama-server-$m.log"
  fi
  kill -INT $srv; wait $srv
done
