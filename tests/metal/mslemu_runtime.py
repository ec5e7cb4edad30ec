"""A runtime for backends/metal/ that runs the kernels of metal/*.metal on the CPU with the
project's MSL emulator (tools/mslemu), so that the Linux tests exercise the same lowering and the
same kernel sources as a Mac.

Beyond what a GPU does, it poisons every output with NaN before each dispatch, keeps a redzone
after every arena block and fails on a stray write into it, and runs each dispatch under a chosen
schedule (forward, reverse, random) in strict mode.
"""

from __future__ import annotations

import collections
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
METAL = ROOT / "metal"
sys.path.insert(0, str(ROOT / "tools" / "mslemu"))
import mslemu


@lru_cache(maxsize=1)
def libraries() -> dict[str, mslemu.Library]:
    """kernel name -> the Library of the .metal file that defines it (builds are cached on disk
    by source hash; the first build of all files takes about a minute on 2 cores)."""
    paths = sorted(METAL.glob("*.metal"))
    with ThreadPoolExecutor(2) as ex:
        libs = list(ex.map(lambda p: mslemu.Library(str(p)), paths))
    out: dict[str, mslemu.Library] = {}
    for p, lib in zip(paths, libs):
        for k in lib.kernels():
            assert k not in out, f"kernel {k} defined twice ({p.name})"
            out[k] = lib
    return out


class EmuRuntime:
    """The runtime interface of backends/metal/runtime.py (buffer, host, weight, record, run)."""

    redzone = 64
    # dispatches by kernel, over every instance (conftest checks that each kernel ran)
    total: ClassVar[collections.Counter[str]] = collections.Counter()

    def __init__(self, policy: str = "forward", seed: int = 0, strict: bool = True,
                 workers: int = 2):
        self.libs = libraries()
        self.any = next(iter(self.libs.values()))
        self.policy, self.seed, self.strict, self.workers = policy, seed, strict, workers
        self.name = f"mslemu ({policy})"
        self.counts: collections.Counter[str] = collections.Counter()

    def buffer(self, nbytes: int) -> np.ndarray:
        return self.any.buffer(np.zeros(max(int(nbytes), 16), np.uint8))

    @staticmethod
    def host(buf: np.ndarray) -> np.ndarray:
        return buf

    def weight(self, data: np.ndarray) -> tuple[np.ndarray, int]:
        return self.any.buffer(np.ascontiguousarray(data).view(np.uint8).reshape(-1)), 0

    def record(self, items):
        rec = []
        for d, bound in items:
            if d.kernel not in self.libs:
                raise KeyError(f"kernel {d.kernel} is in no metal/*.metal file")
            views = [b[off:off + nb] for b, off, nb in bound]
            guards = [(bound[i][0], bound[i][1] + bound[i][2]) for i in d.writes]
            kargs = self.any.buffer(np.frombuffer(d.kargs, np.uint8))
            rec.append((d, views, guards, kargs))
        return rec

    def run(self, rec) -> None:
        for d, views, guards, kargs in rec:
            for i in d.writes:
                views[i][:] = 0xFF  # NaN: an output element the kernel misses shows
            for buf, end in guards:
                buf[end:end + self.redzone] = 0xFF
            self.libs[d.kernel].dispatch(
                d.kernel, [kargs, *views], threadgroups=d.grid, threads_per_threadgroup=d.threads,
                policy=self.policy, seed=self.seed, strict=self.strict, workers=self.workers)
            for buf, end in guards:
                if not (buf[end:end + self.redzone] == 0xFF).all():
                    raise AssertionError(f"{d.kernel} wrote past the end of an output block")
            self.counts[d.kernel] += 1
            EmuRuntime.total[d.kernel] += 1

    def run_steps(self, recs, repeat: int) -> None:
        for _ in range(repeat):
            for rec in recs:
                self.run(rec)
