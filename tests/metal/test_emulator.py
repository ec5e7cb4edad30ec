"""The MSL emulator's own test suite (tools/mslemu/tests: scheduling, races, divergence, guard
pages, function constants, templates, simdgroup_matrix, the lint), run as part of the project's
tests because every other Metal test on Linux trusts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from metal_env import emulator_available

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not emulator_available(), reason="needs Linux and clang++-16")
def test_mslemu_suite():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(ROOT / "tools" / "mslemu" / "tests")], capture_output=True, text=True,
                       cwd=ROOT / "tools" / "mslemu", check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]
