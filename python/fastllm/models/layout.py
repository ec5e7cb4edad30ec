"""Tensor layouts llama.cpp accepts for several llama-like architectures, as mixins for Llama
subclasses (listed before Llama among the bases):

- FusedQKV: Q, K and V from `attn_q`/`attn_k`/`attn_v` or from one fused `attn_qkv` (llama.cpp's
  create_tensor_qkv and build_qkv: the fused product, times `attn_qkv.scale`, plus
  `attn_qkv.bias`, or else plus the three separate biases when all three are there).
- LongRope: Phi-3's per-layer rope frequency factors `rope_factors_long` / `rope_factors_short`,
  chosen by the context size (llama_model::get_rope_factors: long when the context exceeds
  `rope.scaling.original_context_length`), for phi3 always and for other architectures when
  `rope.scaling.type` is "longrope" (then in place of `rope_freqs`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..backends.base import Graph, KVSpec, Value, Weight
from ..errors import GGUFError
from .base import Config, KeyReader, part_name

QKV = ("attn_q", "attn_k", "attn_v")


def extend_config(cfg: Config, cls: type[Config], **extra: Any) -> Config:
    """cfg as an instance of the Config subclass cls, with extra fields set."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **extra)


class FusedQKV:
    """Q, K, V from separate or fused tensors (see the module docstring)."""

    cfg: Config
    w: dict[str, Weight]

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        # either layout: qkv() names what is missing
        sep = {f"blk.{i}.{t}.weight" for i in range(cfg.n_layer) for t in QKV}
        return [n for n in super().required_tensors(cfg) if n not in sep]

    @classmethod
    def optional_tensors(cls, cfg: Config) -> list[str]:
        return super().optional_tensors(cfg) + [
            f"blk.{i}.{t}" for i in range(cfg.n_layer)
            for t in ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_qkv.weight",
                      "attn_qkv.bias")]

    @classmethod
    def scalar_tensors(cls, cfg: Config) -> list[str]:
        return super().scalar_tensors(cfg) + [
            f"blk.{i}.attn_qkv.scale" for i in range(cfg.n_layer)]

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        why = "NVFP4 activation scale: llama.cpp loads it, no graph of it reads it"
        return super().ignored_tensors(cfg) | {
            f"blk.{i}.attn_qkv.input_scale": why for i in range(cfg.n_layer)}

    @classmethod
    def fused_tensors(cls, cfg: Config) -> dict[str, tuple[tuple[str, int], ...]]:
        q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        parts = (("q", q), ("k", kv), ("v", kv))
        return super().fused_tensors(cfg) | {
            f"blk.{i}.attn_qkv.{kind}": parts for i in range(cfg.n_layer)
            for kind in ("weight", "bias")}

    def qkv(self, g: Graph, x: Value, i: int) -> tuple[Value, Value, Value]:
        p = f"blk.{i}."
        fused = p + "attn_qkv.weight"
        if part_name(fused, "q") not in self.w:
            for t in QKV:
                if p + t + ".weight" not in self.w:
                    raise GGUFError(f"missing tensor {p + t + '.weight'!r} (and no fused "
                                    f"{fused!r})")
            return super().qkv(g, x, i)
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


@dataclass
class LongRopeConfig(Config):
    # rope.scaling.original_context_length (llama.cpp's n_ctx_orig_yarn; default the training
    # context): the context size past which the long factors apply
    n_ctx_orig: int = 0
    longrope: bool = False  # the long/short factor pair replaces rope_freqs


class LongRope:
    """Phi-3's long/short rope factors (see the module docstring). `ALWAYS`: the architecture
    reads them whatever rope.scaling.type says (phi3)."""

    ALWAYS = False
    cfg: LongRopeConfig
    w: dict[str, Weight]

    @classmethod
    def config(cls, md, path: str = "") -> LongRopeConfig:
        cfg = super().config(md, path)
        key = KeyReader(md, cls.arch, path)
        longrope = cls.ALWAYS or md.get(f"{cls.arch}.rope.scaling.type") == "longrope"
        return extend_config(cfg, LongRopeConfig,
                             n_ctx_orig=key("rope.scaling.original_context_length",
                                            cfg.n_ctx_train) or cfg.n_ctx_train,
                             longrope=longrope)

    @classmethod
    def optional_tensors(cls, cfg: LongRopeConfig) -> list[str]:
        names = super().optional_tensors(cfg)
        if cfg.longrope:
            names = [n for n in names if n != "rope_freqs.weight"]
            names.append("rope_factors_short.weight")
        return names

    @classmethod
    def ignored_tensors(cls, cfg: LongRopeConfig) -> dict[str, str]:
        names = super().ignored_tensors(cfg)
        if cfg.longrope:
            # the graph recorded at load reads the short factors; a model loaded with a context
            # past n_ctx_orig reads these in their place
            names["rope_factors_long.weight"] = (
                f"rope factors for contexts past rope.scaling.original_context_length "
                f"({cfg.n_ctx_orig}): llama.cpp reads them in place of rope_factors_short "
                f"there, and so does fastllm")
        return names

    def __init__(self, cfg: LongRopeConfig, weights: dict[str, Weight]):
        super().__init__(cfg, weights)
        self.long_context = False

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        # the one place a model learns its context size, before any graph it runs is recorded
        self.long_context = n_ctx > self.cfg.n_ctx_orig
        return super().kv_spec(n_ctx, n_batch)

    def rope_factors(self, layer: int) -> Weight | None:
        if not self.cfg.longrope:
            return super().rope_factors(layer)
        kind = "long" if self.long_context else "short"
        return self.w.get(f"rope_factors_{kind}.weight")
