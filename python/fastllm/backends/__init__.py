"""Backend selection. Backends import their runtime (wgpu, the Metal extension) lazily, so a Linux
user never loads the Metal extension and a Mac user never needs wgpu."""

from __future__ import annotations

import platform
import sys
import warnings

from ..errors import ArgumentError, BackendError
from .base import Backend

NAMES = ("reference", "webgpu", "metal")


class FallbackWarning(RuntimeWarning):
    """No GPU backend could be used: the model runs on the NumPy reference backend. `reasons`
    says why for each GPU backend tried."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("fastllm: no GPU backend available, running on the NumPy reference "
                         "backend (" + "; ".join(reasons) + ")")


def _apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def create_backend(name: str | Backend | None = None, adapter: int | None = None) -> Backend:
    """`name` is "reference", "webgpu" or "metal" (or a Backend instance, used as given). None
    picks Metal on Apple Silicon, else WebGPU on a hardware (non-CPU) adapter, else the reference
    backend with one warning. `adapter`: the index of the WebGPU adapter to open (default:
    FASTLLM_WEBGPU_ADAPTER, else wgpu's choice); given with name=None it means WebGPU."""
    if isinstance(name, Backend):
        if adapter is not None:
            raise ArgumentError("adapter= picks the adapter of a backend fastllm creates; this "
                                "backend was created already")
        return name
    if name is not None and name not in NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if adapter is not None and name in ("reference", "metal"):
        raise ArgumentError(f"adapter={adapter!r} picks a WebGPU adapter; backend={name!r} has "
                            f"none (use backend='webgpu')")
    if adapter is not None:
        name = "webgpu"
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    if name == "webgpu":
        from .webgpu import WebGPUBackend

        return WebGPUBackend(adapter=adapter)
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
        from .webgpu.adapters import chosen_index

        # an adapter chosen by FASTLLM_WEBGPU_ADAPTER is used as chosen (a CPU one too), and a
        # bad index is an error rather than a quiet fallback
        if chosen_index(None) is not None or hardware_adapter_available():
            return WebGPUBackend()
        reasons.append("webgpu found only a CPU adapter; backend='webgpu' uses it")
    except (BackendError, ImportError) as e:
        reasons.append(f"webgpu: {e}")
    from .reference import ReferenceBackend

    warnings.warn(FallbackWarning(reasons), stacklevel=3)
    return ReferenceBackend()


def usable() -> list[tuple[str, str]]:
    """(name, what it runs on) of each backend that can run on this machine, best first (the
    order create_backend(None) picks in, except that it passes over a CPU-only WebGPU adapter).
    Asks the GPU drivers for their adapters but loads no model."""
    out = []
    if _apple_silicon():
        try:
            from .metal import MetalBackend

            be = MetalBackend()
            out.append(("metal", be.describe().removeprefix("metal ").strip("()")))
            be.close()
        except (BackendError, ImportError) as e:
            out.append(("metal", f"unusable: {e}"))
    try:
        from .webgpu import adapter_names

        names = adapter_names()
        # numbered: the index FASTLLM_WEBGPU_ADAPTER and Model.load(adapter=) take
        out.append(("webgpu", ", ".join(f"{i}: {n}" for i, n in enumerate(names))
                    if names else "unusable: no adapter"))
    except (BackendError, ImportError) as e:
        out.append(("webgpu", f"unusable: {e}"))
    out.append(("reference", "NumPy on the CPU"))
    return out
