"""The mixture-of-experts feed-forward block shared by the MoE architectures: llama.cpp's
build_moe_ffn (src/llama-graph.cpp) in the Graph's MoE ops.

A layer holds `ffn_gate_inp` (the router, (E, n_embd)) and the experts' matrices stacked as
`ffn_{gate,up,down}_exps` ((E, n_ff, n_embd) and (E, n_embd, n_ff)). Each row's router logits
choose expert_used_count experts; the row goes through those experts' SwiGLU FFNs only, and their
outputs are summed with the router's weights. Per-expert `.scale` tensors (shape (E,)) multiply an
expert's product (build_lora_mm_id), per-expert `.bias` tensors ((E, m)) are added after it.
How the router's weights are made (softmax or sigmoid, normalized or not, scaled) is the
architecture's: llama.cpp's graph for each passes it, often as constants rather than the file's
metadata (qwen3moe and llama: softmax, normalized, whatever expert_weights_norm says).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Graph, Value, Weight
from ..errors import GGUFError
from .base import Config

EXPS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


@dataclass(frozen=True)
class Routing:
    """How a layer's router weighs its chosen experts (Graph.moe_route's arguments)."""

    gating: str = "softmax"
    norm: bool = True
    scale: float = 1.0


def moe_tensors(cfg: Config, layer: int, *, scales: bool = True,
                biases: bool = False) -> tuple[list[str], list[str]]:
    """(required, optional) tensor names of layer's MoE FFN."""
    p = f"blk.{layer}."
    req = [p + "ffn_gate_inp.weight"] + [p + t + ".weight" for t in EXPS]
    opt = [p + t + ".scale" for t in EXPS] if scales else []
    if biases:
        opt += [p + t + ".bias" for t in EXPS] + [p + "ffn_gate_inp.bias"]
    return req, opt


def expert_product(net, g: Graph, x: Value, name: str, ids: Value) -> Value:
    """x through the chosen experts of `name` ({name}.weight), with the tensor's per-expert
    `.scale` (where the architecture's graph applies them: net.EXPERT_SCALED) and `.bias` where
    the file has them, in llama.cpp's order (scale, then bias)."""
    y = g.matmul_id(x, net.w[name + ".weight"], ids)
    s = net.w.get(name + ".scale") if net.EXPERT_SCALED else None
    b = net.w.get(name + ".bias")
    if s is not None:
        y = g.mul_id(y, s, ids)
    if b is not None:
        y = g.add_id(y, b, ids)
    return y


def moe_ffn(net, g: Graph, x: Value, layer: int, routing: Routing) -> Value:
    """The MoE FFN of `layer` on the normed x (n, n_embd) -> (n, n_embd)."""
    c, p = net.cfg, f"blk.{layer}."
    router: Weight = net.w[p + "ffn_gate_inp.weight"]
    for t in EXPS:
        w = net.w[p + t + ".weight"]
        if len(w.shape) != 3 or w.shape[0] != c.n_expert:
            raise GGUFError(f"inconsistent model: {p}{t}.weight has shape {w.shape}, expected "
                            f"{c.n_expert} experts ({c.arch}.expert_count)")
    if router.shape[0] != c.n_expert:
        raise GGUFError(f"inconsistent model: {p}ffn_gate_inp.weight has shape {router.shape}, "
                        f"expected {c.n_expert} experts ({c.arch}.expert_count)")
    logits = g.matmul(x, router)
    rb = net.w.get(p + "ffn_gate_inp.bias")
    if rb is not None:
        logits = g.add(logits, rb)
    ids, weights = g.moe_route(logits, c.n_expert_used, gating=routing.gating,
                               norm=routing.norm, scale=routing.scale)
    up = expert_product(net, g, x, p + "ffn_up_exps", ids)
    gate = expert_product(net, g, x, p + "ffn_gate_exps", ids)
    down = expert_product(net, g, g.swiglu(gate, up), p + "ffn_down_exps", ids)
    return g.moe_sum(down, weights)
