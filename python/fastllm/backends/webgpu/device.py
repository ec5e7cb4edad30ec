"""What the lowering (program.py and its op mixins, rwkv.py) uses of the WebGPU backend, as a
Protocol: the modules below backend.py name this shape instead of importing WebGPUBackend, so
backend.py imports them and none of them imports it back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..base import KVSpec, Weight


class Device(Protocol):
    """The device, its limits and the buffers the backend owns (WebGPUBackend has them all)."""

    device: Any  # wgpu GPUDevice
    queue: Any  # its GPUQueue
    limits: dict[str, int]
    max_binding: int  # bytes one storage binding may hold
    uniform_align: int  # offset alignment of uniform bindings
    f16: bool  # shader-f16 in use
    int_dot: bool  # one-token mat-vecs on bytes (mul_mvq.wgsl)
    fuse: bool  # graphs go through backends/fuse.py first
    dummy: Any  # a 16-byte buffer bound where an op has no input
    spec: KVSpec | None
    kv: list[tuple[Any, Any]]  # per layer: (K, V) buffers
    kv_version: int  # bumped when the KV buffers change (programs rebind)
    rope_tables: dict[tuple, Any]  # inv_freq buffers shared by programs
    state: dict[str, Any]  # RWKV: recurrent state buffers by name
    state_sizes: dict[str, int]  # values of one slot's share of each
    state_slots: int

    errors: Callable[[str], AbstractContextManager[None]]  # wgpu errors -> BackendError
    buffer: Callable[..., Any]  # (size, usage, label="", binding=True) -> a buffer
    free: Callable[[Any], None]
    pipeline: Callable[..., Any]  # (file, entry, wtype=None, ...) -> a compute pipeline
    vector: Callable[[Weight], Any]  # a weight's float32 vector buffer
    _upload: Callable[[Any, str], Any]  # (array, label) -> a buffer kept until close()
