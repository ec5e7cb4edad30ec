"""`qwen3moe`: Qwen3-30B-A3B, Qwen3-235B-A22B. The qwen3 block (per-head Q/K norms, NeoX rope)
with a mixture-of-experts FFN in every layer (models/moe.py): softmax router, weights of the
chosen experts normalized to sum to 1, as llama.cpp's qwen3moe graph passes them (constants:
the file's expert_weights_norm and expert_gating_func are not read)."""

from __future__ import annotations

from ..errors import GGUFError
from .base import Config
from .moe import Routing
from .qwen3 import Qwen3


class Qwen3Moe(Qwen3):
    arch = "qwen3moe"
    EXPERTS = True
    ROUTING = Routing(gating="softmax", norm=True)

    @classmethod
    def config(cls, md, path: str = "") -> Config:
        cfg = super().config(md, path)
        if not cfg.n_expert:
            # llama.cpp asserts it too (qwen3moe has no dense layers)
            raise GGUFError(f"{path}: qwen3moe.expert_count is 0: a qwen3moe file needs experts")
        return cfg
