"""Which WebGPU adapter a backend opens.

wgpu picks by power preference and knows nothing of CUDA_VISIBLE_DEVICES, the variable through
which schedulers (Ray, Slurm, Kubernetes' device plugins) hand one GPU of several to a process.
So the choice can be made by index: `Model.load(..., adapter=INDEX)` or, for every backend of a
process, FASTLLM_WEBGPU_ADAPTER=INDEX. The index counts the adapters in the order wgpu
enumerates them, the order `fastllm --version` lists them in (each GPU may appear once per API
it speaks: Vulkan, OpenGL, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ArgumentError, BackendError

ADAPTER_ENV = "FASTLLM_WEBGPU_ADAPTER"
# APIs in the order a GPU's own index is counted in (gpu_adapter_index): the first that has
# any hardware adapter is used, so that a GPU reachable through Vulkan and OpenGL counts once
_API_ORDER = ("Vulkan", "Metal", "D3D12", "OpenGL")


def chosen_index(adapter: Any) -> tuple[int, str] | None:
    """The adapter index asked for, and how it was asked (to name in errors): the argument,
    else FASTLLM_WEBGPU_ADAPTER, else None (wgpu's own choice)."""
    if adapter is None:
        text = os.environ.get(ADAPTER_ENV, "").strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ArgumentError(f"{ADAPTER_ENV}={text!r}: expected an adapter index (0, 1, ...; "
                                f"`fastllm --version` lists the adapters in order)") from None
        if value < 0:
            raise ArgumentError(f"{ADAPTER_ENV}={text}: an adapter index is >= 0")
        return value, f"{ADAPTER_ENV}={value}"
    if isinstance(adapter, bool) or not isinstance(adapter, int) or adapter < 0:
        raise ArgumentError(f"adapter must be an adapter index (an int >= 0), got {adapter!r}")
    return adapter, f"adapter={adapter}"


def describe(info: Mapping[str, Any]) -> str:
    kind = "CPU" if info.get("adapter_type", "CPU") == "CPU" else "GPU"
    return f"{info.get('device', '?')} ({info.get('backend_type', '?')}, {kind})"


def request(wgpu: Any, adapter: Any = None) -> Any:
    """The adapter to open: wgpu's high-performance choice, or the one at the index asked for
    (ArgumentError naming the argument or the variable, and listing what there is, when no
    adapter has that index)."""
    chosen = chosen_index(adapter)
    if chosen is None:
        return wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    index, how = chosen
    adapters = wgpu.gpu.enumerate_adapters_sync()
    if index >= len(adapters):
        have = "; ".join(f"{i}: {describe(a.info)}" for i, a in enumerate(adapters)) or "none"
        raise ArgumentError(f"{how}: there is no WebGPU adapter {index}; this machine has "
                            f"{len(adapters)} ({have})")
    return adapters[index]


def gpu_adapter_index(infos: Sequence[Mapping[str, Any]], gpu: int) -> int:
    """The index (among `infos`, the adapters in enumeration order) of hardware GPU number
    `gpu`, counting only GPUs (no CPU rasterizer) of one API, the first of _API_ORDER that has
    any. This maps a scheduler's GPU number (Ray's ray.get_gpu_ids(), NVML's numbering, which
    is PCI bus order like Vulkan's device list) onto wgpu's adapter list."""
    hardware = [(i, a) for i, a in enumerate(infos) if a.get("adapter_type", "CPU") != "CPU"]
    for api in _API_ORDER:
        picked = [i for i, a in hardware if a.get("backend_type") == api]
        if picked:
            break
    else:
        picked = [i for i, _ in hardware]
    if not 0 <= gpu < len(picked):
        raise BackendError(f"webgpu: GPU {gpu} was assigned to this process, but wgpu sees "
                           f"{len(picked)} GPU adapter{'s' if len(picked) != 1 else ''} ("
                           f"{'; '.join(describe(infos[i]) for i in picked) or 'none'}); set "
                           f"{ADAPTER_ENV} to pick one by index")
    return picked[gpu]
