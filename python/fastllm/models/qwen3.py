"""`qwen3`: the llama block with per-head RMSNorm on Q and K before rope (`attn_q_norm`,
`attn_k_norm`, head_dim values each), no QKV bias, NeoX rope."""

from __future__ import annotations

from .base import Config
from .llama import Llama


class Qwen3(Llama):
    arch = "qwen3"
    rope_neox = True

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        return super().required_tensors(cfg) + [
            f"blk.{i}.attn_{t}_norm.weight" for i in range(cfg.n_layer) for t in "qk"]
