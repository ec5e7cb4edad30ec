"""GGML tensor types in NumPy: the type table, the dequantizers and the quantizers.

- types.py   the ggml type table: type ids, block sizes, bytes per row, supported types
- decode.py  the dequantizers (`dequantize`, `dequantize_rows`), which the GPU kernels follow
- encode.py  the quantizers (ggml's reference ones, `quantize`) and `random_blocks`

Everything outside this package imports from `fastllm.quants`, not from its modules.
"""

from .decode import dequantize, dequantize_rows
from .encode import MXFP4_KVALUES, e8m0_half, quantize, random_blocks
from .types import (
    GGML_BLOCK,
    QK_K,
    SUPPORTED_TYPES,
    GGMLType,
    check_supported,
    row_bytes,
    type_size,
)

__all__ = [
    "GGML_BLOCK", "MXFP4_KVALUES", "QK_K", "SUPPORTED_TYPES", "GGMLType", "check_supported",
    "dequantize", "dequantize_rows", "e8m0_half", "quantize", "random_blocks", "row_bytes",
    "type_size",
]
