"""What a Metal lowering produces and what it is built from: the `Plan` (a fixed list of
`Dispatch`es over buffer `Ref`s, and where each output lives), the first-fit `_Arena` that gives
every activation a static offset, the arena's header layout and the kernel-name suffix of each
weight type. lowering.py and its op-family mixins fill a Plan; program.py, rows_loops.py and
sample_rows.py build dispatches of their own from the same parts; none of it knows the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import UnsupportedError
from ...quants import GGMLType
from ..base import Weight

# kernel-name suffix of each weight type: kernel_mul_mv_<t>_f32, kernel_get_rows_<t>, ...
TYPE_NAMES: dict[GGMLType, str] = {
    GGMLType.F32: "f32", GGMLType.F16: "f16", GGMLType.BF16: "bf16",
    GGMLType.Q8_0: "q8_0", GGMLType.Q4_0: "q4_0", GGMLType.Q4_1: "q4_1",
    GGMLType.Q5_0: "q5_0", GGMLType.Q5_1: "q5_1", GGMLType.Q2_K: "q2_K",
    GGMLType.Q3_K: "q3_K", GGMLType.Q4_K: "q4_K", GGMLType.Q5_K: "q5_K", GGMLType.Q6_K: "q6_K",
    GGMLType.MXFP4: "mxfp4",
}
KV_TYPES = {"f16": 2, "f32": 4}  # cache element type -> bytes

ALIGN = 256  # arena offsets: ample for any vector load and for setBuffer offsets
# arena bytes 0..15: kargs_step; token ids start at HEADER, then in rows mode (Graph.rows) each
# row's (slot, position) pair (a uint2)
HEADER = 256


def _up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _threads(n: int, cap: int = 256) -> int:
    """A threadgroup width for n work items: whole SIMD groups, at most cap."""
    return max(32, min(cap, _up(n, 32)))


@dataclass(frozen=True)
class Ref:
    """A buffer argument: `kind` "arena" (offset from the arena start), "weight" (key: the weight's
    handle), "k"/"v" (key: layer), "state" (key: the name of a recurrent state buffer). nbytes is
    the extent the kernel may touch."""

    kind: str
    offset: int = 0
    nbytes: int = 0
    key: Any = None


@dataclass
class Dispatch:
    """One kernel launch: kargs at [[buffer(0)]] (set as bytes), `buffers` at 1, 2, ...;
    `grid` threadgroups of `threads` threads. `writes` are the positions in `buffers` whose
    contents the kernel defines entirely (the emulator poisons them before the launch)."""

    kernel: str
    kargs: bytes
    buffers: tuple[Ref, ...]
    grid: tuple[int, int, int]
    threads: tuple[int, int, int]
    writes: tuple[int, ...] = ()


@dataclass
class Plan:
    """A lowered graph: dispatches, arena size, and where each output lives; `rows` is where
    a rows-mode graph's (slot, position) pairs go (None in sequence mode)."""

    dispatches: list[Dispatch]
    arena_bytes: int
    tokens: Ref
    step: Ref
    outputs: dict[str, tuple[Ref, tuple[int, ...], str]] = field(default_factory=dict)
    rows: Ref | None = None


class _Arena:
    """First-fit allocator of static offsets; `redzone` bytes after each block stay unused (the
    emulator checks them for stray writes)."""

    def __init__(self, start: int, redzone: int = 0):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted
        self.top = start
        self.redzone = redzone

    def alloc(self, nbytes: int) -> int:
        size = _up(max(nbytes, 1) + self.redzone, ALIGN)
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                self.free[i:i + 1] = [(off + size, sz - size)] if sz > size else []
                return off
        off, self.top = self.top, self.top + size
        return off

    def release(self, off: int, nbytes: int) -> None:
        size = _up(max(nbytes, 1) + self.redzone, ALIGN)
        self.free.append((off, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged



def _type_name(w: Weight) -> str:
    t = w.handle.type
    if t not in TYPE_NAMES:
        raise UnsupportedError(f"metal: tensor {w.name!r} has type {t.name}, which no kernel reads")
    return TYPE_NAMES[t]
