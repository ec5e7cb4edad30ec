"""GGML tensor types in NumPy: the type table, the dequantizers and the quantizers.

- types.py     the ggml type table: type ids, block sizes, bytes per row, supported types
- decode.py    the dequantizers (`dequantize`, `dequantize_rows`), which the GPU kernels follow;
               MXFP4's level table and scale
- encode.py    `quantize` (ggml's reference quantizers), the 32-element block types and bf16;
               `random_blocks`, valid random raw data for kernel tests
- encode_k.py  the K-quants' scale searches and packing (Q2_K .. Q6_K)
- rounding.py  ggml's float32 rounding in NumPy, which both quantizer modules build on

Imports go one way: types and rounding import no other module here, decode imports types,
encode_k rounding and types, encode all of them (tests/test_layout.py checks it). Code outside
the package takes the public names from `fastllm.quants`.
"""

from .decode import MXFP4_KVALUES, dequantize, dequantize_rows, e8m0_half
from .encode import quantize, random_blocks
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
