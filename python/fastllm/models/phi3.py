"""`phi3`: Phi-3 and Phi-3.5 mini/medium (and Phi-4 mini) as llama.cpp's src/models/phi3.cpp
reads them.

The llama block with NeoX rope, Q/K/V from one fused `attn_qkv` (or separate tensors, with
optional biases), and a fused gate+up `ffn_up` of 2 * n_ff rows whose first half is the gate
(ggml's swiglu on one tensor: silu of the first half times the second). Per-layer rope factors
`rope_factors_long` / `rope_factors_short` as llama.cpp chooses them (models/layout.py). No
`rope_freqs`, `output.bias`, output-projection bias or FFN biases: llama.cpp's phi3 loader
creates none of them. llama.cpp turns a sliding window off for phi3 ("Phi SWA is currently
disabled"), so every layer attends to the whole context here too.
"""

from __future__ import annotations

from ..backends.base import Graph, Value
from .base import Config, part_name
from .layout import LongRope
from .llama import ATTN, Llama


class Phi3(LongRope, Llama):
    arch = "phi3"
    EXPERTS = False  # llama.cpp's graph of it has no MoE layers
    rope_neox = True
    LONGROPE_ALWAYS = True
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN
    GLOBAL_OPTIONAL = ("output.weight",)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        return [n for n in super().required_tensors(cfg) if not n.endswith(".ffn_gate.weight")]

    @classmethod
    def fused_tensors(cls, cfg: Config) -> dict[str, tuple[tuple[str, int], ...]]:
        return super().fused_tensors(cfg) | {
            f"blk.{i}.ffn_up.weight": (("gate", cfg.n_ff), ("up", cfg.n_ff))
            for i in range(cfg.n_layer)}

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        # the generic pass of llama.cpp's loader reads the FFN's `.scale` tensors, but its phi3
        # graph passes none of them to build_ffn
        why = "FFN scale: llama.cpp loads it, its phi3 graph does not apply it"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in ("ffn_up", "ffn_down")}

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        up = f"blk.{i}.ffn_up.weight"
        gate = g.matmul(x, self.w[part_name(up, "gate")])
        h = g.swiglu(gate, g.matmul(x, self.w[part_name(up, "up")]))
        return g.matmul(h, self.w[f"blk.{i}.ffn_down.weight"])
