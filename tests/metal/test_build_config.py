"""The macOS build's configuration, run on Linux with stand-ins for Apple's tools: the Metal
toolchain check of CMakeLists.txt (cmake/metal_toolchain.cmake in cmake's script mode, with a fake
xcrun) and the workflow step that downloads the Metal toolchain. The real tools run only in the
macOS job of .github/workflows/wheels.yml."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "cmake" / "metal_toolchain.cmake"
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
# cmake from the PATH, else from tools/check_ci_config.sh's venv (.ci/run runs that first)
CI_VENV = os.environ.get("FASTLLM_CI_VENV") or os.path.join(tempfile.gettempdir(),
                                                            "fastllm-ci-venv")
CMAKE = shutil.which("cmake") or shutil.which("cmake", path=os.path.join(CI_VENV, "bin"))
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="needs cmake (tools/check_ci_config.sh "
                                 "installs one)")

# xcrun as Xcode has it: `-f metal` finds the compiler; with FAKE_METAL=missing the compiler is
# Xcode 26's stub, which fails until the Metal Toolchain component is downloaded
FAKE_XCRUN = r"""#!/bin/sh
echo "xcrun $*" >> "$FAKE_LOG"
[ "$1" = -sdk ] && shift 2
tool=$1; shift
if [ "$tool" = -f ]; then echo "/Applications/Xcode.app/usr/bin/$1"; exit 0; fi
if [ "$tool" = metal ] && [ "$FAKE_METAL" = missing ] && [ ! -e "$FAKE_DIR/downloaded" ]; then
  echo "error: error: cannot execute tool 'metal' due to missing Metal Toolchain; use: xcodebuild -downloadComponent MetalToolchain" >&2
  exit 72
fi
if [ "$1" = --version ]; then echo "Apple metal version 32023.404"; exit 0; fi
while [ $# -gt 0 ]; do
  if [ "$1" = -o ]; then : > "$2"; fi
  shift
done
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "xcrun", FAKE_XCRUN)
    env = dict(os.environ, FAKE_LOG=str(tmp_path / "log"), FAKE_DIR=str(tmp_path))
    return bin_dir, env


def configure(tmp_path, env, *defs):
    """cmake -P of a script that runs fastllm_metal_toolchain as CMakeLists.txt does."""
    script = tmp_path / "driver.cmake"
    script.write_text(f'include("{MODULE}")\n'
                      f'fastllm_metal_toolchain(flags "{tmp_path / "probe"}")\n'
                      'message(STATUS "FLAGS=${flags}")\n')
    return subprocess.run([CMAKE, f"-DXCRUN={tmp_path / 'bin' / 'xcrun'}", *defs, "-P",
                           str(script)], capture_output=True, text=True, env=env, check=False)


@needs_cmake
def test_metal_flags_default_to_the_package_floor(tmp_path, fake_tools):
    """A plain `pip install` sets no deployment target: the AIR still targets macOS 13."""
    _, env = fake_tools
    r = configure(tmp_path, env)
    assert r.returncode == 0, r.stdout + r.stderr
    flags = next(s for s in r.stdout.splitlines() if "FLAGS=" in s).split("FLAGS=")[1].split(";")
    assert "-std=metal3.0" in flags and "-mmacosx-version-min=13.0" in flags, flags
    # the probe kernel went through metal and metallib with the same flags
    log = (tmp_path / "log").read_text()
    assert "metal -std=metal3.0 -mmacosx-version-min=13.0" in log and "metallib probe.air" in log


@needs_cmake
@pytest.mark.parametrize("target,want", [("14.0", "14.0"), ("11.0", "13.0")])
def test_deployment_target_above_the_floor_wins(tmp_path, fake_tools, target, want):
    _, env = fake_tools
    r = configure(tmp_path, env, f"-DCMAKE_OSX_DEPLOYMENT_TARGET={target}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"-mmacosx-version-min={want};" in r.stdout


@needs_cmake
def test_missing_metal_toolchain_fails_at_configure(tmp_path, fake_tools):
    """Xcode 26's stub passes `xcrun -f metal`; the configure-time compile stops with the
    compiler's message and the download command."""
    _, env = fake_tools
    r = configure(tmp_path, dict(env, FAKE_METAL="missing"))
    assert r.returncode != 0
    assert "missing Metal Toolchain" in r.stderr
    assert "xcodebuild -downloadComponent MetalToolchain" in r.stderr
    assert "FLAGS=" not in r.stdout


def test_cmakelists_builds_with_the_checked_flags():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "cmake/metal_toolchain.cmake" in text
    assert text.index("fastllm_metal_toolchain(METAL_FLAGS") < text.index("${METAL_FLAGS} -c")


def macos_job() -> dict:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return next(j for j in jobs.values() if str(j.get("runs-on", "")).startswith("macos"))


def test_macos_job_runs_on_the_current_arm64_label():
    assert macos_job()["runs-on"] == "macos-15"


@pytest.mark.parametrize("installed", [True, False])
def test_workflow_downloads_the_metal_toolchain_when_metal_does_not_run(tmp_path, fake_tools,
                                                                        installed):
    bin_dir, env = fake_tools
    executable(bin_dir / "sudo", '#!/bin/sh\necho "sudo $*" >> "$FAKE_LOG"\nexec "$@"\n')
    executable(bin_dir / "xcodebuild", textwrap.dedent("""\
        #!/bin/sh
        echo "xcodebuild $*" >> "$FAKE_LOG"
        if [ "$1" = -downloadComponent ] && [ "$2" = MetalToolchain ]; then
          : > "$FAKE_DIR/downloaded"
        fi
        """))
    step = next(s for s in macos_job()["steps"] if s.get("name") == "Metal toolchain")
    env = dict(env, PATH=f"{bin_dir}:{env['PATH']}", FAKE_METAL="" if installed else "missing")
    r = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True, env=env,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "log").read_text()
    downloads = log.count("sudo xcodebuild -downloadComponent MetalToolchain")
    assert downloads == (0 if installed else 1), log
    assert log.rstrip().endswith("xcrun -sdk macosx metal --version"), log
