"""GGUF model files: metadata by key and tensors by GGUF name, over a read-only memory map.
Tensor data is never copied at open: `GGUFFile.tensor(name).data` is a view of the map.
(The `gguf` package writes files in the tests and is the reference for the format.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GGUFError, UnsupportedError
from .quants import GGMLType, check_supported, type_size

GGUF_MAGIC = b"GGUF"
_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.gguf$")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: GGUF name, ggml type, shape in numpy order (rows last dim = ne0), raw bytes."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]  # numpy order: (ne[n-1], ..., ne[0]); ne[0] is the contiguous dim
    data: np.ndarray  # uint8 view of the mapped file, nbytes = packed size
    file: str

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# GGUF value types (gguf spec): scalar type id -> numpy dtype
_SCALARS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
            6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class _Header:
    """A bounds-checked reader of the GGUF header from a memory map.

    Written here rather than using gguf.GGUFReader because that reader makes a numpy view per
    array element: it took 27 s to open Gemma 3's file (262,144-token vocabulary) on a 2-core
    x86_64 machine, where this parser takes well under a second. It also trusts the counts in the
    header, so a damaged count made it loop for hours; here every count is checked against the
    bytes left before anything is read."""

    def __init__(self, mm: np.ndarray, path: str):
        self.mm, self.path, self.pos, self.size = mm, path, 0, len(mm)
        self.buf = memoryview(mm)

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"header is truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"file is {self.size} bytes")

    def scalar(self, dtype, what: str):
        dt = np.dtype(dtype)
        self.need(dt.itemsize, what)
        v = np.frombuffer(self.buf, dt, 1, self.pos)[0]
        self.pos += dt.itemsize
        return v.item()

    def string(self, what: str) -> str:
        self.need(8, what)
        n = int.from_bytes(self.buf[self.pos:self.pos + 8], "little")
        self.pos += 8
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} holds invalid UTF-8 ({e.reason} at byte {e.start})") from None

    def value(self, vtype: int, key: str) -> Any:
        what = f"metadata key {key!r}"
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype], what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise self.fail(f"{what} has an unknown value type {vtype}")
        itype, n = self.scalar(np.uint32, what), self.scalar(np.uint64, what)
        if n > self.size - self.pos:
            raise self.fail(f"{what}: an array of {n} items cannot fit in the file")
        if itype in _SCALARS:
            dt = np.dtype(_SCALARS[itype])
            self.need(n * dt.itemsize, what)
            arr = np.frombuffer(self.buf, dt, n, self.pos).copy()
            self.pos += n * dt.itemsize
            return arr
        if itype == _STRING:
            return [self.string(f"{what} item {i}") for i in range(n)]
        if itype == _ARRAY:
            return [self.value(_ARRAY, key) for _ in range(n)]
        raise self.fail(f"{what} is an array of unknown type {itype}")


class GGUFFile:
    """An open GGUF file (or the set of a split model's files).

    `metadata` maps every key to a Python value (str, int, float, bool, list, or a numpy array for
    numeric arrays). `tensors` maps GGUF tensor names to TensorInfo views of the mapped file.
    """

    def __init__(self, path: str | os.PathLike, *, check_types: bool = True):
        self.path = os.fspath(path)
        paths = self._split_paths(self.path)
        self.metadata: dict[str, Any] = {}
        # key -> (GGUF value type, array item type or None): what a writer needs to copy a key
        self.value_types: dict[str, tuple[int, int | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for i, p in enumerate(paths):
            self._read_one(p, first=i == 0, check_types=check_types)

    @staticmethod
    def _split_paths(path: str) -> list[str]:
        if not os.path.exists(path):
            raise GGUFError(f"{path}: no such file")
        if os.path.isdir(path):
            raise GGUFError(f"{path}: is a directory, not a GGUF file")
        m = _SPLIT_RE.match(path)
        if not m:
            return [path]
        n = int(m.group("n"))
        paths = [f"{m.group('prefix')}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise GGUFError(f"{path}: split model is missing part {missing[0]}")
        return paths

    def _read_one(self, path: str, first: bool, check_types: bool) -> None:
        size = os.path.getsize(path)
        if size < 24:
            raise GGUFError(f"{path}: file is {size} bytes, too short for a GGUF header "
                            f"(truncated?)")
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
        version = int.from_bytes(head[4:8], "little")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (fastllm reads 2 and 3)")
        # a read-only map: tensor data is never copied into memory at open
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        h = _Header(mm, path)
        h.pos = 8
        n_tensors, n_kv = h.scalar(np.uint64, "tensor count"), h.scalar(np.uint64, "key count")
        if n_tensors > size // 24 or n_kv > size // 12:
            raise GGUFError(f"{path}: header claims {n_tensors} tensors and {n_kv} keys, more "
                            f"than a file of {size} bytes can hold")
        for _ in range(n_kv):
            key = h.string("a metadata key")
            vtype = h.scalar(np.uint32, f"type of {key!r}")
            itype = None
            if vtype == _ARRAY and h.pos + 4 <= size:
                itype = int(np.frombuffer(h.buf, np.uint32, 1, h.pos)[0])
            val = h.value(vtype, key)
            if first or key not in self.metadata:
                self.metadata[key] = val
                self.value_types[key] = (vtype, itype)
        alignment = self.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{path}: general.alignment {alignment!r} is not a power of 2")
        infos = []
        for _ in range(n_tensors):
            name = h.string("a tensor name")
            nd = h.scalar(np.uint32, f"dimensions of tensor {name!r}")
            if not 1 <= nd <= 4:
                raise GGUFError(f"{path}: tensor {name!r} has {nd} dimensions (GGUF allows 1-4)")
            ne = [h.scalar(np.uint64, f"shape of tensor {name!r}") for _ in range(nd)]
            gtype = h.scalar(np.uint32, f"type of tensor {name!r}")
            offset = h.scalar(np.uint64, f"offset of tensor {name!r}")
            infos.append((name, ne, gtype, offset))
        data_start = (h.pos + alignment - 1) // alignment * alignment
        for name, ne, gtype_id, offset in infos:
            try:
                gtype = GGMLType(gtype_id)
            except ValueError:
                raise UnsupportedError(f"{path}: unsupported tensor type id {gtype_id} in tensor "
                                       f"{name!r}") from None
            if check_types:
                check_supported(gtype, name, path)
            if any(x <= 0 or x > 1 << 40 for x in ne):
                raise GGUFError(f"{path}: tensor {name!r} has an invalid shape {ne}")
            n = int(np.prod(ne, dtype=np.float64))
            blk, bsz = type_size(gtype)
            if ne[0] % blk:
                raise GGUFError(f"{path}: tensor {name!r}: row length {ne[0]} is not a multiple of "
                                f"the {gtype.name} block size {blk}")
            nbytes = n // blk * bsz
            start = data_start + offset
            if offset % alignment:
                raise GGUFError(f"{path}: tensor {name!r} data offset {offset} is not aligned "
                                f"to {alignment}")
            if start + nbytes > size:
                raise GGUFError(f"{path}: tensor {name!r} data ends at byte {start + nbytes}, past "
                                f"the end of the file ({size} bytes): truncated file?")
            if name in self.tensors:
                raise GGUFError(f"{path}: duplicate tensor name {name!r}")
            self.tensors[name] = TensorInfo(name, gtype, tuple(reversed(ne)),
                                            mm[start:start + nbytes], path)

    # -- convenience -----------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        return self.metadata[key]

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: missing tensor {name!r}")
        return self.tensors[name]

    @property
    def architecture(self) -> str:
        return str(self.require("general.architecture"))


def open_gguf(path: str | os.PathLike, *, check_types: bool = True) -> GGUFFile:
    """Open a GGUF file (or the first part of a split model) without reading its tensor data."""
    return GGUFFile(path, check_types=check_types)
