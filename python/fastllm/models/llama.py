"""`llama`: Llama 2/3/3.1/3.2, Mistral, TinyLlama, SmolLM. The plain pre-norm decoder that qwen2,
qwen3 and gemma3 extend: RMSNorm, rotary attention with GQA, SwiGLU feed-forward.

Tensor names are GGUF's (`blk.N.attn_q.weight`, ...), so loading needs no renaming table. Which
optional tensors each architecture reads follows llama.cpp (src/models/<arch>.cpp and the
generic pass of src/llama-model.cpp): biases on the products, per-tensor `.scale` multipliers
(shape {1}, NVFP4's second-level scale, but a plain factor on any type), `output.bias`,
`rope_freqs`. A product with both is computed as llama.cpp does: attention's q/k/v and output
as (x @ W) * scale + bias (llm_graph_context::build_qkv, build_attn), the FFN's as
(x @ W + bias) * scale (build_ffn).

Q, K and V come from `attn_q`/`attn_k`/`attn_v` or from one fused `attn_qkv` whose rows are
theirs one after the other. llama.cpp's loader of every architecture built on this class here
(llama with or without experts, qwen2, qwen3, qwen3moe, gemma3, gpt-oss, phi3, smollm3,
granite, mistral3, and the full-attention layers of qwen35/qwen35moe) creates them through
llama_model_base::create_tensor_qkv, and its graphs read them through
llm_graph_context::build_qkv: the fused product, times `attn_qkv.scale`, plus `attn_qkv.bias`,
or else plus the three separate biases when all three are there. The fused tensor is loaded as
three row blocks (Architecture.fused_tensors), so the products are the separate layout's and
what follows them (per-head norms, qwen35's gate, gpt-oss's sinks) is untouched.
"""

from __future__ import annotations

import math

from ..backends.base import Graph, Value, Weight
from ..errors import GGUFError
from .base import INPUT_SCALED, Architecture, Config, part_name
from .moe import Routing, moe_ffn, moe_tensors

ATTN = ("attn_q", "attn_k", "attn_v", "attn_output")
QKV = ("attn_q", "attn_k", "attn_v")
FFN = ("ffn_gate", "ffn_up", "ffn_down")


