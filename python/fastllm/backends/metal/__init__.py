"""The Metal backend (Apple Silicon): lowering.py turns a graph into Metal dispatches over the
kernels of metal/*.metal at the repository root; backend.py holds weights, KV cache and arena and
runs the dispatches through the fastllm._metal extension (imported on first use); rows_loops.py
samples batched decode steps on the device (sample_rows.py) and chains them.
"""

from .backend import MetalBackend

__all__ = ["MetalBackend"]
