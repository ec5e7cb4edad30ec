"""`gemma3`: Gemma 3 text models as llama.cpp's converter writes them.

Differences from llama: embeddings scaled by sqrt(n_embd); per-head q/k RMSNorm; norms after the
attention and the FFN as well as before (`post_attention_norm`, `post_ffw_norm`); GeGLU with
tanh-approximated GELU; NeoX rope; tied output; sliding-window attention on five layers of six.
The converter stores RMSNorm weights with Gemma's "+1" already added, so they are plain weights.
"""

from __future__ import annotations

import math

from ..backends.base import Graph, KVSpec, Value
from .base import Config
from .llama import Llama

# Not in the GGUF metadata of Gemma 3 files: llama.cpp's values for gemma3 (llama-model.cpp:
# swa pattern 6, i.e. every sixth layer is global; local layers' rope base 10,000).
SWA_PATTERN = 6
LOCAL_ROPE_BASE = 10000.0


class Gemma3(Llama):
    arch = "gemma3"
    rope_neox = True

    @classmethod
    def config(cls, md, path: str = "") -> Config:
        cfg = Config.from_gguf(md, path)
        cfg.rope_base = float(md.get("gemma3.rope.freq_base", 1_000_000.0))
        return cfg

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.weight" for t in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                "attn_k_norm", "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up",
                "ffn_down", "post_ffw_norm")]
        return names

    def is_local(self, layer: int) -> bool:
        return bool(self.cfg.sliding_window) and (layer + 1) % SWA_PATTERN != 0

    def window(self, layer: int) -> int:
        return self.cfg.sliding_window if self.is_local(layer) else 0

    def rope_base(self, layer: int) -> float:
        return LOCAL_ROPE_BASE if self.is_local(layer) else self.cfg.rope_base

    def attn_scale(self) -> float:
        # query_pre_attn_scalar = head_dim for the Gemma 3 sizes up to 12B (llama.cpp)
        return 1.0 / math.sqrt(self.cfg.head_dim)

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        # a local layer keeps only the window, plus room for one batch written before it is read
        kv = self.cfg.n_head_kv * self.cfg.head_dim
        ring = min(n_ctx, self.cfg.sliding_window + n_batch)
        sizes = tuple(ring if self.is_local(i) else n_ctx for i in range(self.cfg.n_layer))
        return KVSpec(n_ctx, (kv,) * self.cfg.n_layer, sizes)

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        p = f"blk.{i}."
        gate = g.matmul(x, self.w[p + "ffn_gate.weight"])
        up = g.matmul(x, self.w[p + "ffn_up.weight"])
        return g.matmul(g.geglu(gate, up), self.w[p + "ffn_down.weight"])

    def forward(self, g: Graph, all_logits: bool) -> Value:
        c = self.cfg
        x = g.scale(self.embed(g), math.sqrt(c.n_embd))
        for i in range(c.n_layer):
            p = f"blk.{i}."
            h = g.rms_norm(x, self.w[p + "attn_norm.weight"], c.rms_eps)
            h = self.attention_block(g, h, i)
            x = g.add(x, g.rms_norm(h, self.w[p + "post_attention_norm.weight"], c.rms_eps))
            h = g.rms_norm(x, self.w[p + "ffn_norm.weight"], c.rms_eps)
            h = self.ffn_block(g, h, i)
            x = g.add(x, g.rms_norm(h, self.w[p + "post_ffw_norm.weight"], c.rms_eps))
        if not all_logits:
            x = g.last_row(x)
        x = g.rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        return g.matmul(x, self.output_weight())
