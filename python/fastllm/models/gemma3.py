"""`gemma3`: Gemma 3 text models as llama.cpp's converter writes them.

Differences from llama: embeddings scaled by sqrt(n_embd); per-head q/k RMSNorm; norms after the
attention and the FFN as well as before (`post_attention_norm`, `post_ffw_norm`); GeGLU with
tanh-approximated GELU; NeoX rope; tied output; sliding-window attention on the layers that
`attention.sliding_window_pattern` marks (llama.cpp's default: five of every six).
The converter stores RMSNorm weights with Gemma's "+1" already added, so they are plain weights.

Keys as llama.cpp's src/models/gemma3.cpp reads them: the window layers rope with
`rope.freq_base_swa` (default 10,000) and no frequency scaling, the others with `rope.freq_base`
and the file's scaling; the query scale is 1/sqrt(key_length) (27B: 1/sqrt(n_embd / n_head)),
whatever `attention.scale` says; `final_logit_softcapping` caps the logits with tanh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..backends.base import Graph, KVSpec, Value
from ..errors import GGUFError, UnsupportedError
from .base import Config, KeyReader
from .llama import ATTN, FFN, Llama

# llama.cpp's default window pattern for gemma3: layer il is local unless il % 6 == 5
SWA_PATTERN = 6


def swa_layers(md, arch: str, n_layer: int, path: str) -> tuple[bool, ...]:
    """Which layers attend through the window (llama_model_base::load_swa_pattern): a per-layer
    array of flags, or a period n (layer il is local when il % n < n - 1; n = 0: all local)."""
    pat = md.get(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN)
    if hasattr(pat, "__len__") and not isinstance(pat, str):
        flags = [bool(x) for x in pat]
        if len(flags) < n_layer:
            raise GGUFError(f"{path}: {arch}.attention.sliding_window_pattern has {len(flags)} "
                            f"values for {n_layer} layers")
        return tuple(flags[:n_layer])
    try:
        n = int(pat)
    except (TypeError, ValueError):
        raise GGUFError(f"{path}: metadata key {arch}.attention.sliding_window_pattern has a "
                        f"bad value {pat!r}") from None
    return tuple(n == 0 or i % n < n - 1 for i in range(n_layer))


@dataclass
class Gemma3Config(Config):
    swa: tuple[bool, ...] = ()  # per layer: attends through the sliding window
    rope_base_swa: float = 10000.0
    final_softcap: float = 0.0  # 0: logits uncapped


class Gemma3(Llama):
    arch = "gemma3"
    EXPERTS = False  # llama.cpp's graph of it has no MoE layers
    rope_neox = True
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN
    GLOBAL_OPTIONAL = ("output.weight",)

    cfg: Gemma3Config

    @classmethod
    def config(cls, md, path: str = "") -> Gemma3Config:
        cfg = Gemma3Config.from_gguf(md, path)
        key = KeyReader(md, cls.arch, path)
        cfg.swa = (swa_layers(md, cls.arch, cfg.n_layer, path) if cfg.sliding_window > 0
                   else (False,) * cfg.n_layer)
        cfg.rope_base_swa = key("rope.freq_base_swa", 10000.0, float)
        cfg.final_softcap = key("final_logit_softcapping", 0.0, float)
        if any(cfg.swa):
            # fastllm's heads have one size in every layer
            for name, full in (("attention.key_length_swa", cfg.head_dim),
                               ("attention.value_length_swa", cfg.head_dim),
                               ("rope.dimension_count_swa", cfg.n_rot)):
                if key(name, full) != full:
                    raise UnsupportedError(f"{path}: {cls.arch}.{name} = {key(name)} differs "
                                           f"from the global layers' {full}")
        return cfg

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        # (Q, K, V separate or fused: Llama.qkv_tensors, among the optional ones)
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.weight" for t in (
                "attn_norm", "attn_output", "attn_q_norm", "attn_k_norm",
                "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up",
                "ffn_down", "post_ffw_norm")]
        return names

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        # llama.cpp's gemma3 graph passes no FFN scales to build_ffn (src/models/gemma3.cpp),
        # though the generic pass loads them; the sentence-transformers projections of
        # EmbeddingGemma conversions apply only to pooled embeddings (build_dense_out)
        why = "FFN scale: llama.cpp loads it, its gemma3 graph does not apply it"
        dense = "embedding projection: llama.cpp applies it only to pooled embeddings"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in FFN} | {
            "dense_2.weight": dense, "dense_3.weight": dense}

    def is_local(self, layer: int) -> bool:
        return self.cfg.swa[layer]

    def window(self, layer: int) -> int:
        return self.cfg.sliding_window if self.is_local(layer) else 0

    def rope_base(self, layer: int) -> float:
        return self.cfg.rope_base_swa if self.is_local(layer) else self.cfg.rope_base

    def rope_scale(self, layer: int) -> float:
        # llama.cpp scales rope frequencies on the global layers only
        return 1.0 if self.is_local(layer) else self.cfg.rope_freq_scale

    def attn_scale(self) -> float:
        c = self.cfg
        if c.n_layer == 62:  # Gemma 3 27B: query_pre_attn_scalar = n_embd / n_head (llama.cpp)
            return 1.0 / math.sqrt(c.n_embd // c.n_head)
        return 1.0 / math.sqrt(c.head_dim)

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        # a local layer keeps only the window, plus room for one batch written before it is read
        kv = self.cfg.n_head_kv * self.cfg.head_dim
        ring = min(n_ctx, self.cfg.sliding_window + n_batch)
        sizes = tuple(ring if self.is_local(i) else n_ctx for i in range(self.cfg.n_layer))
        return KVSpec(n_ctx, (kv,) * self.cfg.n_layer, sizes)

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        p = f"blk.{i}."
        gate = self.product(g, x, p + "ffn_gate", bias_then_scale=True)
        up = self.product(g, x, p + "ffn_up", bias_then_scale=True)
        return self.product(g, g.geglu(gate, up), p + "ffn_down", bias_then_scale=True)

    def output(self, g: Graph, x: Value) -> Value:
        y = super().output(g, x)
        cap = self.cfg.final_softcap
        if cap:  # cap * tanh(logits / cap)
            y = g.scale(g.unary(g.scale(y, 1.0 / cap), "tanh"), cap)
        return y

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
        return self.output(g, x)
