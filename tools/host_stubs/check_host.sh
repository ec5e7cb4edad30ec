#!/bin/sh
# Type-check the native layer on Linux, where no Metal SDK exists: csrc/metal_runtime.mm against
# the stub headers here (each declaration cites its Apple documentation page), csrc/bindings.cpp
# as plain C++ with pybind11. -fsyntax-only: nothing links or runs.
#
#   tools/host_stubs/check_host.sh [file ...]        (default: csrc/metal_runtime.mm csrc/bindings.cpp)
#
# Objective-C++ files are checked twice:
#   gnustep  GNUstep's real Foundation headers + the Metal stub, manual retain/release (Debian's
#            GNUstep runs on GCC's libobjc, which has no ARC)
#   arc      the ARC Foundation stub + the Metal stub, -fobjc-arc as the macOS build uses
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CXX=${CXX:-clang++-16}
PY=${PYTHON:-python3}
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
PBINC=$($PY -c "import pybind11; print(pybind11.get_include())")
GCCINC=$(gcc -print-file-name=include 2>/dev/null || echo /usr/lib/gcc/x86_64-linux-gnu/12/include)
COMMON="-std=c++17 -fsyntax-only -Wall -Wextra -Werror -Werror=objc-method-access -I$ROOT/csrc -I$ROOT/metal -I$PYINC -I$PBINC"
[ $# -gt 0 ] || set -- "$ROOT/csrc/metal_runtime.mm" "$ROOT/csrc/bindings.cpp"
for f in "$@"; do
  case "$f" in
  *.mm)
    $CXX -x objective-c++ $COMMON -fblocks -fobjc-exceptions -fexceptions \
      -fobjc-runtime=gcc -DGNUSTEP -DGNUSTEP_BASE_LIBRARY=1 -DGNU_RUNTIME=1 \
      -fconstant-string-class=NSConstantString -Wno-unused-parameter \
      -I"$HERE" -I"$HERE/gnustep" -I/usr/include/GNUstep -I"$GCCINC" "$f"
    echo "$f: OK (gnustep)"
    $CXX -x objective-c++ $COMMON -fblocks -fobjc-arc -fobjc-runtime=gnustep-2.0 \
      -I"$HERE" -I"$HERE/arc" "$f"
    echo "$f: OK (arc)"
    ;;
  *)
    $CXX -x c++ $COMMON "$f"
    echo "$f: OK (c++)"
    ;;
  esac
done
