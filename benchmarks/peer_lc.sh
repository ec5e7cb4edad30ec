# Sourced by the *_h100.sh scripts: llama.cpp CUDA's binaries in /tmp/lc/b/bin for the same-run
# peers (../shared/bench/README.md). A call that follows another on the same warm machine finds
# them there, or in the git-ignored build/lc-bin where lc_keep left them (the binaries' run path
# is /tmp/lc/b/bin, so they are put back there); otherwise .peer/peer-build.sh starts in the
# background on cores 4-15 (about five minutes). lc_wait waits for it; lc_ready says whether the
# binaries are there.
lc_build=
if [ ! -x /tmp/lc/b/bin/llama-bench ] && [ -x build/lc-bin/llama-bench ]; then
  mkdir -p /tmp/lc/b && cp -r build/lc-bin /tmp/lc/b/bin
fi
if [ -x /tmp/lc/b/bin/llama-bench ]; then
  echo "llama.cpp binaries already built"
else
  bash .peer/peer-build.sh > "${out:-/tmp/out}/peer-build.log" 2>&1 &
  lc_build=$!
fi
lc_wait() {  # $1: seconds at most (default: as long as it takes)
  [ -n "$lc_build" ] || return 0
  local n=0
  while kill -0 $lc_build 2>/dev/null && { [ -z "${1:-}" ] || (( n < $1 )); }; do
    sleep 2; n=$(( n + 2 ))
  done
  if kill -0 $lc_build 2>/dev/null; then
    echo "llama.cpp build still running: stopped"; kill $lc_build; return 1
  fi
  wait $lc_build; echo "llama.cpp build rc=$?"; lc_build=
  lc_keep
}
lc_keep() { [ -x /tmp/lc/b/bin/llama-bench ] && rm -rf build/lc-bin && mkdir -p build && cp -r /tmp/lc/b/bin build/lc-bin; }
lc_ready() { [ -x /tmp/lc/b/bin/llama-bench ]; }
