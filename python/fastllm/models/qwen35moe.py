"""`qwen35moe`: Qwen3.5 / 3.6 with mixtures of experts (Qwen3.5-35B-A3B, 122B-A10B, 397B-A17B).
The qwen35 hybrid (models/qwen35.py) with every layer's FFN a mixture of experts plus a shared
expert: a softmax router chooses expert_used_count experts, their weights normalized to sum to 1
(and scaled by expert_weights_scale unless 0 or 1), as llama.cpp's qwen35moe graph passes them;
the experts' gate and up projections are one fused tensor (`ffn_gate_up_exps`, gate rows first)
or two; the shared expert is a SwiGLU FFN scaled by sigmoid(x . ffn_gate_inp_shexp) and added.
Follows llama.cpp's src/models/qwen35moe.cpp (build_layer_ffn) and build_moe_ffn.
"""

from __future__ import annotations

from ..backends.base import Graph, Value
from ..errors import GGUFError
from .moe import Routing, expert_product
from .qwen35 import Qwen35, Qwen35Config

SHEXP_PRODUCTS = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")
EXPERT_MATRICES = ("ffn_gate_up_exps", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


class Qwen35Moe(Qwen35):
    arch = "qwen35moe"
    SCALED = Qwen35.SCALED + SHEXP_PRODUCTS

    @classmethod
    def config(cls, md, path: str = "") -> Qwen35Config:
        cfg = super().config(md, path)
        if not cfg.n_expert:
            raise GGUFError(f"{path}: qwen35moe.expert_count is 0: a qwen35moe file needs experts")
        cfg.expert_weights_scale = float(md.get("qwen35moe.expert_weights_scale", 0.0))
        return cfg

    @classmethod
    def ffn_tensors(cls, cfg: Qwen35Config, i: int) -> list[str]:
        p = f"blk.{i}."
        return [p + "ffn_gate_inp.weight", p + "ffn_down_exps.weight",
                p + "ffn_gate_inp_shexp.weight"] + [p + t + ".weight" for t in SHEXP_PRODUCTS]

    @classmethod
    def ffn_products(cls, cfg: Qwen35Config) -> tuple[str, ...]:
        return SHEXP_PRODUCTS + EXPERT_MATRICES

    @classmethod
    def optional_tensors(cls, cfg: Qwen35Config) -> list[str]:
        # the fused gate-up tensor or the two (llama.cpp's create_tensor_gate_up_exps), and the
        # per-expert multipliers of the separate ones (llama.cpp loads none for the fused one)
        names = super().optional_tensors(cfg)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            names += [p + t + ".weight" for t in EXPERT_MATRICES[:3]]
            names += [p + t + ".scale" for t in EXPERT_MATRICES[1:]]
        return names

    @classmethod
    def scalar_tensors(cls, cfg: Qwen35Config) -> list[str]:
        # per-expert `.scale`s are (E,) tensors read by the graph (optional_tensors), not scalars
        return [n for n in super().scalar_tensors(cfg)
                if not any(f".{t}." in n for t in EXPERT_MATRICES)]

    def ffn_block(self, g: Graph, x: Value, i: int) -> Value:
        c, p = self.cfg, f"blk.{i}."
        router = self.w[p + "ffn_gate_inp.weight"]
        if router.shape[0] != c.n_expert:
            raise GGUFError(f"inconsistent model: {p}ffn_gate_inp.weight has shape "
                            f"{router.shape}, expected {c.n_expert} experts "
                            f"({c.arch}.expert_count)")
        scale = c.expert_weights_scale
        routing = Routing("softmax", True, scale if scale not in (0.0, 1.0) else 1.0)
        ids, weights = g.moe_route(g.matmul(x, router), c.n_expert_used, gating=routing.gating,
                                   norm=routing.norm, scale=routing.scale)
        fused = self.w.get(p + "ffn_gate_up_exps.weight")
        if fused is not None:
            gu = g.matmul_id(x, fused, ids)  # (n, k, 2 * n_ff_exp): gate rows, then up rows
            half = gu.cols // 2
            gate, up = g.slice_cols(gu, 0, half), g.slice_cols(gu, half, half)
        elif p + "ffn_gate_exps.weight" in self.w and p + "ffn_up_exps.weight" in self.w:
            gate = expert_product(self, g, x, p + "ffn_gate_exps", ids)
            up = expert_product(self, g, x, p + "ffn_up_exps", ids)
        else:
            raise GGUFError(f"inconsistent model: {p}ffn_gate_up_exps.weight (or "
                            f"{p}ffn_gate_exps.weight and {p}ffn_up_exps.weight) is missing")
        down = expert_product(self, g, g.swiglu(gate, up), p + "ffn_down_exps", ids)
        moe = g.moe_sum(down, weights)
        sg = self.product(g, x, p + "ffn_gate_shexp", bias_then_scale=True)
        su = self.product(g, x, p + "ffn_up_shexp", bias_then_scale=True)
        shared = self.product(g, g.swiglu(sg, su), p + "ffn_down_shexp", bias_then_scale=True)
        return g.add(moe, g.dot_gate(shared, x, self.w[p + "ffn_gate_inp_shexp.weight"]))
