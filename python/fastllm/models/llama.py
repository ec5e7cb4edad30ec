"""`llama`: Llama 2/3/3.1/3.2, Mistral, TinyLlama, SmolLM. The plain pre-norm decoder that qwen2
and qwen3 extend: RMSNorm, rotary attention with GQA, SwiGLU feed-forward.

Tensor names are GGUF's (`blk.N.attn_q.weight`, ...), so loading needs no renaming table.
"""

from __future__ import annotations

import math

from ..backends.base import Graph, Value
from .base import Architecture


class Llama(Architecture):
    arch = "llama"
    # llama.cpp's convert permutes Q/K rows for llama so that rotation pairs are adjacent
    # (ggml "normal" rope); qwen2/qwen3/gemma3 keep HF order and use NeoX pairs (i, i + n/2).
    rope_neox = False

    def opt(self, name: str):
        """An optional tensor, or None."""
        return self.w.get(name)

    def attention_block(self, g: Graph, x: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}."
        q = g.matmul(x, self.w[p + "attn_q.weight"])
        k = g.matmul(x, self.w[p + "attn_k.weight"])
        v = g.matmul(x, self.w[p + "attn_v.weight"])
        for name, t in (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v")):
            b = self.opt(p + name + ".bias")
            if b is not None:
                if t == "q":
                    q = g.add(q, b)
                elif t == "k":
                    k = g.add(k, b)
                else:
                    v = g.add(v, b)
        qn, kn = self.opt(p + "attn_q_norm.weight"), self.opt(p + "attn_k_norm.weight")
        if qn is not None:
            q = g.rms_norm(q, qn, c.rms_eps, group=c.head_dim)
        if kn is not None:
            k = g.rms_norm(k, kn, c.rms_eps, group=c.head_dim)
        q, k = self.rope(g, q, c.n_head, i), self.rope(g, k, c.n_head_kv, i)
        g.kv_store(i, k, v)
        a = g.attention(q, i, n_head=c.n_head, n_kv_head=c.n_head_kv, head_dim=c.head_dim,
                        scale=self.attn_scale(), window=self.window(i))
        return g.matmul(a, self.w[p + "attn_output.weight"])

    def rope(self, g: Graph, x: Value, n_head: int, layer: int) -> Value:
        c = self.cfg
        return g.rope(x, n_head=n_head, head_dim=c.head_dim, n_rot=c.n_rot,
                      base=self.rope_base(layer), freq_scale=c.rope_freq_scale,
                      neox=self.rope_neox, freq_factors=self.opt("rope_freqs.weight"))

    def rope_base(self, layer: int) -> float:
        return self.cfg.rope_base

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.head_dim)

    def window(self, layer: int) -> int:
        return 0

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        p = f"blk.{i}."
        gate = g.matmul(x, self.w[p + "ffn_gate.weight"])
        up = g.matmul(x, self.w[p + "ffn_up.weight"])
        return g.matmul(g.swiglu(gate, up), self.w[p + "ffn_down.weight"])

    def embed(self, g: Graph) -> Value:
        return g.get_rows(self.w["token_embd.weight"], g.tokens)

    def output_weight(self):
        # tied embeddings (SmolLM, Llama 3.2 1B/3B) store no output.weight
        return self.opt("output.weight") or self.w["token_embd.weight"]

    def forward(self, g: Graph, all_logits: bool) -> Value:
        c = self.cfg
        x = self.embed(g)
        for i in range(c.n_layer):
            p = f"blk.{i}."
            h = g.rms_norm(x, self.w[p + "attn_norm.weight"], c.rms_eps)
            x = g.add(x, self.attention_block(g, h, i))
            h = g.rms_norm(x, self.w[p + "ffn_norm.weight"], c.rms_eps)
            x = g.add(x, self.ffn_block(g, h, i))
        if not all_logits:
            x = g.last_row(x)
        x = g.rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        return g.matmul(x, self.output_weight())
