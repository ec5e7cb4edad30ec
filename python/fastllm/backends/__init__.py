"""Backend selection. Backends import their runtime (wgpu, the Metal extension) lazily, so a Linux
user never loads the Metal extension and a Mac user never needs wgpu."""

from __future__ import annotations

import platform
import sys
import warnings

from ..errors import BackendError
from .base import Backend

NAMES = ("reference", "webgpu", "metal")


def _apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def create_backend(name: str | Backend | None = None) -> Backend:
    """`name` is "reference", "webgpu" or "metal" (or a Backend instance, used as given). None
    picks Metal on Apple Silicon, else WebGPU on a hardware (non-CPU) adapter, else the reference
    backend with one warning."""
    if isinstance(name, Backend):
        return name
    if name is not None and name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    if name == "webgpu":
        from .webgpu import WebGPUBackend

        return WebGPUBackend()
    if name == "metal":
        from .metal import MetalBackend

        return MetalBackend()
    reasons = []
    if _apple_silicon():
        try:
            from .metal import MetalBackend

            return MetalBackend()
        except (BackendError, ImportError) as e:
            reasons.append(f"metal: {e}")
    try:
        from .webgpu import WebGPUBackend, hardware_adapter_available

        if hardware_adapter_available():
            return WebGPUBackend()
        reasons.append("webgpu: only a CPU adapter (ask for backend='webgpu' to use it)")
    except (BackendError, ImportError) as e:
        reasons.append(f"webgpu: {e}")
    from .reference import ReferenceBackend

    warnings.warn("fastllm: no GPU backend available, using the NumPy reference backend ("
                  + "; ".join(reasons) + ")", RuntimeWarning, stacklevel=3)
    return ReferenceBackend()
