"""Kernel argument structs, read from metal/kargs.h (the single definition) and packed by field
name. The header ships inside the package (fastllm/kargs.h) and is found beside the source tree
in a checkout."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

_TYPES = {"uint32_t": np.uint32, "int32_t": np.int32, "float": np.float32}
_STRUCT = re.compile(r"struct\s+(kargs_\w+)\s*\{(.*?)\};", re.DOTALL)
_FIELD = re.compile(r"^\s*(uint32_t|int32_t|float)\s+(\w+)\s*;", re.MULTILINE)


def header_path() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here / "kargs.h", here.parent.parent / "metal" / "kargs.h"):
        if p.exists():
            return p
    raise FileNotFoundError("kargs.h not found beside fastllm or in the source tree's metal/")


def parse(text: str) -> dict[str, np.dtype]:
    """struct name -> numpy dtype with the header's field order and 4-byte fields."""
    out = {}
    for name, body in _STRUCT.findall(re.sub(r"//[^\n]*", "", text)):
        fields = [(f, _TYPES[t]) for t, f in _FIELD.findall(body)]
        out[name] = np.dtype(fields)
    return out


@lru_cache(maxsize=1)
def structs() -> dict[str, np.dtype]:
    return parse(header_path().read_text())


def pack(struct: str, **values) -> bytes:
    """Bytes of kargs struct `struct` with the given fields (unnamed fields, padding, are 0)."""
    dt = structs()[struct]
    unknown = set(values) - set(dt.names)
    if unknown:
        raise KeyError(f"{struct} has no field(s) {sorted(unknown)}")
    rec = np.zeros((), dt)
    for k, v in values.items():
        rec[k] = v
    return rec.tobytes()
