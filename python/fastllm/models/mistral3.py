"""`mistral3`: the text model of Mistral Small 3.1/3.2 and Ministral 3 as llama.cpp's
src/models/mistral3.cpp reads it: the llama block (normal rope, optional `rope_freqs`, biases
and per-tensor scales on Q/K/V/O and the FFN, Q/K/V separate or fused, long/short rope factors
when `rope.scaling.type` is "longrope"). The query scale is always 1/sqrt(head size)
(llama.cpp's mistral3 never reads `attention.scale`).

Llama 4's attention temperature (`attention.temperature_scale` beta non-zero): llama.cpp
multiplies the queries at position p by 1 + beta * log(1 + floor(p / n)), n being
`rope.scaling.original_context_length`. That is exactly 1 below position n, so a model loaded
with a context of at most n runs here unchanged; a longer context is refused. YaRN rope scaling
(Ministral 3's `rope.scaling.type` "yarn"), with the keys llama.cpp's mistral3 reads for it:
models/layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import KVSpec
from ..errors import UnsupportedError
from .base import KeyReader
from .layout import LongRope, Yarn, YarnConfig, extend_config
from .llama import Llama


@dataclass
class Mistral3Config(YarnConfig):
    attn_temp_scale: float = 0.0  # attention.temperature_scale; 0: none
    path: str = ""  # the file, for the error of a context too long for the above


class Mistral3(Yarn, LongRope, Llama):
    arch = "mistral3"
    cfg: Mistral3Config

    @classmethod
    def config(cls, md, path: str = "") -> Mistral3Config:
        cfg = super().config(md, path)
        temp = KeyReader(md, cls.arch, path)("attention.temperature_scale", 0.0, float)
        return extend_config(cfg, Mistral3Config, attn_temp_scale=temp, path=path)

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        c = self.cfg
        if c.attn_temp_scale != 0.0 and n_ctx > c.n_ctx_orig:
            raise UnsupportedError(
                f"{c.path}: {c.arch}.attention.temperature_scale {c.attn_temp_scale:g} scales the queries "
                f"of positions past rope.scaling.original_context_length ({c.n_ctx_orig}), "
                f"which fastllm does not do: load with n_ctx <= {c.n_ctx_orig} (asked for "
                f"{n_ctx})")
        return super().kv_spec(n_ctx, n_batch)
