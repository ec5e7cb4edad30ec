"""The Metal backend (Apple Silicon): lowering.py turns a graph into Metal dispatches (plan.py)
over the kernels of metal/*.metal at the repository root, one mixin module per op family
(matmul.py, attention.py, elementwise.py, rwkv.py, delta.py, moe.py); backend.py holds weights,
KV cache and arena; program.py records a lowered graph over them and runs it through runtime.py,
the wrapper of the fastllm._metal extension (imported on first use); rows_loops.py samples
batched decode steps on the device (sample_rows.py) and chains them.
"""

from .backend import MetalBackend

__all__ = ["MetalBackend"]
