"""`qwen3`: the llama block with per-head RMSNorm on Q and K before rope (`attn_q_norm`,
`attn_k_norm`, head_dim values each), NeoX rope, optional Q/K/V biases, no FFN biases."""

from __future__ import annotations

from .base import Config
from .llama import ATTN, FFN, Llama


class Qwen3(Llama):
    arch = "qwen3"
    EXPERTS = False  # llama.cpp's graph of it has no MoE layers
    rope_neox = True
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN + FFN
    GLOBAL_OPTIONAL = ("output.weight",)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        return super().required_tensors(cfg) + [
            f"blk.{i}.attn_{t}_norm.weight" for i in range(cfg.n_layer) for t in "qk"]

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        # Qwen3 rerankers carry a classification head (llama.cpp's cls_out) that only its
        # ranking pooling reads, never the next-token logits
        return super().ignored_tensors(cfg) | {
            "cls.output.weight": "reranker head: llama.cpp reads it only for rank pooling"}
