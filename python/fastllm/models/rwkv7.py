"""`rwkv7`: RWKV-7 "Goose". Time mixing is the generalized delta rule: a per-head S x S state
decayed by a data-dependent w, corrected along kk (the normalized key) at the in-context
learning rate a, and written with v k^T; channel mixing is a squared-ReLU MLP on a token-shifted
input. Layer 0's value is mixed into every later layer's value (value residual).

The recording follows llama.cpp's src/models/rwkv7-base.cpp and rwkv.cpp's rwkv_att_v7 (the two
agree); tensor names and layouts are those of llama.cpp's converter (conversion/rwkv.py,
Rwkv7Model), which fastllm's convert_rwkv writes too.
"""

from __future__ import annotations

from typing import Any

from ..backends.base import Graph, Value
from .rwkv_common import GROUP_NORM_EPS, RwkvBase, RwkvConfig, rwkv_config

# x_prev mixes, in the order of the rows of time_mix_lerp_fused (rwkv.cpp's att.x_rwkvag)
_R, _W, _K, _V, _A, _G = range(6)


class Rwkv7(RwkvBase):
    arch = "rwkv7"
    LAYER_TENSORS = RwkvBase.LAYER_TENSORS + tuple(f"{t}.weight" for t in (
        "time_mix_w0", "time_mix_w1", "time_mix_w2", "time_mix_a0", "time_mix_a1", "time_mix_a2",
        "time_mix_lerp_fused", "time_mix_k_k", "time_mix_k_a", "time_mix_r_k",
        "time_mix_key", "time_mix_value", "time_mix_receptance", "time_mix_output",
        "channel_mix_lerp_k", "channel_mix_key", "channel_mix_value")) + (
        "time_mix_ln.weight", "time_mix_ln.bias")
    LAYER_VECTORS = RwkvBase.LAYER_VECTORS + tuple(f"{t}.weight" for t in (
        "time_mix_w0", "time_mix_a0", "time_mix_k_k", "time_mix_k_a")) + (
        "time_mix_ln.weight", "time_mix_ln.bias")

    @classmethod
    def config(cls, md: dict[str, Any], path: str = "") -> RwkvConfig:
        return rwkv_config(md, path, lora_decay=("attention.decay_lora_rank", ...),
                           lora_iclr=("attention.iclr_lora_rank", ...),
                           lora_value_res_mix=("attention.value_residual_mix_lora_rank", ...),
                           lora_gate=("attention.gate_lora_rank", 0))

    @classmethod
    def required_tensors(cls, cfg: RwkvConfig) -> list[str]:
        names = super().required_tensors(cfg)
        for i in range(1, cfg.n_layer):  # layer 0 has no value residual: its v0/v1/v2 (which
            # llama.cpp's converter writes as placeholders) are not read
            names += [f"blk.{i}.time_mix_v{j}.weight" for j in range(3)]
        return names

    @classmethod
    def optional_tensors(cls, cfg: RwkvConfig) -> list[str]:
        # the output gate's LoRA: time_mix applies it when the file has it
        return [f"blk.{i}.time_mix_g{j}.weight" for i in range(cfg.n_layer) for j in (1, 2)]

    @classmethod
    def ignored_tensors(cls, cfg: RwkvConfig) -> dict[str, str]:
        why = "layer 0 has no value residual: llama.cpp loads the placeholder and never reads it"
        return {f"blk.0.time_mix_v{j}.weight": why for j in range(3)}

    def __init__(self, cfg: RwkvConfig, weights):
        super().__init__(cfg, weights)
        for i in range(1, cfg.n_layer):
            self.check_vector(f"blk.{i}.time_mix_v0.weight")
        self._v_first: Value | None = None  # layer 0's value while a forward pass is recorded

    def lora(self, g: Graph, x: Value, p: str, fn: str | None = None) -> Value:
        """x @ {p}1 [-> fn] @ {p}2: the low-rank maps of RWKV-7."""
        h = g.matmul(x, self.w[p + "1.weight"])
        if fn is not None:
            h = g.unary(h, fn)
        return g.matmul(h, self.w[p + "2.weight"])

    def time_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}.time_mix_"
        mix = self.w[p + "lerp_fused.weight"]

        def xs(row: int) -> Value:
            return g.lerp(x, x_prev, mix, mu_row=row)

        xv = xs(_V)
        r = g.matmul(xs(_R), self.w[p + "receptance.weight"])
        w = g.unary(g.add(self.lora(g, xs(_W), p + "w", "tanh"), self.w[p + "w0.weight"]),
                    "decay7")
        k = g.matmul(xs(_K), self.w[p + "key.weight"])
        v = g.matmul(xv, self.w[p + "value.weight"])
        if i == 0:
            self._v_first = v
        else:
            mv = g.unary(g.add(self.lora(g, xv, p + "v"), self.w[p + "v0.weight"]), "sigmoid")
            v = g.lerp(v, self._v_first, mu_v=mv)  # v + (v_first - v) * mv
        a = g.unary(g.add(self.lora(g, xs(_A), p + "a"), self.w[p + "a0.weight"]), "sigmoid")
        kk = g.l2_norm(g.mul(k, self.w[p + "k_k.weight"]), 1e-12, c.head_size)
        k = g.lerp(k, g.mul(k, a), self.w[p + "k_a.weight"])  # k * (1 + (a - 1) * k_a)
        y = g.wkv7(r, w, k, v, g.scale(kk, -1.0), g.mul(kk, a), f"blk.{i}.wkv", c.head_size)
        y = g.layer_norm(y, self.w[p + "ln.weight"], self.w[p + "ln.bias"], GROUP_NORM_EPS,
                         group=c.head_size)
        y = g.add(y, g.wkv7_bonus(r, k, v, self.w[p + "r_k.weight"], c.head_size))
        if p + "g1.weight" in self.w:  # the gate LoRA is optional in llama.cpp
            y = g.mul(y, self.lora(g, xs(_G), p + "g", "sigmoid"))
        return g.matmul(y, self.w[p + "output.weight"])

    def channel_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        p = f"blk.{i}.channel_mix_"
        xk = g.lerp(x, x_prev, self.w[p + "lerp_k.weight"])
        h = g.unary(g.matmul(xk, self.w[p + "key.weight"]), "relu_sqr")
        return g.matmul(h, self.w[p + "value.weight"])
