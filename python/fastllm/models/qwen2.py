"""`qwen2`: the llama block with biases on Q, K and V (picked up by Llama.attention_block when the
`attn_{q,k,v}.bias` tensors exist) and NeoX rope."""

from __future__ import annotations

from .base import Config
from .llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    rope_neox = True

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        return super().required_tensors(cfg) + [
            f"blk.{i}.attn_{t}.bias" for i in range(cfg.n_layer) for t in "qkv"]