class Llama(Architecture):
    arch = "llama"
    # llama.cpp's convert permutes Q/K rows for llama so that rotation pairs are adjacent
    # (ggml "normal" rope); qwen2/qwen3/gemma3 keep HF order and use NeoX pairs (i, i + n/2).
    rope_neox = False
    # the layer products whose `.bias` and `.scale` the architecture's graph applies in llama.cpp
    BIASED: tuple[str, ...] = ATTN + FFN
    SCALED: tuple[str, ...] = ATTN + FFN
    # optional tensors outside the layers
    GLOBAL_OPTIONAL: tuple[str, ...] = ("output.weight", "rope_freqs.weight")
    # the norm before each layer's feed-forward (gpt-oss names it post_attention_norm)
    FFN_NORM = "ffn_norm"

    @classmethod
    def config(cls, md, path: str = "") -> Config:
        cfg = super().config(md, path)
        if cfg.n_rot != cfg.head_dim:
            # llama.cpp refuses these files too ("invalid n_rot"; qwen2/qwen3: an assertion)
            raise GGUFError(f"{path}: {cls.arch}.rope.dimension_count {cfg.n_rot} differs from "
                            f"the head size {cfg.head_dim}")
        return cfg

    # MoE layers where expert_count > 0 (Mixtral's layout; of the llama-like architectures,
    # llama.cpp's graphs of llama, granite, mistral3 and qwen3moe have them: the others set
    # EXPERTS False)
    EXPERTS = True
    # their router: llama.cpp's llama graph passes softmax gating and normalized weights to
    # build_moe_ffn as constants
    ROUTING = Routing(gating="softmax", norm=True)
    # whether its graph passes the experts' per-expert `.scale` tensors to build_moe_ffn
    EXPERT_SCALED = True

    # -- Q, K and V, separate or fused (see the module docstring) ------------------------------
    @classmethod
    def attention_layers(cls, cfg: Config) -> list[int]:
        """The layers whose attention llama.cpp creates with create_tensor_qkv."""
        return list(range(cfg.n_layer))

    @classmethod
    def qkv_rows(cls, cfg: Config) -> tuple[int, int, int]:
        """The rows of Q, K and V: the parts of a fused attn_qkv, in storage order."""
        kv = cfg.n_head_kv * cfg.head_dim
        return cfg.n_head * cfg.head_dim, kv, kv

    @classmethod
    def qkv_tensors(cls, cfg: Config) -> list[str]:
        """Both layouts' weights and the fused bias, all optional: qkv() names what is
        missing (the separate biases are BIASED's, the fused scale a scalar_tensors one)."""
        return [f"blk.{i}.{t}" for i in cls.attention_layers(cfg)
                for t in ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_qkv.weight",
                          "attn_qkv.bias")]

    @classmethod
    def fused_tensors(cls, cfg: Config) -> dict[str, tuple[tuple[str, int], ...]]:
        parts = tuple(zip("qkv", cls.qkv_rows(cfg)))
        return super().fused_tensors(cfg) | {
            f"blk.{i}.attn_qkv.{kind}": parts for i in cls.attention_layers(cfg)
            for kind in ("weight", "bias")}

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        sep = {f"blk.{i}.{t}.weight" for i in range(cfg.n_layer) for t in QKV}
        names = [n for n in super().required_tensors(cfg) if n not in sep]
        if not cls.moe(cfg):
            return names
        dense = {f"blk.{i}.{t}.weight" for i in range(cfg.n_layer) for t in FFN}
        return [n for n in names if n not in dense] + [
            n for i in range(cfg.n_layer) for n in moe_tensors(cfg, i)[0]]

    @classmethod
    def optional_tensors(cls, cfg: Config) -> list[str]:
        names = list(cls.GLOBAL_OPTIONAL) + cls.qkv_tensors(cfg)
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.bias" for t in cls.BIASED]
            if cls.moe(cfg):
                names += moe_tensors(cfg, i, scales=cls.EXPERT_SCALED)[1]
        return names

    @classmethod
    def scalar_tensors(cls, cfg: Config) -> list[str]:
        # llama.cpp's generic pass loads attn_qkv.scale wherever a fused attn_qkv is
        return [f"blk.{i}.{t}.scale" for i in range(cfg.n_layer) for t in cls.SCALED] + [
            f"blk.{i}.attn_qkv.scale" for i in cls.attention_layers(cfg)]

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        why = "NVFP4 activation scale: llama.cpp loads it, no graph of it reads it"
        return {f"blk.{i}.{t}.input_scale": why for i in range(cfg.n_layer)
                for t in INPUT_SCALED} | {
            f"blk.{i}.attn_qkv.input_scale": why for i in cls.attention_layers(cfg)}

    def opt(self, name: str) -> Weight | None:
        """An optional tensor, or None."""
        return self.w.get(name)

    def product(self, g: Graph, x: Value, name: str, bias_then_scale: bool = False) -> Value:
        """x @ `name.weight`, with the tensor's `.scale` and `.bias` where the file has them and
        the architecture applies them (SCALED, BIASED)."""
        kind = name.rsplit(".", 1)[-1]
        y = g.matmul(x, self.w[name + ".weight"])
        s = self.scalar(name + ".scale") if kind in self.SCALED else None
        b = self.opt(name + ".bias") if kind in self.BIASED else None
        if s is not None and not bias_then_scale:
            y = g.scale(y, s)
        if b is not None:
            y = g.add(y, b)
        if s is not None and bias_then_scale:
            y = g.scale(y, s)
        return y

    def qkv(self, g: Graph, x: Value, i: int) -> tuple[Value, Value, Value]:
        """Q, K, V of layer i (n, rows) from the separate or the fused tensors."""
        p = f"blk.{i}."
        fused = p + "attn_qkv.weight"
        if part_name(fused, "q") not in self.w:
            for t in QKV:
                if p + t + ".weight" not in self.w:
                    raise GGUFError(f"missing tensor {p + t + '.weight'!r} (and no fused "
                                    f"{fused!r})")
            q, k, v = (self.product(g, x, p + t) for t in QKV)
            return q, k, v
        s = self.scalar(p + "attn_qkv.scale")
        fb = p + "attn_qkv.bias"
        if part_name(fb, "q") in self.w:
            biases = [self.w[part_name(fb, t)] for t in "qkv"]
        else:  # separate biases beside the fused weight count only all three together
            biases = [self.w.get(p + t + ".bias") for t in QKV]
            if any(b is None for b in biases):
                biases = [None] * 3
        out = []
        for t, b in zip("qkv", biases):
            y = g.matmul(x, self.w[part_name(fused, t)])
            if s is not None:
                y = g.scale(y, s)
            out.append(y if b is None else g.add(y, b))
        return out[0], out[1], out[2]

    def attention_block(self, g: Graph, x: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}."
        q, k, v = self.qkv(g, x, i)
        qn, kn = self.opt(p + "attn_q_norm.weight"), self.opt(p + "attn_k_norm.weight")
        if qn is not None:
            q = g.rms_norm(q, qn, c.rms_eps, group=c.head_dim)
        if kn is not None:
            k = g.rms_norm(k, kn, c.rms_eps, group=c.head_dim)
        q, k = self.rope(g, q, c.n_head, i), self.rope(g, k, c.n_head_kv, i)
        g.kv_store(i, k, v)
        a = g.attention(q, i, n_head=c.n_head, n_kv_head=c.n_head_kv, head_dim=c.head_dim,
                        scale=self.attn_scale(), window=self.window(i))
        return self.product(g, a, p + "attn_output")

    def rope(self, g: Graph, x: Value, n_head: int, layer: int) -> Value:
        c = self.cfg
        y = g.rope(x, n_head=n_head, head_dim=c.head_dim, n_rot=c.n_rot,
                   base=self.rope_base(layer), freq_scale=self.rope_scale(layer),
                   neox=self.rope_neox, freq_factors=self.rope_factors(layer))
        if c.rope_attn_factor != 1.0:  # ggml's rope multiplies cos and sin by it
            y = g.scale(y, c.rope_attn_factor)
        return y

    def rope_factors(self, layer: int) -> Weight | None:
        """The frequency divisors of the layer's rope (llama3-style `rope_freqs`), or None."""
        if "rope_freqs.weight" in self.GLOBAL_OPTIONAL:
            return self.opt("rope_freqs.weight")
        return None

    def rope_base(self, layer: int) -> float:
        return self.cfg.rope_base

    def rope_scale(self, layer: int) -> float:
        return self.cfg.rope_freq_scale

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.head_dim)

    def window(self, layer: int) -> int:
        return 0

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        if self.moe(self.cfg):
            return moe_ffn(self, g, x, i, self.ROUTING)
        p = f"blk.{i}."
        gate = self.product(g, x, p + "ffn_gate", bias_then_scale=True)
        up = self.product(g, x, p + "ffn_up", bias_then_scale=True)
        return self.product(g, g.swiglu(gate, up), p + "ffn_down", bias_then_scale=True)

    def embed(self, g: Graph) -> Value:
        return g.get_rows(self.w["token_embd.weight"], g.tokens)

    def output_weight(self):
        # tied embeddings (SmolLM, Llama 3.2 1B/3B) store no output.weight
        return self.opt("output.weight") or self.w["token_embd.weight"]

    def output(self, g: Graph, x: Value) -> Value:
        """The LM head: output_norm'd x -> logits."""
        y = g.matmul(x, self.output_weight())
        if "output.bias" in self.GLOBAL_OPTIONAL and self.opt("output.bias") is not None:
            y = g.add(y, self.w["output.bias"])
        return y

    def forward(self, g: Graph, all_logits: bool) -> Value:
        c = self.cfg
        x = self.embed(g)
        for i in range(c.n_layer):
            p = f"blk.{i}."
            h = g.rms_norm(x, self.w[p + "attn_norm.weight"], c.rms_eps)
            x = g.add(x, self.attention_block(g, h, i))
            h = g.rms_norm(x, self.w[p + self.FFN_NORM + ".weight"], c.rms_eps)
            x = g.add(x, self.ffn_block(g, h, i))
        if not all_logits:
            x = g.last_row(x)
        x = g.rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        return self.output(g, x)
