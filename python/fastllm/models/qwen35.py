"""`qwen35`: Qwen3.5 / 3.6, a hybrid of Gated DeltaNet and gated full attention. Most layers
(`attention.recurrent_layers`, by default three in four) are linear attention: a fused q/k/v
projection through a short causal convolution (its last K-1 inputs are the conv state), then the
gated delta rule over a per-head S x S state (the delta state), normed per head and gated by
silu(z). The others are full attention whose query projection also yields a per-head output gate
(sigmoid), with per-head RMSNorm on q and k and rope over the first rope.dimension_count dims.
Each layer: x += mixer(norm(x)); x += ffn(post_attention_norm(x)).

The recording follows llama.cpp's src/models/qwen35.cpp and delta-net-base.cpp; tensor names
and layouts are those of llama.cpp's converter. Each DeltaNet layer N keeps two state buffers,
`blk.N.conv` ((K-1) x conv channels) and `blk.N.ssm` (value heads x S x S); attention layers keep
a KV cache (KVSpec sizes of 0 mark the layers that have none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..backends.base import Graph, KVSpec, Value
from ..errors import GGUFError, UnsupportedError
from .base import Config, KeyReader
from .llama import Llama

# the products of each kind of layer; every one may carry a `.scale` (build_lora_mm's w_s) and
# an `.input_scale` (NVFP4's, which no llama.cpp graph reads)
ATTN_PRODUCTS = ("attn_q", "attn_k", "attn_v", "attn_output")
DELTA_PRODUCTS = ("attn_qkv", "attn_gate", "ssm_alpha", "ssm_beta", "ssm_out")
FFN_PRODUCTS = ("ffn_gate", "ffn_up", "ffn_down")
DELTA_TENSORS = ("attn_qkv.weight", "attn_gate.weight", "ssm_conv1d.weight", "ssm_dt.bias",
                 "ssm_a", "ssm_alpha.weight", "ssm_beta.weight", "ssm_norm.weight",
                 "ssm_out.weight")
# (Q, K, V, separate or fused, are Llama.qkv_tensors, optional as a whole: Llama.qkv names what
# is missing)
ATTN_TENSORS = ("attn_output.weight", "attn_q_norm.weight", "attn_k_norm.weight")


@dataclass
class Qwen35Config(Config):
    """Config plus the DeltaNet shapes (llama.cpp's ssm_* hparams) and the layer kinds."""

    d_conv: int = 4  # ssm.conv_kernel
    d_inner: int = 0  # ssm.inner_size: value heads x their size
    d_state: int = 128  # ssm.state_size: the head size of keys (and values)
    n_v_heads: int = 0  # ssm.time_step_rank
    n_k_heads: int = 0  # ssm.group_count
    recurrent_layers: tuple[bool, ...] = ()
    attn_scale: float = 0.0  # attention.scale; 0 means 1/sqrt(head_dim)
    expert_weights_scale: float = 0.0  # qwen35moe: the router weights' scale (0 and 1: none)

    @property
    def conv_dim(self) -> int:
        return 2 * self.n_k_heads * self.d_state + self.d_inner


def recurrent_layers(md: dict[str, Any], arch: str, n_layer: int, path: str) -> tuple[bool, ...]:
    """llama.cpp's is_recr: the per-layer flags of attention.recurrent_layers, or every layer
    but each full_attention_interval-th (4 by default)."""
    key = f"{arch}.attention.recurrent_layers"
    if key in md:
        flags = md[key]
        if isinstance(flags, (str, bytes)) or not hasattr(flags, "__len__"):
            raise GGUFError(f"{path}: {key} is not an array")
        if len(flags) != n_layer:
            raise GGUFError(f"{path}: {key} has {len(flags)} values for {n_layer} layers")
        return tuple(bool(int(f)) for f in flags)
    every = int(md.get(f"{arch}.full_attention_interval", 4))
    if every <= 0:
        raise GGUFError(f"{path}: {arch}.full_attention_interval is {every}")
    return tuple((i + 1) % every != 0 for i in range(n_layer))


def check_imrope(sections, n_rot: int, path: str, arch: str) -> None:
    """Qwen3.5's rope is ggml's interleaved multimodal rope (IMROPE). For text every position
    component is the token's position except the fourth, which is 0; a rotation pair reads the
    fourth (and stays unrotated) unless its sector (pair index mod the sections' sum) is covered
    by sections 0..2 (sector % 3 == c and sector < 3 * sections[c]). When every pair is covered
    the rope is plain NeoX rope, which is what fastllm runs; anything else is refused."""
    secs = [int(s) for s in sections][:4] + [0] * (4 - len(sections))
    total = sum(secs)
    if total <= 0:
        raise GGUFError(f"{path}: {arch}.rope.dimension_sections {list(secs)} sum to 0")
    for i in range(n_rot // 2):
        sector = i % total
        if not sector < 3 * secs[sector % 3]:
            raise UnsupportedError(f"{path}: {arch}.rope.dimension_sections {secs} leave rope "
                                   f"pair {i} of {n_rot // 2} on the fourth (unrotated) "
                                   f"component; fastllm's rope rotates every pair of a text "
                                   f"position")


class Qwen35(Llama):
    arch = "qwen35"
    rope_neox = True  # IMROPE rotates NeoX pairs (i, i + n_rot/2); check_imrope says why
    BIASED = ("attn_q", "attn_k", "attn_v")
    SCALED = ATTN_PRODUCTS + DELTA_PRODUCTS + FFN_PRODUCTS
    GLOBAL_OPTIONAL = ("output.weight",)
    cfg: Qwen35Config

    @classmethod
    def config(cls, md, path: str = "") -> Qwen35Config:
        base = Config.from_gguf(md, path)
        arch = base.arch
        key = KeyReader(md, arch, path)
        cfg = Qwen35Config(**{f: getattr(base, f) for f in Config.__dataclass_fields__})
        cfg.d_conv = key("ssm.conv_kernel")
        cfg.d_inner = key("ssm.inner_size")
        cfg.d_state = key("ssm.state_size")
        cfg.n_v_heads = key("ssm.time_step_rank")
        cfg.n_k_heads = key("ssm.group_count")
        cfg.attn_scale = key("attention.scale", 0.0, float)
        cfg.recurrent_layers = recurrent_layers(md, arch, cfg.n_layer, path)
        if (cfg.d_conv < 2 or min(cfg.d_inner, cfg.d_state, cfg.n_v_heads, cfg.n_k_heads) <= 0
                or cfg.d_inner % cfg.n_v_heads or cfg.n_v_heads % cfg.n_k_heads):
            raise GGUFError(f"{path}: inconsistent {arch}.ssm.* shape (conv_kernel {cfg.d_conv}, "
                            f"inner_size {cfg.d_inner}, state_size {cfg.d_state}, time_step_rank "
                            f"{cfg.n_v_heads}, group_count {cfg.n_k_heads})")
        if cfg.d_inner // cfg.n_v_heads != cfg.d_state:
            # llama.cpp's delta net asserts S_k == S_v too
            raise UnsupportedError(f"{path}: {arch} value heads of {cfg.d_inner // cfg.n_v_heads}"
                                   f" differ from the key heads' ssm.state_size {cfg.d_state}")
        sections = md.get(f"{arch}.rope.dimension_sections")
        if sections is not None:
            check_imrope(sections, cfg.n_rot, path, arch)
        return cfg

    # -- tensors -------------------------------------------------------------------------------
    @classmethod
    def attention_layers(cls, cfg: Qwen35Config) -> list[int]:
        # llama.cpp's create_tensor_qkv is for the full-attention layers only; a DeltaNet layer's
        # attn_qkv is its own fused projection (q, k, v of the delta rule), read whole
        return [i for i, rec in enumerate(cfg.recurrent_layers) if not rec]

    @classmethod
    def qkv_rows(cls, cfg: Qwen35Config) -> tuple[int, int, int]:
        # the query part holds each head's query and output gate (create_tensor_qkv's
        # n_embd_head_k * n_head * 2)
        q, k, v = super().qkv_rows(cfg)
        return 2 * q, k, v

    @classmethod
    def ffn_tensors(cls, cfg: Qwen35Config, i: int) -> list[str]:
        return [f"blk.{i}.{t}.weight" for t in FFN_PRODUCTS]

    @classmethod
    def ffn_products(cls, cfg: Qwen35Config) -> tuple[str, ...]:
        return FFN_PRODUCTS

    @classmethod
    def required_tensors(cls, cfg: Qwen35Config) -> list[str]:
        names = ["token_embd.weight", "output_norm.weight"]
        for i, rec in enumerate(cfg.recurrent_layers):
            names += [f"blk.{i}.attn_norm.weight", f"blk.{i}.post_attention_norm.weight"]
            names += [f"blk.{i}.{t}" for t in (DELTA_TENSORS if rec else ATTN_TENSORS)]
            names += cls.ffn_tensors(cfg, i)
        return names

    @classmethod
    def optional_tensors(cls, cfg: Qwen35Config) -> list[str]:
        names = list(cls.GLOBAL_OPTIONAL) + cls.qkv_tensors(cfg)
        for i, rec in enumerate(cfg.recurrent_layers):
            if not rec:
                names += [f"blk.{i}.{t}.bias" for t in cls.BIASED]
        return names

    @classmethod
    def _products(cls, cfg: Qwen35Config, i: int) -> tuple[str, ...]:
        # an attention layer's fused attn_qkv is another product than a DeltaNet layer's
        mixer = DELTA_PRODUCTS if cfg.recurrent_layers[i] else ATTN_PRODUCTS + ("attn_qkv",)
        return mixer + cls.ffn_products(cfg)

    @classmethod
    def scalar_tensors(cls, cfg: Qwen35Config) -> list[str]:
        names = ["output.scale"]
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.scale" for t in cls._products(cfg, i)]
        return names

    @classmethod
    def ignored_tensors(cls, cfg: Qwen35Config) -> dict[str, str]:
        why = "NVFP4 activation scale: llama.cpp loads it, no graph of it reads it"
        return {f"blk.{i}.{t}.input_scale": why for i in range(cfg.n_layer)
                for t in cls._products(cfg, i)}

    # -- memory --------------------------------------------------------------------------------
    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        c = self.cfg
        kv = c.n_head_kv * c.head_dim
        state: list[tuple[str, int]] = []
        for i, rec in enumerate(c.recurrent_layers):
            if rec:
                state += [(f"blk.{i}.conv", (c.d_conv - 1) * c.conv_dim),
                          (f"blk.{i}.ssm", c.n_v_heads * c.d_state * c.d_state)]
        rec = c.recurrent_layers
        return KVSpec(n_ctx, tuple(0 if r else kv for r in rec),
                      tuple(0 if r else n_ctx for r in rec), tuple(state))

    # -- the graph -----------------------------------------------------------------------------
    def attn_scale(self) -> float:
        s = self.cfg.attn_scale
        return s if s != 0.0 else 1.0 / math.sqrt(self.cfg.head_dim)

    def attention_block(self, g: Graph, x: Value, i: int) -> Value:
        """Gated full attention: attn_q yields, per head, the query then the output gate."""
        c, p, d = self.cfg, f"blk.{i}.", self.cfg.head_dim
        qg, k, v = self.qkv(g, x, i)  # qg: (n, n_head * 2 * head_dim)
        q = g.rms_norm(g.slice_cols(qg, 0, d, 2 * d), self.w[p + "attn_q_norm.weight"],
                       c.rms_eps, group=d)
        gate = g.slice_cols(qg, d, d, 2 * d)
        k = g.rms_norm(k, self.w[p + "attn_k_norm.weight"], c.rms_eps, group=d)
        q, k = self.rope(g, q, c.n_head, i), self.rope(g, k, c.n_head_kv, i)
        g.kv_store(i, k, v)
        a = g.attention(q, i, n_head=c.n_head, n_kv_head=c.n_head_kv, head_dim=d,
                        scale=self.attn_scale())
        return self.product(g, g.mul(a, g.unary(gate, "sigmoid")), p + "attn_output")

    def delta_block(self, g: Graph, x: Value, i: int) -> Value:
        """Gated DeltaNet linear attention (llama.cpp's build_layer_attn_linear): the fused
        projection through the causal convolution and silu, then the gated delta rule (which
        splits q, k, v, l2-normalizes q and k, and makes the decay and beta from their
        projections), normed per head and gated by silu(z)."""
        c, p, s = self.cfg, f"blk.{i}.", self.cfg.d_state
        qkv = self.product(g, x, p + "attn_qkv")  # (n, conv_dim): q, k, v side by side
        z = self.product(g, x, p + "attn_gate")  # (n, d_inner)
        beta = self.product(g, x, p + "ssm_beta")  # (n, n_v_heads)
        alpha = self.product(g, x, p + "ssm_alpha")  # (n, n_v_heads)
        conv = g.ssm_conv(qkv, self.w[p + "ssm_conv1d.weight"], p + "conv", silu=True)
        o = g.gated_delta(conv, alpha, beta, self.w[p + "ssm_dt.bias"], self.w[p + "ssm_a"],
                          p + "ssm", head_dim=s, n_k_heads=c.n_k_heads, eps=c.rms_eps)
        o = g.norm_gate(o, self.w[p + "ssm_norm.weight"], z, c.rms_eps, group=s)
        return self.product(g, o, p + "ssm_out")

    def output(self, g: Graph, x: Value) -> Value:
        y = g.matmul(x, self.output_weight())
        s = self.scalar("output.scale")
        return g.scale(y, s) if s is not None else y

    def forward(self, g: Graph, all_logits: bool) -> Value:
        c = self.cfg
        x = self.embed(g)
        for i, rec in enumerate(c.recurrent_layers):
            p = f"blk.{i}."
            h = g.rms_norm(x, self.w[p + "attn_norm.weight"], c.rms_eps)
            x = g.add(x, self.delta_block(g, h, i) if rec else self.attention_block(g, h, i))
            h = g.rms_norm(x, self.w[p + "post_attention_norm.weight"], c.rms_eps)
            x = g.add(x, self.ffn_block(g, h, i))
        if not all_logits:
            x = g.last_row(x)
        x = g.rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        return self.output(g, x)
