"""What the Metal tests run on: the MSL emulator (Linux with clang-16) and, where the extension
is built (macOS arm64), the real device.

Not a conftest.py: the project's tests import tests/conftest.py as `conftest`, and a second
module of that name here would shadow it."""

from __future__ import annotations

import os
import platform
import shutil
import sys

import pytest

POLICIES = ("forward", "reverse", "random")


def emulator_available() -> bool:
    cxx = os.environ.get("MSLEMU_CXX", "clang++-16")
    return sys.platform == "linux" and shutil.which(cxx) is not None


def native_available() -> bool:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return False
    try:
        from fastllm import _metal  # noqa: F401
    except ImportError:
        return False
    return True


def make_runtime(kind: str, policy: str = "forward", seed: int = 0):
    """A runtime of backends/metal/runtime.py: "emu" (CPU emulator) or "native" (fastllm._metal)."""
    if kind == "emu":
        if not emulator_available():
            pytest.skip("MSL emulator needs Linux and clang++-16")
        from mslemu_runtime import EmuRuntime

        return EmuRuntime(policy=policy, seed=seed)
    if not native_available():
        pytest.skip("fastllm._metal is built only on macOS arm64")
    from native_probe import cached

    from fastllm.backends.metal.runtime import _NativeRuntime

    rt = _NativeRuntime()
    # numeric checks need a device that computes SIMD-group work right (native_probe.py), not
    # one that merely reports a GPU family
    reason = cached(rt.dev)
    if reason is not None:
        pytest.skip(f"{rt.name} fails the capability probe, numeric checks skipped: {reason}")
    return rt


RUNTIMES = ["emu", "native"]

