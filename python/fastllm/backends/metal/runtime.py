"""The Metal runtime over the native extension fastllm._metal (imported here, on first use, so
that a machine without it never loads it): device buffers, weights used in place from their
file mapping, pipelines by kernel name, and dispatch lists recorded once and run as one command
buffer. The tests put the MSL emulator (tests/metal/mslemu_runtime.py) or a fake extension
(tests/metal/fake_metal.py) in its place; the interface is name, redzone, buffer, host, weight,
record, run and run_steps."""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError
from .plan import Dispatch


class _NativeRuntime:
    """fastllm._metal: device buffers, pipelines by kernel name, one command buffer per run."""

    def __init__(self, metallib: str | None = None):
        try:
            from ... import _metal
        except ImportError as e:
            raise BackendError(f"metal: the native extension fastllm._metal is not available "
                               f"({e}); it is built only in the macOS arm64 wheel - use "
                               f"backend='webgpu' or 'reference' elsewhere") from None
        path = metallib or os.environ.get("FASTLLM_METALLIB") or str(
            Path(_metal.__file__).resolve().parent / "fastllm.metallib")
        if not os.path.exists(path):
            raise BackendError(f"metal: kernel library {path} not found (reinstall the macOS "
                               f"arm64 wheel, or point FASTLLM_METALLIB at a fastllm.metallib)")
        try:
            self.dev = _metal.Device(path)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None
        self.name = self.dev.name
        self.redzone = 0
        self._pipes: dict[str, Any] = {}
        # id(file mapping) -> (mapping, [(start, length, buffer)] windows wrapped in place, or
        # the reason Metal cannot wrap it)
        self._maps: dict[int, tuple[Any, list | str]] = {}

    def buffer(self, nbytes: int):
        return self.dev.buffer(max(int(nbytes), 16))

    @staticmethod
    def host(buf) -> np.ndarray:
        return np.frombuffer(buf, dtype=np.uint8)

    def weight(self, data: np.ndarray) -> tuple[Any, int]:
        """(buffer, offset) holding data. A tensor of a mapped file is used in place: the file is
        wrapped whole, or in windows of the device's largest buffer when it is larger, and never
        copied whole. When Metal refuses to wrap a file (the warning names why) its tensors are
        copied one by one; memory that is not a file mapping is copied."""
        root = data
        while isinstance(root.base, np.ndarray):
            root = root.base
        start = root.__array_interface__["data"][0]
        # a whole-file np.memmap starts on a page
        if isinstance(root.base, mmap.mmap) and start % mmap.PAGESIZE == 0:
            got = self._in_place(root, data.__array_interface__["data"][0] - start, data.nbytes)
            if got is not None:
                return got
        return self.dev.wrap(np.ascontiguousarray(data), False), 0

    def _in_place(self, root: np.ndarray, off: int, n: int) -> tuple[Any, int] | None:
        """(buffer, offset) of bytes off..off+n of the mapping root, from a window wrapped in
        place; None when Metal cannot wrap the mapping."""
        _, windows = self._maps.setdefault(id(root), (root, []))
        if isinstance(windows, str):
            return None
        for start, length, buf in windows:
            if start <= off and off + n <= start + length:
                return buf, off - start
        page = mmap.PAGESIZE
        limit = self.dev.max_buffer_length // page * page
        start = 0 if root.nbytes <= limit else off // page * page
        if off + n - start > limit:
            raise BackendError(f"metal: a tensor of {n} bytes is larger than the device's largest "
                               f"buffer ({self.dev.max_buffer_length} bytes)")
        length = min(limit, root.nbytes - start)
        try:
            buf = self.dev.wrap(root[start:start + length], True)
        except RuntimeError as e:  # MetalError: Metal does not map this file
            name = getattr(root, "filename", None) or "a weight file"
            warnings.warn(f"metal: {name} cannot be used in place ({e}); its tensors are "
                          f"copied one by one", stacklevel=4)
            self._maps[id(root)] = (root, str(e))
            return None
        windows.append((start, length, buf))
        return buf, off - start

    def record(self, items: list[tuple[Dispatch, list[tuple[Any, int, int]]]]):
        cmds = []
        for d, bound in items:
            pipe = self._pipes.get(d.kernel)
            if pipe is None:
                try:
                    pipe = self._pipes[d.kernel] = self.dev.pipeline(d.kernel)
                except RuntimeError as e:
                    raise BackendError(f"metal: {e}") from None
            cmds.append((pipe, d.kargs, [(b, off) for b, off, _ in bound], d.grid, d.threads))
        try:
            return self.dev.record(cmds)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None

    def run(self, rec) -> None:
        try:
            self.dev.run(rec)
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None

    def run_steps(self, recs: list, repeat: int) -> None:
        """The recordings in turn, `repeat` times, in one command buffer."""
        try:
            self.dev.run_steps(list(recs), int(repeat))
        except RuntimeError as e:
            raise BackendError(f"metal: {e}") from None
