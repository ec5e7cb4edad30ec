"""What NVIDIA's driver made of the WebGPU kernels: SASS from its shader disk cache.

wgpu hands the driver SPIR-V; how the driver compiles it (which loops it unrolls, how many
registers a thread takes, whether loads issue ahead of their use) decides a kernel's speed and
is not visible through WebGPU. The driver keeps every compiled pipeline in its disk cache, as
zstd frames holding the raw machine code; this tool takes them out and disassembles them with
nvdisasm. Run any benchmark with the cache pointed at a fresh folder, then read that folder:

    __GL_SHADER_DISK_CACHE=1 __GL_SHADER_DISK_CACHE_PATH=/tmp/nvcache \\
    __GL_SHADER_DISK_CACHE_SKIP_CLEANUP=1 python3 benchmarks/sweep_webgpu_mm.py ...
    python3 benchmarks/nv_sass.py /tmp/nvcache --out /tmp/sass

It prints one line per pipeline (instructions, registers: the highest register named plus one,
and counts of the instructions that matter to the kernels here) and writes each pipeline's disassembly to OUT. The cache does not
name the pipelines: compile one kernel per fresh folder, or tell them apart by their counts.
Needs `zstandard` and nvdisasm (`pip install zstandard nvidia-cuda-nvdisasm`; the disassembly
itself runs on any x86_64 or aarch64 Linux machine). Only the layout seen with driver 580 on
an H100 (SM 9.0) is known: the code's size and offset at bytes 0x4c and 0x50 of a frame that
starts with b"NVDANVVM".
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEADER = b"NVDANVVM"
COUNTED = {  # column: a regex over the disassembly
    "HFMA2": r"\bHFMA2\b(?!\.MMA)", "HMUL2+HADD2": r"\bH(?:MUL|ADD)2\b(?!\.F32)",
    "FFMA": r"\bFFMA\b", "LDS": r"\bLDS\b", "STS": r"\bSTS\b", "LDG": r"\bLDG\b",
    "BAR": r"\bBAR\.SYNC\b", "local": r"\b(?:LDL|STL)\b",
}


def find_nvdisasm(given: str | None) -> str:
    if given:
        return given
    found = shutil.which("nvdisasm")
    if found:
        return found
    for site in map(Path, sys.path):
        for cand in site.glob("nvidia/cu*/bin/nvdisasm"):
            return str(cand)
    sys.exit("nv_sass: nvdisasm not found (pip install nvidia-cuda-nvdisasm, or --nvdisasm)")


def frames(cache: Path):
    """Every zstd frame in the cache's .bin files that holds a compiled pipeline, decompressed."""
    try:
        import zstandard
    except ImportError:
        sys.exit("nv_sass: needs the zstandard package (pip install zstandard)")
    for f in sorted(cache.rglob("*.bin")):
        data = f.read_bytes()
        for m in re.finditer(re.escape(ZSTD_MAGIC), data):
            try:
                out = zstandard.ZstdDecompressor().decompressobj().decompress(data[m.start():])
            except zstandard.ZstdError:
                continue  # the magic inside other data
            if out.startswith(HEADER):
                yield out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path, help="the folder __GL_SHADER_DISK_CACHE_PATH named")
    ap.add_argument("--out", type=Path, default=Path("sass"), help="where the .sass files go")
    ap.add_argument("--arch", default="SM90", help="nvdisasm's -b (the GPU's SM version)")
    ap.add_argument("--nvdisasm", help="path of nvdisasm")
    a = ap.parse_args(argv)
    nvdisasm = find_nvdisasm(a.nvdisasm)
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"{'pipeline':<10}{'instr':>7}{'regs':>6}" + "".join(f"{k:>13}" for k in COUNTED))
    n = 0
    for frame in frames(a.cache):
        size, off = struct.unpack_from("<II", frame, 0x4C)
        raw = a.out / f"p{n:03d}.bin"
        raw.write_bytes(frame[off + 8: off + 8 + size])
        res = subprocess.run([nvdisasm, "-b", a.arch, str(raw)], capture_output=True, check=False,
                             text=True)
        text = res.stdout
        (a.out / f"p{n:03d}.sass").write_text(text + res.stderr)
        instr = len(re.findall(r"/\*[0-9a-f]{4,}\*/", text))
        regs = max((int(r) for r in re.findall(r"\bR(\d+)\b", text)), default=-1) + 1
        print(f"p{n:03d}      {instr:>7}{regs:>6}"
              + "".join(f"{len(re.findall(p, text)):>13}" for p in COUNTED.values()))
        n += 1
    if not n:
        sys.exit(f"nv_sass: no compiled pipelines found under {a.cache}")


if __name__ == "__main__":
    main()
