"""GGUF model files: metadata by key and tensors by GGUF name, over the `gguf` package's memmap
reader. Tensor data is never copied at open: `GGUFFile.tensor(name).data` is a view of the map.
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


def _field_value(field: Any, key: str, path: str) -> Any:
    from gguf import GGUFValueType

    try:
        main = field.types[0] if field.types else None
        if main == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            if len(field.data) == 0:
                return np.zeros(0, dtype=np.float32)
            # numeric arrays become one numpy array (score tables have 150k entries)
            arr = np.concatenate([field.parts[i] for i in field.data])
            return arr.astype(bool) if sub == GGUFValueType.BOOL else arr
        if main == GGUFValueType.STRING:
            return bytes(field.parts[-1]).decode("utf-8")
        val = field.parts[-1]
        if len(val) != 1:
            raise GGUFError(f"{path}: metadata key {key!r} has a malformed value")
        v = val[0].item()
        return bool(v) if main == GGUFValueType.BOOL else v
    except UnicodeDecodeError as e:
        raise GGUFError(f"{path}: metadata key {key!r} holds invalid UTF-8 ({e.reason} at byte "
                        f"{e.start})") from None


# byte sizes of GGUF scalar value types (gguf spec), by type id
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _precheck(path: str, size: int) -> None:
    """Walk the header's counts and lengths before the gguf reader does: it trusts them, so a
    damaged count (an array of 2**60 items) would make it loop for hours instead of failing."""
    import struct

    with open(path, "rb") as f:
        head = f.read(min(size, 1 << 16))
        pos = 8

        def need(n: int) -> None:
            nonlocal head
            if pos + n > len(head):
                if pos + n > size:
                    raise GGUFError(f"{path}: header is truncated at byte {size} (needs "
                                    f"{pos + n}): the file is cut short or not GGUF")
                f.seek(0)
                head = f.read(max(pos + n, 2 * len(head)))

        def u64() -> int:
            nonlocal pos
            need(8)
            v = struct.unpack_from("<Q", head, pos)[0]
            pos += 8
            return v

        def u32() -> int:
            nonlocal pos
            need(4)
            v = struct.unpack_from("<I", head, pos)[0]
            pos += 4
            return v

        def skip_value(vtype: int, key: str, depth: int = 0) -> None:
            nonlocal pos
            if vtype in _SCALAR_SIZES:
                need(_SCALAR_SIZES[vtype])
                pos += _SCALAR_SIZES[vtype]
            elif vtype == _STRING:
                n = u64()
                if n > size - pos:
                    raise GGUFError(f"{path}: metadata key {key!r}: string length {n} runs past "
                                    f"the end of the file")
                need(n)
                pos += n
            elif vtype == _ARRAY and depth == 0:
                itype, n = u32(), u64()
                if n > size - pos:
                    raise GGUFError(f"{path}: metadata key {key!r}: array of {n} items cannot fit "
                                    f"in the file")
                if itype in _SCALAR_SIZES:
                    need(n * _SCALAR_SIZES[itype])
                    pos += n * _SCALAR_SIZES[itype]
                else:
                    for _ in range(n):
                        skip_value(itype, key, depth + 1)
            else:
                raise GGUFError(f"{path}: metadata key {key!r} has an unknown value type {vtype}")

        n_tensors, n_kv = u64(), u64()
        if n_tensors > size // 24 or n_kv > size // 12:
            raise GGUFError(f"{path}: header claims {n_tensors} tensors and {n_kv} keys, more "
                            f"than a file of {size} bytes can hold")
        alignment = 32
        for _ in range(n_kv):
            klen = u64()
            if klen > 65535:
                raise GGUFError(f"{path}: metadata key length {klen} is implausible (damaged file)")
            need(klen)
            key = head[pos:pos + klen].decode("utf-8", "replace")
            pos += klen
            vtype = u32()
            if key == "general.alignment" and vtype == 4:
                need(4)
                alignment = struct.unpack_from("<I", head, pos)[0]
                if alignment == 0 or alignment & (alignment - 1):
                    raise GGUFError(f"{path}: general.alignment {alignment} is not a power of 2")
            skip_value(vtype, key)
        infos = []
        for _ in range(n_tensors):
            nlen = u64()
            if nlen > 65535:
                raise GGUFError(f"{path}: tensor name length {nlen} is implausible (damaged file)")
            need(nlen)
            name = head[pos:pos + nlen].decode("utf-8", "replace")
            pos += nlen
            nd = u32()
            if nd > 4:
                raise GGUFError(f"{path}: tensor {name!r} has {nd} dimensions (GGUF allows 4)")
            need(8 * nd + 12)
            ne = struct.unpack_from(f"<{nd}Q", head, pos)
            gtype, offset = struct.unpack_from("<IQ", head, pos + 8 * nd)
            pos += 8 * nd + 12
            infos.append((name, ne, gtype, offset))
        data_start = (pos + alignment - 1) // alignment * alignment
        for name, ne, gtype, offset in infos:
            try:
                blk, bsz = type_size(GGMLType(gtype))
            except ValueError:
                continue  # an unknown type is reported by name when tensors are built
            n = 1
            for d in ne:
                n *= d
            end = data_start + offset + n // max(blk, 1) * bsz
            if end > size:
                raise GGUFError(f"{path}: tensor {name!r} data ends at byte {end}, past the end of "
                                f"the file ({size} bytes): truncated file?")


class GGUFFile:
    """An open GGUF file (or the set of a split model's files).

    `metadata` maps every key to a Python value (str, int, float, bool, list, or a numpy array for
    numeric arrays). `tensors` maps GGUF tensor names to TensorInfo views of the mapped file.
    """

    def __init__(self, path: str | os.PathLike, *, check_types: bool = True):
        self.path = os.fspath(path)
        paths = self._split_paths(self.path)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._readers = []
        for i, p in enumerate(paths):
            reader = self._open_one(p)
            self._readers.append(reader)
            for key, field in reader.fields.items():
                if key.startswith("GGUF.") or (i > 0 and key in self.metadata):
                    continue
                self.metadata[key] = _field_value(field, key, p)
            self._add_tensors(reader, p, check_types)

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

    @staticmethod
    def _open_one(path: str):
        from gguf import GGUFReader

        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8:
            raise GGUFError(f"{path}: file is {size} bytes, too short for a GGUF header (truncated?)")
        if head[:4] != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
        version = int.from_bytes(head[4:8], "little")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (fastllm reads 2 and 3)")
        _precheck(path, size)
        try:
            return GGUFReader(path, "r")
        except GGUFError:
            raise
        except Exception as e:  # the reader raises ValueError/IndexError/... on damaged headers
            raise GGUFError(f"{path}: malformed or truncated GGUF ({type(e).__name__}: {e})") from None

    def _add_tensors(self, reader, path: str, check_types: bool) -> None:
        size = os.path.getsize(path)
        for t in reader.tensors:
            name = t.name
            try:
                gtype = GGMLType(int(t.tensor_type))
            except ValueError:
                raise UnsupportedError(
                    f"{path}: unsupported tensor type id {int(t.tensor_type)} in tensor {name!r}"
                ) from None
            if check_types:
                check_supported(gtype, name, path)
            ne = [int(x) for x in t.shape]  # ggml order, ne[0] first
            if any(x <= 0 for x in ne):
                raise GGUFError(f"{path}: tensor {name!r} has an invalid shape {ne}")
            n = int(np.prod(ne, dtype=np.int64))
            blk, bsz = type_size(gtype)
            if ne[0] % blk:
                raise GGUFError(f"{path}: tensor {name!r}: row length {ne[0]} is not a multiple of "
                                f"the {gtype.name} block size {blk}")
            nbytes = n // blk * bsz
            start = int(t.data_offset)
            if start + nbytes > size:
                raise GGUFError(f"{path}: tensor {name!r} data ends at byte {start + nbytes}, past "
                                f"the end of the file ({size} bytes): truncated file?")
            raw = reader.data[start:start + nbytes]
            if raw.nbytes != nbytes:
                raise GGUFError(f"{path}: tensor {name!r} data is truncated")
            if name in self.tensors:
                raise GGUFError(f"{path}: duplicate tensor name {name!r}")
            self.tensors[name] = TensorInfo(name, gtype, tuple(reversed(ne)), raw, path)

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
