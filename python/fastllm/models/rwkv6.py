"""`rwkv6`: RWKV-6 "Finch". Time mixing keeps a per-head S x S state of k v^T decayed by a
data-dependent w = exp(-exp(...)), read with r plus a bonus u (time_first) for the current
token; the token-shift mixes are data-dependent through a five-way LoRA. Channel mixing is a
squared-ReLU MLP gated by sigmoid(r).

The recording follows llama.cpp's src/models/rwkv6-base.cpp and rwkv6.cpp and rwkv.cpp's
rwkv_att_v6 (the two agree); tensor names and layouts are those of llama.cpp's converter
(conversion/rwkv.py, Rwkv6Model), which fastllm's convert_rwkv writes too.
"""

from __future__ import annotations

from typing import Any

from ..backends.base import Graph, Value
from ..errors import GGUFError
from .rwkv_common import GROUP_NORM_EPS, RwkvBase, RwkvConfig, rwkv_config

# the five data-dependent mixes, in the order of time_mix_w1/w2's blocks and of the rows of
# time_mix_lerp_fused (conversion/rwkv.py stacks "w", "k", "v", "r", "g")
_MIXES = ("w", "k", "v", "r", "g")


class Rwkv6(RwkvBase):
    arch = "rwkv6"
    LAYER_TENSORS = RwkvBase.LAYER_TENSORS + tuple(f"{t}.weight" for t in (
        "time_mix_w1", "time_mix_w2", "time_mix_lerp_x", "time_mix_first", "time_mix_decay",
        "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_key", "time_mix_value",
        "time_mix_receptance", "time_mix_gate", "time_mix_output", "channel_mix_lerp_k",
        "channel_mix_lerp_r", "channel_mix_key", "channel_mix_value",
        "channel_mix_receptance")) + ("time_mix_ln.weight", "time_mix_ln.bias")
    LAYER_VECTORS = RwkvBase.LAYER_VECTORS + (
        "time_mix_decay.weight", "time_mix_ln.weight", "time_mix_ln.bias")

    @classmethod
    def config(cls, md: dict[str, Any], path: str = "") -> RwkvConfig:
        return rwkv_config(md, path, time_mix_extra_dim=("time_mix_extra_dim", ...),
                           time_decay_extra_dim=("time_decay_extra_dim", ...),
                           rescale_every=("rescale_every_n_layers", 0))

    @classmethod
    def optional_tensors(cls, cfg: RwkvConfig) -> list[str]:
        # the five mixes: fused, or one by one in older conversions (__init__ wants one form)
        return [f"blk.{i}.time_mix_lerp_{m}.weight" for i in range(cfg.n_layer)
                for m in ("fused",) + _MIXES]

    def __init__(self, cfg: RwkvConfig, weights):
        super().__init__(cfg, weights)
        # the five mixes come fused (time_mix_lerp_fused) or, in older conversions, one by one
        for i in range(cfg.n_layer):
            p = f"blk.{i}.time_mix_lerp_"
            if p + "fused.weight" not in weights and not all(
                    f"{p}{m}.weight" in weights for m in _MIXES):
                raise GGUFError(f"missing tensor {p + 'fused.weight'!r} (or the five "
                                f"{p}{{w,k,v,r,g}}.weight it fuses)")

    def time_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}.time_mix_"
        xxx = g.lerp(x, x_prev, self.w[p + "lerp_x.weight"])
        # (n, 5 * C): the LoRA offsets of the five mixes, block j for _MIXES[j]
        m = g.matmul_blocks(g.unary(g.matmul(xxx, self.w[p + "w1.weight"]), "tanh"),
                            self.w[p + "w2.weight"])
        fused = self.w.get(p + "lerp_fused.weight")

        def xs(name: str) -> Value:
            j = _MIXES.index(name)
            mu, row = (fused, j) if fused is not None else (self.w[f"{p}lerp_{name}.weight"], 0)
            return g.lerp(x, x_prev, mu, mu_row=row, mu_v=m, mu_col=j * c.n_embd)

        r = g.matmul(xs("r"), self.w[p + "receptance.weight"])
        k = g.matmul(xs("k"), self.w[p + "key.weight"])
        v = g.matmul(xs("v"), self.w[p + "value.weight"])
        gate = g.unary(g.matmul(xs("g"), self.w[p + "gate.weight"]), "silu")
        w = g.unary(g.matmul(xs("w"), self.w[p + "decay_w1.weight"]), "tanh")
        w = g.unary(g.add(g.matmul(w, self.w[p + "decay_w2.weight"]),
                          self.w[p + "decay.weight"]), "exp_neg_exp")
        y = g.wkv6(r, k, v, w, self.w[p + "first.weight"], f"blk.{i}.wkv", c.head_size)
        y = g.layer_norm(y, self.w[p + "ln.weight"], self.w[p + "ln.bias"], GROUP_NORM_EPS,
                         group=c.head_size)
        return g.matmul(g.mul(y, gate), self.w[p + "output.weight"])

    def channel_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        p = f"blk.{i}.channel_mix_"
        xk = g.lerp(x, x_prev, self.w[p + "lerp_k.weight"])
        xr = g.lerp(x, x_prev, self.w[p + "lerp_r.weight"])
        r = g.unary(g.matmul(xr, self.w[p + "receptance.weight"]), "sigmoid")
        h = g.unary(g.matmul(xk, self.w[p + "key.weight"]), "relu_sqr")
        return g.mul(r, g.matmul(h, self.w[p + "value.weight"]))
