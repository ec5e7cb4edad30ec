"""`gpt-oss`: OpenAI's gpt-oss-20b and gpt-oss-120b as llama.cpp reads them (src/models/
openai-moe.cpp; GGUF architecture `gpt-oss`).

The block: RMSNorm, attention with biases on q/k/v/o and a learned sink logit per head
(`attn_sinks`, which joins each softmax's denominator), NeoX rope; then `post_attention_norm`
and a mixture of experts in every layer: the router has a bias (`ffn_gate_inp.bias`), chooses by
the raw logits and weighs the chosen experts by a softmax over their logits only
(softmax_weight); each expert's products carry per-expert biases (`ffn_*_exps.bias`, added
through add_id) and the activation is the clamped SwiGLU (swiglu_oai: alpha 1.702, limit 7.0,
constants of llama.cpp's LLM_FFN_SWIGLU_OAI_MOE). Layers alternate sliding-window and full
attention (`attention.sliding_window_pattern`, llama.cpp's default period 2: even layers local);
the local layers rope with `rope.freq_base_swa` (default: rope.freq_base). The query scale is
1/sqrt(rope.dimension_count). The released models scale rope by YaRN (factor 32 over an
original context of 4096): models/layout.py's Yarn, the same per-pair divisors and magnitude for
every layer, as llama.cpp gives both layer kinds one freq_scale (rope_freq_scale_train_swa).

Keys the saver writes that llama.cpp's gpt-oss graph does not read (the softcapping values,
expert_weights_norm, expert_gating_func) are not read here either: the gating and the
normalization are the graph's constants. Nor are the experts' per-expert `.scale` tensors, which
llama.cpp's loader reads but its gpt-oss graph does not pass to build_moe_ffn (applying them
moves the saver's logits by 0.3: tests/test_archs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..backends.base import Graph, KVSpec, Value
from ..errors import GGUFError, UnsupportedError
from .base import Config, KeyReader
from .gemma3 import swa_layers
from .layout import Yarn, YarnConfig, extend_config
from .llama import ATTN, Llama
from .moe import EXPS

# llama.cpp's default sliding-window period for gpt-oss (openai-moe.cpp): every other layer
SWA_PERIOD = 2


@dataclass
class GptOssConfig(YarnConfig):
    swa: tuple[bool, ...] = ()  # per layer: attends through the sliding window
    rope_base_swa: float = 10000.0
    expert_weights_scale: float = 1.0


class GptOss(Yarn, Llama):
    arch = "gpt-oss"
    EXPERTS = True
    rope_neox = True
    BIASED = ATTN
    SCALED = ATTN
    GLOBAL_OPTIONAL = ()  # output.weight is required, output.bias unused: Llama.output
    FFN_NORM = "post_attention_norm"

    cfg: GptOssConfig

    @classmethod
    def config(cls, md, path: str = "") -> GptOssConfig:
        key = KeyReader(md, cls.arch, path)
        # Yarn's config over Llama's (which checks rope.dimension_count == the head size)
        cfg = super().config(md, path)
        if not cfg.n_expert:
            raise GGUFError(f"{path}: gpt-oss.expert_count is 0: a gpt-oss file needs experts")
        if f"{cls.arch}.attention.sliding_window_pattern" in md:
            swa = swa_layers(md, cls.arch, cfg.n_layer, path)
        else:
            swa = tuple(i % SWA_PERIOD < SWA_PERIOD - 1 for i in range(cfg.n_layer))
        if cfg.sliding_window <= 0:
            # llama.cpp requires the key (get_key without a default) and a window of 0 would
            # make its local layers see nothing
            raise GGUFError(f"{path}: gpt-oss.attention.sliding_window is missing or 0")
        base_swa = key("rope.freq_base_swa", cfg.rope_base, float)
        if cfg.yarn and base_swa != cfg.rope_base:
            # YaRN's correction dimensions depend on the base: the load-time divisors are one
            # set for every layer here
            raise UnsupportedError(f"{path}: gpt-oss.rope.freq_base_swa {base_swa:g} differs "
                                   f"from rope.freq_base {cfg.rope_base:g} under YaRN scaling")
        # build_moe_ffn scales the weights unless the factor is 0 or 1
        scale = key("expert_weights_scale", 0.0, float)
        # YaRN's original context (llama.cpp's n_ctx_orig_yarn; default the training context)
        cfg.n_ctx_orig = (key("rope.scaling.original_context_length", cfg.n_ctx_train)
                          or cfg.n_ctx_train)
        return extend_config(cfg, GptOssConfig, swa=swa, rope_base_swa=base_swa,
                             expert_weights_scale=1.0 if scale == 0.0 else scale)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        names = ["token_embd.weight", "output_norm.weight", "output.weight"]
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            names += [p + t + ".weight" for t in (
                "attn_norm", "post_attention_norm", "attn_output", "attn_sinks", "ffn_gate_inp", *EXPS)]
            # llama.cpp creates these without TENSOR_NOT_REQUIRED
            names += [p + t + ".bias" for t in ("attn_output", "ffn_gate_inp", *EXPS)]
        return names

    @classmethod
    def optional_tensors(cls, cfg: Config) -> list[str]:
        # Q, K, V separate or fused (Llama.qkv_tensors), with their optional biases
        return cls.qkv_tensors(cfg) + [f"blk.{i}.{t}.bias" for i in range(cfg.n_layer)
                                       for t in ("attn_q", "attn_k", "attn_v")]

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        why = "per-expert scale: llama.cpp loads it, its gpt-oss graph does not apply it"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in EXPS}

    def is_local(self, layer: int) -> bool:
        return self.cfg.swa[layer]

    def window(self, layer: int) -> int:
        return self.cfg.sliding_window if self.is_local(layer) else 0

    def rope_base(self, layer: int) -> float:
        return self.cfg.rope_base_swa if self.is_local(layer) else self.cfg.rope_base

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.n_rot)

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        # a local layer keeps only the window, plus room for one batch written before it is read
        kv = self.cfg.n_head_kv * self.cfg.head_dim
        ring = min(n_ctx, self.cfg.sliding_window + n_batch)
        sizes = tuple(ring if self.is_local(i) else n_ctx for i in range(self.cfg.n_layer))
        return KVSpec(n_ctx, (kv,) * self.cfg.n_layer, sizes)

    def attention_block(self, g: Graph, x: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}."
        q, k, v = self.qkv(g, x, i)
        sinks = self.w[p + "attn_sinks.weight"]
        if tuple(sinks.shape) != (c.n_head,):
            raise GGUFError(f"inconsistent model: {p}attn_sinks.weight has shape {sinks.shape}, "
                            f"expected ({c.n_head},)")
        q, k = self.rope(g, q, c.n_head, i), self.rope(g, k, c.n_head_kv, i)
        g.kv_store(i, k, v)
        a = g.attention(q, i, n_head=c.n_head, n_kv_head=c.n_head_kv, head_dim=c.head_dim,
                        scale=self.attn_scale(), window=self.window(i), sinks=sinks)
        return self.product(g, a, p + "attn_output")

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        """build_moe_ffn with gpt-oss's arguments: router bias, softmax_weight gating without
        normalization, per-expert biases, swiglu_oai."""
        c, p = self.cfg, f"blk.{i}."
        for t in EXPS:
            w = self.w[p + t + ".weight"]
            if len(w.shape) != 3 or w.shape[0] != c.n_expert:
                raise GGUFError(f"inconsistent model: {p}{t}.weight has shape {w.shape}, "
                                f"expected {c.n_expert} experts (gpt-oss.expert_count)")
        logits = g.add(g.matmul(x, self.w[p + "ffn_gate_inp.weight"]),
                       self.w[p + "ffn_gate_inp.bias"])
        ids, weights = g.moe_route(logits, c.n_expert_used, gating="softmax_weight",
                                   norm=False, scale=c.expert_weights_scale)
        up = self.expert(g, x, p + "ffn_up_exps", ids)
        gate = self.expert(g, x, p + "ffn_gate_exps", ids)
        down = self.expert(g, g.swiglu_oai(gate, up), p + "ffn_down_exps", ids)
        return g.moe_sum(down, weights)

    def expert(self, g: Graph, x: Value, name: str, ids: Value) -> Value:
        """x through the chosen experts of `name`, plus their biases (no `.scale`: see above)."""
        y = g.matmul_id(x, self.w[name + ".weight"], ids)
        return g.add_id(y, self.w[name + ".bias"], ids)
