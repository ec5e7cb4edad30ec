"""A stand-in for the fastllm._metal extension with the same Python API as csrc/bindings.cpp,
executing dispatches in the MSL emulator. It lets the Linux tests run `_NativeRuntime`, the
Python side of the native path (metallib lookup, weight mapping without copies, the recording
format, pipeline caching), which otherwise only runs on a Mac."""

from __future__ import annotations

import mmap
import types

import numpy as np
from mslemu_runtime import libraries


class MetalError(RuntimeError):
    pass


class Buffer(np.ndarray):
    """A flat uint8 array; `nocopy` as the extension reports it."""

    nocopy = False

    @property
    def length(self) -> int:
        return self.nbytes


def _buffer(arr: np.ndarray, nocopy: bool) -> Buffer:
    b = arr.view(Buffer)
    b.nocopy = nocopy
    return b


class Pipeline:
    def __init__(self, name: str):
        self.name, self.max_threads, self.execution_width = name, 1024, 32


class Recording(list):
    pass


class Device:
    def __init__(self, metallib: str):
        self.metallib = metallib
        self.name = "mslemu (fake _metal)"
        self.max_buffer_length = 1 << 34
        self.recommended_working_set_size = 1 << 34
        self.supports_simdgroup_matrix = True
        self.pipelines_created = 0
        self.refuse_nocopy = False  # as a device whose newBufferWithBytesNoCopy returns nil
        self.copied_bytes = 0  # what wrap() copied

    def buffer(self, nbytes: int) -> Buffer:
        return _buffer(np.zeros(nbytes, np.uint8), False)

    def wrap(self, data, nocopy: bool) -> Buffer:
        """As csrc/metal_runtime.mm's Device::wrap: nocopy wraps in place (read-only, as a
        mapped file is) or raises, never copies."""
        arr = np.asarray(data).reshape(-1).view(np.uint8)
        if nocopy:
            pages = -(-arr.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
            if arr.__array_interface__["data"][0] % mmap.PAGESIZE:
                raise MetalError("cannot wrap memory in place: its start is not on a page")
            if pages > self.max_buffer_length:
                raise MetalError(f"cannot wrap {pages} bytes in place: the device's largest "
                                 f"buffer is {self.max_buffer_length} bytes")
            if self.refuse_nocopy:
                raise MetalError(f"cannot wrap {pages} bytes in place: "
                                 f"newBufferWithBytesNoCopy returned nil")
            return _buffer(arr, True)
        self.copied_bytes += arr.nbytes
        return _buffer(arr.copy(), False)

    def pipeline(self, kernel: str) -> Pipeline:
        if kernel not in libraries():
            raise MetalError(f"kernel {kernel} is not in {self.metallib}")
        self.pipelines_created += 1
        return Pipeline(kernel)

    def record(self, dispatches) -> Recording:
        rec = Recording()
        for pipe, kargs, bufs, grid, threads in dispatches:
            assert isinstance(kargs, bytes) and all(isinstance(b, Buffer) for b, _ in bufs)
            if int(np.prod(threads)) > pipe.max_threads:
                raise MetalError("threads per threadgroup")
            rec.append((pipe, np.frombuffer(kargs, np.uint8).copy(),
                        [np.asarray(b)[off:] for b, off in bufs], tuple(grid), tuple(threads)))
        return rec

    def run(self, rec: Recording) -> None:
        for pipe, kargs, views, grid, threads in rec:
            libraries()[pipe.name].dispatch(pipe.name, [kargs, *views], threadgroups=grid,
                                            threads_per_threadgroup=threads)

    def run_steps(self, parts: list, repeat: int) -> None:
        assert all(isinstance(p, Recording) for p in parts) and repeat >= 1
        for _ in range(repeat):
            for rec in parts:
                self.run(rec)


def kargs_layout() -> dict:
    raise NotImplementedError


def module() -> types.ModuleType:
    m = types.ModuleType("fastllm._metal")
    m.__file__ = "/nonexistent/fastllm/_metal.so"
    for k, v in {"Device": Device, "Buffer": Buffer, "Pipeline": Pipeline,
                 "Recording": Recording, "MetalError": MetalError,
                 "kargs_layout": kargs_layout}.items():
        setattr(m, k, v)
    return m
