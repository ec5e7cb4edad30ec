"""The `fastllm` command as a new user meets it, run as a subprocess: bad arguments, what goes to
stderr, why generation stopped, the model cache (list, rm, near-miss names), --version, --help.

Models: stories260K from FASTLLM_TEST_DATA on the reference backend (fast and exact: its greedy
text is llama.cpp's), and tiny random models written here for the cache commands. Every command
runs with FASTLLM_CACHE set to a fresh folder, so nothing is pulled and the user's cache is
never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinymodels import write_tiny_model

MISSING = "/nonexistent/model.gguf"


def fastllm(*args: str, cache: Path, env: dict | None = None, drop: tuple[str, ...] = (),
            timeout: int = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "FASTLLM_CACHE": str(cache), "PYTHONWARNINGS": "", **(env or {})}
    for k in drop:
        e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "fastllm.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, check=False)


@pytest.fixture
def cache(tmp_path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def ref(data_dir) -> dict:
    return json.loads((data_dir / "reference" / "stories260K.json").read_text())


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- item 1: every bad argument is one line naming the flag and its range, exit 2, before a load
@pytest.mark.parametrize("args, flag, valid", [
    (["run", "-n", "-5"], "-n/--n-predict", "or -1"),
    (["run", "-n", "abc"], "-n/--n-predict", ">= 0"),
    (["run", "--temp", "-1"], "--temp", ">= 0"),
    (["run", "--temp", "nan"], "--temp", ">= 0"),
    (["run", "-c", "-3"], "-c/--ctx", ">= 1"),
    (["run", "-c", "0"], "-c/--ctx", ">= 1"),
    (["run", "--top-p", "2"], "--top-p", "[0, 1]"),
    (["run", "--min-p", "5"], "--min-p", "[0, 1]"),
    (["run", "--top-k", "-1"], "--top-k", ">= 0"),
    (["run", "--repeat-penalty", "0"], "--repeat-penalty", "> 0"),
    (["run", "--seed", "-1"], "--seed", ">= 0"),
    (["chat", "--top-p", "-0.5"], "--top-p", "[0, 1]"),
    (["bench", "-r", "0"], "-r/--repetitions", ">= 1"),
    (["bench", "-p", "-1"], "-p/--n-prompt", ">= 0"),
])
def test_bad_argument_is_one_line(args, flag, valid, cache):
    r = fastllm(*args[:1], "-m", MISSING, *args[1:], cache=cache)
    assert r.returncode == 2, r.stderr
    lines = _lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert flag in lines[0] and valid in lines[0] and args[-1] in lines[0]
    # checked before anything else: the missing model file was never opened
    assert "no such file" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_bench_with_nothing_to_measure(cache):
    r = fastllm("bench", "-m", MISSING, "-p", "0", "-n", "0", cache=cache)
    assert r.returncode == 2 and len(_lines(r.stderr)) == 1
    assert "nothing to measure" in r.stderr and "no such file" not in r.stderr


def test_bench_table(stories260k, cache):
    r = fastllm("bench", "-m", str(stories260k), "--backend", "reference", "-p", "16", "-n", "8",
                "-r", "1", "-q", cache=cache)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = _lines(r.stdout)
    assert rows[0] == "| model | size | backend | test | t/s |" and len(rows) == 4
    assert [row.split("|")[4].strip() for row in rows[2:]] == ["pp16", "tg8"]


# -- items 2, 3, 5: stdout is the text; stderr one load line and one summary line
def _run(stories, cache, *args, **kw):
    return fastllm("run", "-m", str(stories), "--backend", "reference", "-p", "", "--temp", "0",
                   *args, cache=cache, **kw)


def test_run_prints_text_and_two_lines(stories260k, ref, cache):
    r = _run(stories260k, cache, "-n", "12")
    assert r.returncode == 0, r.stderr
    text = r.stdout.rstrip("\n")
    assert len(text) > 20 and ref["llamacpp_0.3.36_greedy_text"].lstrip().startswith(text.lstrip())
    load, summary = _lines(r.stderr)  # exactly two lines
    assert load.startswith("fastllm: loaded stories260K.gguf (llama) on reference in ")
    assert summary.startswith("fastllm: prompt 1 token in ")
    assert "generated 12 tokens" in summary and summary.endswith("stopped: max tokens (-n 12)")
    quiet = _run(stories260k, cache, "-n", "12", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == r.stdout


def test_default_backend_is_quiet_without_a_session(stories260k, cache):
    """No XDG_RUNTIME_DIR (a container, ssh, CI): no libwayland complaint from the adapter probe,
    no RuntimeWarning with file and line; the fallback, if any, is said in the load line."""
    r = fastllm("run", "-m", str(stories260k), "-p", "", "--temp", "0", "-n", "4", cache=cache,
                drop=("XDG_RUNTIME_DIR", "NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"))
    assert r.returncode == 0, r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr and "Warning" not in r.stderr
    load, summary = _lines(r.stderr)
    assert load.startswith("fastllm: loaded stories260K.gguf")
    if " on reference " in load:
        assert "no GPU backend: " in load and "backend='" not in load
    assert "stopped: max tokens (-n 4)" in summary


def test_n_zero_generates_nothing(stories260k, cache):
    r = _run(stories260k, cache, "-n", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert _lines(r.stderr)[-1].endswith("generated 0 tokens; stopped: max tokens (-n 0)")


def test_context_full_is_said_and_counted(stories260k, ref, cache):
    """-n -1 runs until the context is full: BOS + 23 generated tokens fill -c 24, every one
    counted, and their text is llama.cpp's greedy text."""
    r = _run(stories260k, cache, "-n", "-1", "-c", "24")
    assert r.returncode == 0, r.stderr
    summary = _lines(r.stderr)[-1]
    assert "generated 23 tokens" in summary and "stopped: context full" in summary
    from fastllm.gguf import open_gguf
    from fastllm.tokenizer import Tokenizer

    f = open_gguf(stories260k)
    tok = Tokenizer.from_metadata(f.metadata, f.path)
    want = tok.decode(ref["llamacpp_0.3.36_greedy_ids"][:23])
    assert r.stdout.rstrip("\n").lstrip() == want.lstrip()


