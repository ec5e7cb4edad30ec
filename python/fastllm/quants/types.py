"""The GGML type table: type ids, block sizes and bytes per row, and which types fastllm computes
with. Below decode.py (the dequantizers) and encode.py (the quantizers), which both read it;
fastllm.quants re-exports it."""

from __future__ import annotations

from enum import IntEnum

from ..errors import UnsupportedError


class GGMLType(IntEnum):
    """ggml type ids as stored in GGUF tensor infos (ggml.h)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


QK_K = 256
# (elements per block, bytes per block), from ggml.c's type_traits
GGML_BLOCK: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
}

# The types fastllm computes with, on every backend.
SUPPORTED_TYPES: tuple[GGMLType, ...] = (
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1,
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
    GGMLType.MXFP4,
)


def type_size(t: GGMLType) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type."""
    if t not in GGML_BLOCK:
        raise UnsupportedError(f"unknown ggml type {t!r}")
    return GGML_BLOCK[t]


def check_supported(t: GGMLType, tensor: str, path: str = "") -> None:
    """Raise UnsupportedError naming the tensor if fastllm cannot compute with type t."""
    if t not in SUPPORTED_TYPES:
        where = f"{path}: " if path else ""
        names = ", ".join(x.name for x in SUPPORTED_TYPES)
        raise UnsupportedError(f"{where}unsupported tensor type {t.name} in tensor {tensor!r} "
                               f"(fastllm reads {names})")


def row_bytes(t: GGMLType, n: int) -> int:
    """Bytes of one row of n elements of type t."""
    blk, bsz = type_size(t)
    return n // blk * bsz
