"""`qwen2`: the llama block with NeoX rope and biases on Q, K and V (optional, as in llama.cpp),
an optional `output.bias` on the logits, no FFN biases."""

from __future__ import annotations

from .base import Config
from .llama import ATTN, FFN, Llama


class Qwen2(Llama):
    arch = "qwen2"
    EXPERTS = False  # llama.cpp's graph of it has no MoE layers
    rope_neox = True
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN
    GLOBAL_OPTIONAL = ("output.weight", "output.bias")

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        # llama.cpp's generic pass loads the FFN's `.scale` tensors too, but its qwen2 graph
        # passes none of them to build_ffn (src/models/qwen2.cpp): its logits ignore them
        why = "FFN scale: llama.cpp loads it, its qwen2 graph does not apply it"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in FFN}
