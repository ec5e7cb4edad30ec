"""`granite`: IBM Granite 3.x dense models as llama.cpp's src/models/granite.cpp reads them.

The llama block (normal rope, Q/K/V separate or fused with optional biases, optional
`attn_output`, `ffn_gate`/`ffn_up`/`ffn_down` biases, optional `rope_freqs`, or long/short
rope factors when `rope.scaling.type` is "longrope") with Granite's four multipliers, each
read as llama.cpp reads it:

- `embedding_scale` multiplies the token embeddings; 0 (or absent) means none;
- `residual_scale` multiplies the attention and FFN outputs before each residual add; 0 (or
  absent) means none;
- `attention.scale` is the query scale; 0 (or absent) means 1/sqrt(head size);
- `logit_scale` divides the logits; the key is required (llama.cpp fails without it), and 0
  would divide by zero, so it is an error here.

With experts (expert_count > 0, Granite 3.x MoE) the FFN is models/moe.py's (softmax router,
normalized weights), plus, where `expert_shared_feed_forward_length` is non-zero (Granite MoE
Shared), a dense SwiGLU FFN of `ffn_{gate,up,down}_shexp` added to the experts' sum; the
residual scale applies to their sum. llama.cpp's granite graph passes neither the experts'
per-expert `.scale` nor the shared expert's `.scale` (it loads both): they are left out here too.

`rope.scaling.finetuned` false turns rope off in every layer (llama.cpp's granite takes it as
the switch for rope, default true). The FFN's per-tensor `.scale` is loaded by llama.cpp but its
granite graph does not apply it. Granite Vision's deepstack inputs (`deepstack_mapping` entries
>= 0) need image embeddings and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Graph, Value
from ..errors import GGUFError, UnsupportedError
from .base import Config, KeyReader
from .layout import LongRope, LongRopeConfig, extend_config
from .llama import ATTN, FFN, Llama
from .moe import EXPS

SHEXP = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")


@dataclass
class GraniteConfig(LongRopeConfig):
    embedding_scale: float = 0.0  # 0: none
    residual_scale: float = 0.0  # 0: none
    attention_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    logit_scale: float = 1.0
    rope: bool = True  # rope.scaling.finetuned
    n_ff_shexp: int = 0  # MoE layers' shared expert (expert_shared_feed_forward_length; 0: none)


class Granite(LongRope, Llama):
    arch = "granite"
    SCALED = ATTN
    EXPERT_SCALED = False  # its build_moe_ffn call passes no per-expert scales
    cfg: GraniteConfig

    @classmethod
    def config(cls, md, path: str = "") -> GraniteConfig:
        cfg = super().config(md, path)
        key = KeyReader(md, cls.arch, path)
        logit_scale = key("logit_scale", kind=float)
        if logit_scale == 0.0:
            raise GGUFError(f"{path}: {cls.arch}.logit_scale is 0 (the logits are divided by it)")
        ds = md.get(f"{cls.arch}.deepstack_mapping")
        if ds is not None and hasattr(ds, "__len__") and any(int(v) >= 0 for v in ds):
            raise UnsupportedError(f"{path}: {cls.arch}.deepstack_mapping has entries >= 0: "
                                   f"Granite Vision's image-embedding inputs are not supported")
        return extend_config(
            cfg, GraniteConfig,
            embedding_scale=key("embedding_scale", 0.0, float),
            residual_scale=key("residual_scale", 0.0, float),
            attention_scale=key("attention.scale", 0.0, float),
            logit_scale=logit_scale,
            rope=bool(md.get(f"{cls.arch}.rope.scaling.finetuned", True)),
            n_ff_shexp=key("expert_shared_feed_forward_length", 0) if cls.moe(cfg) else 0)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        return super().required_tensors(cfg) + [
            f"blk.{i}.{t}.weight" for i in range(cfg.n_layer) for t in SHEXP if cfg.n_ff_shexp]

    @classmethod
    def optional_tensors(cls, cfg: Config) -> list[str]:
        names = super().optional_tensors(cfg)
        if not cfg.rope:  # llama.cpp loads rope_freqs and the rope factors but never reads them
            names = [n for n in names if not n.startswith("rope_")]
        return names

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        why = "FFN scale: llama.cpp loads it, its granite graph does not apply it"
        names = super().ignored_tensors(cfg) | {
            f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in FFN}
        if cls.moe(cfg):
            why = "per-expert scale: llama.cpp loads it, its granite graph does not apply it"
            names |= {f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in EXPS}
        if cfg.n_ff_shexp:
            why = "shared expert's scale: llama.cpp loads it, its granite graph does not apply it"
            nvfp4 = "NVFP4 activation scale: llama.cpp loads it, no graph of it reads it"
            names |= {f"blk.{i}.{t}.scale": why for i in range(cfg.n_layer) for t in SHEXP}
            names |= {f"blk.{i}.{t}.input_scale": nvfp4 for i in range(cfg.n_layer)
                      for t in SHEXP}
        if not cfg.rope:
            off = "rope factors: rope.scaling.finetuned is false, so llama.cpp applies no rope"
            names |= {n: off for n in ("rope_freqs.weight", "rope_factors_long.weight",
                                       "rope_factors_short.weight")}
        return names

    def embed(self, g: Graph) -> Value:
        x = super().embed(g)
        s = self.cfg.embedding_scale
        return g.scale(x, s) if s != 0.0 else x

    def rope(self, g: Graph, x: Value, n_head: int, layer: int) -> Value:
        return super().rope(g, x, n_head, layer) if self.cfg.rope else x

    def attn_scale(self) -> float:
        return self.cfg.attention_scale or super().attn_scale()

    def _residual(self, g: Graph, y: Value) -> Value:
        s = self.cfg.residual_scale
        return g.scale(y, s) if s != 0.0 else y

    def attention_block(self, g: Graph, x: Value, i: int) -> Value:
        return self._residual(g, super().attention_block(g, x, i))

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        y = super().ffn_block(g, x, i)
        if self.cfg.n_ff_shexp:  # Granite MoE Shared: a dense SwiGLU FFN beside the experts
            p = f"blk.{i}."
            gate = self.product(g, x, p + "ffn_gate_shexp")
            up = self.product(g, x, p + "ffn_up_shexp")
            y = g.add(y, self.product(g, g.swiglu(gate, up), p + "ffn_down_shexp"))
        return self._residual(g, y)

    def output(self, g: Graph, x: Value) -> Value:
        y = super().output(g, x)
        s = self.cfg.logit_scale
        return g.scale(y, 1.0 / s) if s != 1.0 else y