def test_stop_string_is_said(stories260k, ref, cache):
    r = _run(stories260k, cache, "-n", "64", "--stop", "Lily")
    assert r.returncode == 0, r.stderr
    want = ref["llamacpp_0.3.36_greedy_text"].split("Lily")[0]  # the text before the stop string
    assert r.stdout.rstrip("\n").lstrip() == want.lstrip()
    assert _lines(r.stderr)[-1].endswith("stopped: stop string 'Lily'")


def _with_eos(src: Path, dst: Path, eos: int) -> Path:
    """A copy of GGUF src whose tokenizer.ggml.eos_token_id is eos (patched in place)."""
    from gguf import GGUFReader

    r = GGUFReader(str(src))
    f = r.fields["tokenizer.ggml.eos_token_id"]
    data = bytearray(src.read_bytes())
    off = int(f.parts[f.data[0]].ctypes.data - r.data.ctypes.data)
    data[off:off + 4] = int(eos).to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return dst


def test_end_of_generation_at_once_is_said(stories260k, ref, cache, tmp_path):
    """A model whose end token is its first greedy token stops before producing anything, and
    says so (the reason is the point: nothing else would tell the user)."""
    p = _with_eos(stories260k, tmp_path / "eos.gguf", ref["llamacpp_0.3.36_greedy_ids"][0])
    r = _run(p, cache, "-n", "16")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert _lines(r.stderr)[-1].endswith("generated 0 tokens; stopped: end of generation")


def test_library_words_become_flags(stories260k, cache):
    """A library error that names an argument (n_ctx=) reaches the command line as its flag."""
    r = _run(stories260k, cache, "-c", "4", "-p", "Once upon a time there was")
    assert r.returncode == 1
    line = _lines(r.stderr)[-1]
    assert line.startswith("fastllm: error: ") and "do not fit the context of 4" in line
    assert "-c" in line and "n_ctx" not in line and "Traceback" not in r.stderr


# -- item 6: names, the cache, --version, --help
def test_near_miss_lists_known_and_cached(cache):
    write_tiny_model(cache / "mine.gguf", "llama")
    r = fastllm("run", "-m", "smollm2", "-n", "1", cache=cache)
    assert r.returncode == 1
    (line,) = _lines(r.stderr)
    assert "smollm2: no such file" in line and "Did you mean 'smollm2-135m'?" in line
    assert "gemma3-270m" in line and "cached: mine.gguf" in line
    assert [p.name for p in cache.iterdir()] == ["mine.gguf"]  # nothing was pulled


def test_list_and_rm(cache, tmp_path):
    from fastllm.pull import KNOWN

    known = write_tiny_model(cache / KNOWN["smollm2-135m"].filename, "llama")
    other = write_tiny_model(cache / "other.gguf", "qwen2")
    outside = write_tiny_model(tmp_path / "outside.gguf", "llama")
    r = fastllm("list", cache=cache)
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in _lines(r.stdout)}
    assert set(rows) == {"smollm2-135m", "-"}
    assert rows["smollm2-135m"].endswith(str(known)) and rows["-"].endswith(str(other))
    mib = f"{known.stat().st_size / 2**20:.1f} MiB"
    assert mib in rows["smollm2-135m"]
    # a cached file is found by its name from anywhere
    assert fastllm("info", "other.gguf", cache=cache).stdout.startswith(f"file:          {other}")
    # never a path, never outside the cache
    for bad in (str(outside), "../outside.gguf", "nothere.gguf"):
        r = fastllm("rm", bad, cache=cache)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert outside.exists() and known.exists() and other.exists()
    r = fastllm("rm", "smollm2-135m", "other.gguf", cache=cache)
    assert r.returncode == 0, r.stderr
    assert not known.exists() and not other.exists() and outside.exists()
    r = fastllm("list", cache=cache)
    assert r.stdout == "" and "no models cached" in r.stderr


def test_version_names_distribution_and_backends(cache):
    from importlib.metadata import version

    r = fastllm("--version", cache=cache, drop=("XDG_RUNTIME_DIR",))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"fastllm-gpu {version('fastllm-gpu')}"
    names = [ln.split()[0] for ln in lines[2:]]
    assert names[-1] == "reference" and "webgpu" in names
    assert "XDG_RUNTIME_DIR" not in r.stderr


def test_help_shows_every_default():
    """Each option with a default shows it in --help (argparse's own text, so the check cannot
    agree with itself by construction: it reads the default from the parser, the text from
    the rendered help)."""
    import argparse

    from fastllm.cli import build_parser

    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for act in p._actions:
            if act.default in (None, False, argparse.SUPPRESS) or not act.option_strings:
                continue
            assert f"(default: {act.default})" in text, (name, act.option_strings)
            checked += 1
    assert checked >= 15


# -- item 7
def test_help_fastllm_lists_model():
    code = ("import pydoc, fastllm; t = pydoc.render_doc(fastllm, renderer=pydoc.plaintext); "
            "print('class Model' in t, 'class Tokenizer' in t, 'ArgumentError' in t)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["True", "True", "True"]
