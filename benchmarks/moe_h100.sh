#!/bin/bash
# Mixture-of-experts and hybrid models on the NVIDIA H100 beside llama.cpp CUDA, in one device
# call of at most 10 minutes (../shared/bench/README.md, "Same-run peers"): carry .gpu and .peer,
# run from the root. Random weights in real shapes (benchmarks/make_moe_gguf.py), the first layers
# of the real width so that writing, both benches and the peer build fit the call:
#   q30b   Qwen3-30B-A3B Q4_K_M, 12 of 48 layers (4.72 GiB; a decode step reads 647 MiB)
#   goss   gpt-oss-20b MXFP4_MOE, 8 of 24 layers (4.52 GiB; 1,210 MiB, half of it the output)
#   q35moe Qwen3.5-35B-A3B-shape Q4_K_M, 8 of 40 layers (4.60 GiB; 705 MiB + 25 MiB of state)
#   q35d   Qwen3.5-9B-shape Q4_K_M, all 32 layers (5.23 GiB; 4,812 MiB + 100 MiB of state)
# (whole models: 17.28, 11.27, 19.70 and 5.23 GiB, the sizes of the published files.)
# The four files are written at once, one per core 0-3, while llama.cpp builds on cores 4-15;
# then fastllm (pinned to cores 0-3) benches each, then llama-bench each once the build is done;
# last, benchmarks/moe_decode_bytes.py prints per model the bytes a decode step reads (active
# experts only), the share of the 2.8-3.3 TB/s floor each side reaches and the speed ratios.
# MODELS="q30b goss" picks some; LAYERS_q30b=6 etc. change a layer count; WRITER_ARGS=--scale-down
# makes a quick dry run. Every step has its own
# timeout and one model failing leaves the others running. Results: $OUT/summary.txt, logs beside.
set -u
export PYTHONUNBUFFERED=1
t0=$SECONDS
BUDGET=${BUDGET:-570}  # seconds this script may take in all (the call's limit is 600)
source .gpu/env.sh
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/peer_lc.sh  # llama.cpp CUDA, built in the background unless there
V=.peer/ggml-vocab-llama-bpe.gguf
MODELS=${MODELS:-q30b goss q35moe q35d}
declare -A SHAPE=([q30b]=qwen3-30b-a3b [goss]=gpt-oss-20b [q35moe]=qwen35-moe [q35d]=qwen35-dense)
declare -A LAYERS=([q30b]=${LAYERS_q30b:-12} [goss]=${LAYERS_goss:-8} [q35moe]=${LAYERS_q35moe:-8}
                   [q35d]=${LAYERS_q35d:-32})

left() { echo $(( BUDGET - (SECONDS - t0) )); }
# a step's timeout: at most CAP seconds, and no more than an even share of what is left for the
# N steps still to come (so that a hanging model cannot eat the others' time)
share() { local cap=$1 n=$2 l; l=$(left); l=$(( l / n )); (( l < cap )) && cap=$l; (( cap < 5 )) && cap=5; echo $cap; }

echo "== writing: $MODELS ($(date -u +%T))"
core=0; writers=()
for m in $MODELS; do
  ( s=$SECONDS; taskset -c $core timeout 240 python3 benchmarks/make_moe_gguf.py \
      --shape ${SHAPE[$m]} --layers ${LAYERS[$m]} --vocab $V --out /tmp/$m.gguf ${WRITER_ARGS:-} \
      > "$out/write-$m.log" 2>&1
    echo "rc=$? in $(( SECONDS - s )) s" >> "$out/write-$m.log" ) &
  writers+=($!); core=$(( (core + 1) % 4 ))
done
wait "${writers[@]}"
for m in $MODELS; do cat "$out/write-$m.log"; done
echo "== files written after $(( SECONDS - t0 )) s"

n=$(echo $MODELS | wc -w)
for m in $MODELS; do
  [ -s /tmp/$m.gguf ] || { echo "== fastllm $m: no file"; n=$((n - 1)); continue; }
  # keep ~150 s back for the llama.cpp runs after the build
  to=$(BUDGET=$(( BUDGET - 150 )) share 150 $n)
  echo "== fastllm WebGPU $m (${SHAPE[$m]}, ${LAYERS[$m]} layers; timeout $to s, at $(( SECONDS - t0 )) s)"
  taskset -c 0-3 timeout $to python3 -m fastllm.cli bench -m /tmp/$m.gguf --backend webgpu \
    -p 512 -n 128 -r 2 > "$out/fastllm-$m.txt" 2> "$out/fastllm-$m.err"
  echo "rc=$?"; cat "$out/fastllm-$m.txt"; tail -n 3 "$out/fastllm-$m.err"
  n=$((n - 1))
done

summary() {  # $1: also llama.cpp's results
  for m in $MODELS; do
    [ -s /tmp/$m.gguf ] && python3 benchmarks/moe_decode_bytes.py /tmp/$m.gguf \
      --fastllm "$out/fastllm-$m.txt" ${1:+--llama "$out/llama-$m.txt"} 2>&1
  done
}
summary > "$out/summary-fastllm.txt"  # kept should the build outlast the call

echo "== waiting for the llama.cpp build (at $(( SECONDS - t0 )) s)"
lc_wait $(( $(left) - 40 )) || echo "no llama.cpp results this time ($(( SECONDS - t0 )) s)"
cp /tmp/lc/build.log "$out/llama-build.log" 2>/dev/null
n=$(echo $MODELS | wc -w)
for m in $MODELS; do
  if [ -x /tmp/lc/b/bin/llama-bench ] && [ -s /tmp/$m.gguf ]; then
    to=$(share 90 $n)
    echo "== llama.cpp CUDA $m (timeout $to s, at $(( SECONDS - t0 )) s)"
    timeout $to /tmp/lc/b/bin/llama-bench -m /tmp/$m.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 2 \
      > "$out/llama-$m.txt" 2> "$out/llama-$m.err"
    echo "rc=$?"; grep -E '^\|' "$out/llama-$m.txt"; grep -iE 'error|fail' "$out/llama-$m.err" | tail -n 3
  fi
  n=$((n - 1))
done

echo "== summary (after $(( SECONDS - t0 )) s)"
summary llama | tee "$out/summary.txt"
