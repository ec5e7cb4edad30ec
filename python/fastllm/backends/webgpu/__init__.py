"""The WebGPU backend: WGSL kernels through wgpu-py (Vulkan, D3D12 or Metal underneath).

backend.py owns the device (buffers, pipelines, weights, KV cache); program.py lowers a graph to
a fixed dispatch list and replays it, with matmul.py, attention.py, loops.py and rwkv.py for
their ops; repack.py lays weights out for the kernels; shaders.py assembles shaders/*.wgsl.
wgpu itself is imported on first use, so importing this package needs no GPU.
"""

from .backend import WebGPUBackend, adapter_names, hardware_adapter_available

__all__ = ["WebGPUBackend", "adapter_names", "hardware_adapter_available"]
