"""`smollm3`: SmolLM3 as llama.cpp's src/models/smollm3.cpp reads it.

The llama block (normal rope, Q/K/V separate or fused, optional Q/K/V biases) with no rotary
embedding in every fourth layer (NoPE: llama.cpp's n_no_rope_layer_step = 4, layer il rotates
unless (il + 1) % 4 == 0). The query scale is always 1/sqrt(head size): llama.cpp's smollm3
never reads `attention.scale`. No `rope_freqs`, output-projection or FFN biases (its loader
creates none), and its graph passes no FFN `.scale` to build_ffn.
"""

from __future__ import annotations

from ..backends.base import Graph, Value
from .base import Config
from .llama import ATTN, FFN, Llama

# llama.cpp's hparams.n_no_rope_layer_step for smollm3 (set in code, no metadata key)
NO_ROPE_STEP = 4


class SmolLM3(Llama):
    arch = "smollm3"
    EXPERTS = False  # llama.cpp's graph of it has no MoE layers
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN
    GLOBAL_OPTIONAL = ("output.weight",)

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        why = "FFN scale: llama.cpp loads it, its smollm3 graph does not apply it"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in FFN}

    @staticmethod
    def has_rope(layer: int) -> bool:
        return (layer + 1) % NO_ROPE_STEP != 0

    def rope(self, g: Graph, x: Value, n_head: int, layer: int) -> Value:
        return super().rope(g, x, n_head, layer) if self.has_rope(layer) else x
