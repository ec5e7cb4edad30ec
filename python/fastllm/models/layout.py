"""Tensor layouts llama.cpp accepts for several llama-like architectures, as mixins for Llama
subclasses (listed before Llama among the bases; the fused `attn_qkv`, which every one of them
accepts, is Llama's own: models/llama.py):

- LongRope: Phi-3's per-layer rope frequency factors `rope_factors_long` / `rope_factors_short`,
  chosen by the context size (llama_model::get_rope_factors: long when the context exceeds
  `rope.scaling.original_context_length`), for phi3 always and for other architectures when
  `rope.scaling.type` is "longrope" (then in place of `rope_freqs`).
- Yarn: YaRN rope scaling (`rope.scaling.type` "yarn"), as ggml's rope_yarn computes it with the
  parameters llama.cpp's context derives (llama-context.cpp). Its angle for pair i is the
  unscaled one times freq_scale * (1 - mix_i) + mix_i, mix_i a ramp over the pairs between the
  correction dimensions of beta_fast and beta_slow, and cos and sin are multiplied by one
  magnitude factor: so it is the ordinary rope op with per-pair frequency divisors (computed at
  load, beside any `rope_freqs`) and a scale, no new kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..backends.base import Graph, KVSpec, Value, Weight
from ..gguf import GGUFFile, TensorInfo
from ..quants import GGMLType, dequantize
from .base import Config, KeyReader


def extend_config(cfg: Config, cls: type[Config], **extra: Any) -> Config:
    """cfg as an instance of the Config subclass cls, with extra fields set."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **extra)


@dataclass
class LongRopeConfig(Config):
    # rope.scaling.original_context_length (llama.cpp's n_ctx_orig_yarn; default the training
    # context): the context size past which the long factors apply
    n_ctx_orig: int = 0
    longrope: bool = False  # the long/short factor pair replaces rope_freqs


class LongRope:
    """Phi-3's long/short rope factors (see the module docstring). `LONGROPE_ALWAYS`: the architecture
    reads them whatever rope.scaling.type says (phi3)."""

    LONGROPE_ALWAYS = False
    cfg: LongRopeConfig
    w: dict[str, Weight]

    @classmethod
    def config(cls, md, path: str = "") -> LongRopeConfig:
        cfg = super().config(md, path)
        key = KeyReader(md, cls.arch, path)
        longrope = cls.LONGROPE_ALWAYS or md.get(f"{cls.arch}.rope.scaling.type") == "longrope"
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


def yarn_corr_dims(n_rot: int, n_ctx_orig: int, base: float, beta_fast: float,
                   beta_slow: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims: the pair indices where the ramp starts and ends (the dimension
    whose wavelength fits beta rotations into the original context)."""
    def dim(beta: float) -> float:
        return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))

    return max(0.0, math.floor(dim(beta_fast))), min(n_rot - 1.0, math.ceil(dim(beta_slow)))


def yarn_divisors(n_rot: int, freq_scale: float, corr: tuple[float, float],
                  ext_factor: float) -> np.ndarray:
    """Per rotated pair i, what divides the unscaled angle p * base^(-2i/n_rot) under YaRN:
    1 / (freq_scale * (1 - mix) + mix), mix = ext_factor * ggml's rope_yarn_ramp (1 for the
    fast-turning pairs, kept; 0 for the slow ones, interpolated by freq_scale)."""
    i = np.arange(n_rot // 2, dtype=np.float64)  # ggml's i0 / 2
    y = (i - corr[0]) / max(0.001, corr[1] - corr[0])
    mix = (1.0 - np.clip(y, 0.0, 1.0)) * ext_factor
    return 1.0 / (freq_scale * (1.0 - mix) + mix)


def yarn_magnitude(freq_scale: float, log_mul: float, attn_factor: float) -> float:
    """What multiplies cos and sin: llama.cpp's yarn_attn_factor (llama_context: get_mscale of
    the factor, over get_mscale(factor, log_mul) when the file sets
    rope.scaling.yarn_log_multiplier, divided by 1 + 0.1 ln(factor), times rope.scaling.attn_factor)
    times the 1 + 0.1 ln(1 / freq_scale) of ggml's rope_yarn."""
    factor = 1.0 / freq_scale

    def get_mscale(scale: float, mscale: float) -> float:
        return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0

    m = get_mscale(factor, 1.0)
    if log_mul != 0.0:
        m /= get_mscale(factor, log_mul)
    m /= 1.0 + 0.1 * math.log(factor)
    return m * attn_factor * (1.0 + 0.1 * math.log(1.0 / freq_scale))


@dataclass
class YarnConfig(LongRopeConfig):
    yarn: bool = False  # rope.scaling.type "yarn" with a factor other than 1
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_log_mul: float = 0.0


YARN_FACTORS = "rope_freqs.weight[yarn]"  # the divisors computed at load (not a file tensor)


class Yarn:
    """YaRN rope scaling (see the module docstring); after LongRope among the bases. The keys
    are the ones llama.cpp's mistral3 reads (rope.scaling.yarn_beta_fast, yarn_beta_slow,
    yarn_log_multiplier); ext_factor is llama.cpp's default for a YaRN file, 1."""

    ROPE_SCALINGS = ("yarn",)
    cfg: YarnConfig
    w: dict[str, Weight]

    @classmethod
    def config(cls, md, path: str = "") -> YarnConfig:
        cfg = super().config(md, path)
        key = KeyReader(md, cls.arch, path)
        yarn = (md.get(f"{cls.arch}.rope.scaling.type") == "yarn"
                and cfg.rope_freq_scale != 1.0)
        return extend_config(cfg, YarnConfig, yarn=yarn,
                             yarn_beta_fast=key("rope.scaling.yarn_beta_fast", 32.0, float),
                             yarn_beta_slow=key("rope.scaling.yarn_beta_slow", 1.0, float),
                             yarn_log_mul=key("rope.scaling.yarn_log_multiplier", 0.0, float))

    @classmethod
    def weight_infos(cls, cfg: YarnConfig, f: GGUFFile) -> dict[str, TensorInfo]:
        infos = super().weight_infos(cfg, f)
        if cfg.yarn:
            corr = yarn_corr_dims(cfg.n_rot, cfg.n_ctx_orig, cfg.rope_base, cfg.yarn_beta_fast,
                                  cfg.yarn_beta_slow)
            div = yarn_divisors(cfg.n_rot, cfg.rope_freq_scale, corr, 1.0)
            ff = infos.get("rope_freqs.weight")
            if ff is not None:  # ggml divides by the file's factors first
                div = div * dequantize(ff.data, ff.type, ff.shape).reshape(-1)
            data = np.ascontiguousarray(div, np.float32)
            infos[YARN_FACTORS] = TensorInfo(YARN_FACTORS, GGMLType.F32, data.shape,
                                             data.view(np.uint8), f.path)
        return infos

    def rope_factors(self, layer: int) -> Weight | None:
        if not self.cfg.yarn:
            return super().rope_factors(layer)
        if "rope_freqs.weight" in self.w:
            self.scalars_read.add("rope_freqs.weight")  # read on the host into the divisors
        return self.w[YARN_FACTORS]

    def rope_scale(self, layer: int) -> float:
        return 1.0 if self.cfg.yarn else super().rope_scale(layer)

    def rope(self, g: Graph, x: Value, n_head: int, layer: int) -> Value:
        y = super().rope(g, x, n_head, layer)  # (times rope.scaling.attn_factor)
        if self.cfg.yarn:
            y = g.scale(y, yarn_magnitude(self.cfg.rope_freq_scale, self.cfg.yarn_log_mul, 1.0))
        return y
