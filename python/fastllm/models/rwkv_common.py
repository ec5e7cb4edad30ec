"""What RWKV-6 and RWKV-7 share: configuration from the GGUF keys llama.cpp's converter writes,
the recurrent state layout, and the block skeleton (LayerNorm'd token shift into a time mix and
a channel mix, each added to the residual stream).

The state of layer N is three named buffers: `blk.N.shift_att` and `blk.N.shift_ffn` (the last
normalized input row of the time mix and of the channel mix, n_embd values each) and `blk.N.wkv`
(the per-head S x S matrices of the WKV recurrence, n_embd * head_size values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.base import Graph, KVSpec, Value, Weight
from ..errors import GGUFError, UnsupportedError
from .base import Architecture, Config

# rwkv.cpp and llama.cpp normalize the WKV output per head with this epsilon (rwkv_graph.inc,
# src/models/rwkv6-base.cpp: ggml_norm(..., 64e-5f)); the block LayerNorms use the file's
# attention.layer_norm_epsilon.
GROUP_NORM_EPS = 64e-5


@dataclass
class RwkvConfig(Config):
    """Config plus the RWKV hyper-parameters. The transformer fields get the values that make
    generic code sensible: n_head = n_embd / head_size heads of head_dim = head_size, no rope."""

    head_size: int = 64
    norm_eps: float = 1e-5
    rescale_every: int = 0  # RWKV-6 from HF checkpoints: halve the residual every N layers
    time_mix_extra_dim: int = 0  # RWKV-6 token-mix LoRA rank
    time_decay_extra_dim: int = 0  # RWKV-6 decay LoRA rank
    lora_decay: int = 0  # RWKV-7 LoRA ranks
    lora_iclr: int = 0
    lora_value_res_mix: int = 0
    lora_gate: int = 0


class MetadataReader:
    """`{arch}.name` keys of GGUF metadata as ints/floats, with errors naming the key."""

    def __init__(self, md: dict[str, Any], arch: str, path: str):
        self.md, self.arch, self.path = md, arch, path

    def __call__(self, name: str, default: Any = ..., kind=int) -> Any:
        full = f"{self.arch}.{name}"
        if full not in self.md:
            if default is ...:
                raise GGUFError(f"{self.path}: missing metadata key {full!r}")
            return default
        v = self.md[full]
        try:
            if kind is int and (isinstance(v, bool) or float(v) != int(v)):
                raise ValueError
            return kind(v)
        except (TypeError, ValueError):
            raise GGUFError(f"{self.path}: metadata key {full!r} has a bad value {v!r}") from None


def rwkv_config(md: dict[str, Any], path: str, **extra_keys: tuple[str, Any]) -> RwkvConfig:
    """The shared keys, plus `extra_keys`: field -> (metadata key, default or ...)."""
    arch = md["general.architecture"]
    key = MetadataReader(md, arch, path)
    n_embd, head_size = key("embedding_length"), key("wkv.head_size")
    if not 0 < n_embd <= 1 << 20 or head_size <= 0 or n_embd % head_size:
        raise GGUFError(f"{path}: {arch}.embedding_length {n_embd} is not a positive multiple of "
                        f"{arch}.wkv.head_size {head_size}")
    shifts = key("token_shift_count", 2)
    if shifts != 2:
        raise UnsupportedError(f"{path}: {arch}.token_shift_count = {shifts}; fastllm's {arch} "
                               f"keeps 2 token shifts (time mix and channel mix), as llama.cpp")
    n_head = n_embd // head_size
    tokens = md.get("tokenizer.ggml.tokens")
    eps = key("attention.layer_norm_epsilon", 1e-5, float)
    cfg = RwkvConfig(
        arch=arch, n_vocab=key("vocab_size", len(tokens) if tokens is not None else 0),
        n_embd=n_embd, n_layer=key("block_count"), n_head=n_head, n_head_kv=n_head,
        n_ff=key("feed_forward_length"), head_dim=head_size, n_rot=0,
        # RWKV has no trained context limit; llama.cpp's converter writes 2^20
        n_ctx_train=key("context_length", 1 << 20), rms_eps=eps, rope_base=0.0,
        rope_freq_scale=1.0, head_size=head_size, norm_eps=eps,
        **{f: key(k, d) for f, (k, d) in extra_keys.items()},
    )
    if cfg.n_layer <= 0 or cfg.n_ff <= 0:
        raise GGUFError(f"{path}: {arch}.block_count and feed_forward_length must be positive")
    return cfg


class RwkvBase(Architecture):
    """The RWKV block skeleton; subclasses record time_mix and channel_mix."""

    cfg: RwkvConfig
    recurrent = True
    # GGUF tensors of every file, then those of every layer (without the `blk.N.` prefix)
    GLOBAL_TENSORS = ("token_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias",
                      "output_norm.weight", "output_norm.bias", "output.weight")
    LAYER_TENSORS: tuple[str, ...] = ("attn_norm.weight", "attn_norm.bias",
                                      "attn_norm_2.weight", "attn_norm_2.bias")
    # layer tensors used as plain vectors (add/mul/layer_norm): they must be 1-D of n_embd values
    LAYER_VECTORS: tuple[str, ...] = ("attn_norm.weight", "attn_norm.bias",
                                      "attn_norm_2.weight", "attn_norm_2.bias")

    def __init__(self, cfg: RwkvConfig, weights: dict[str, Weight]):
        super().__init__(cfg, weights)
        for name in ("token_embd_norm.weight", "token_embd_norm.bias", "output_norm.weight",
                     "output_norm.bias"):
            self.check_vector(name)
        for i in range(cfg.n_layer):
            for name in self.LAYER_VECTORS:
                self.check_vector(f"blk.{i}.{name}")

    def check_vector(self, name: str) -> None:
        w = self.w[name]
        if w.shape != (self.cfg.n_embd,):
            raise GGUFError(f"tensor {name!r} has shape {w.shape}, expected ({self.cfg.n_embd},)")

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        names = list(cls.GLOBAL_TENSORS)
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}" for t in cls.LAYER_TENSORS]
        return names

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        c = self.cfg
        state: list[tuple[str, int]] = []
        for i in range(c.n_layer):
            state += [(f"blk.{i}.shift_att", c.n_embd), (f"blk.{i}.shift_ffn", c.n_embd),
                      (f"blk.{i}.wkv", c.n_embd * c.head_size)]
        return KVSpec(n_ctx, (), (), tuple(state))

    def norm(self, g: Graph, x: Value, name: str) -> Value:
        return g.layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"],
                            self.cfg.norm_eps)

    def time_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        raise NotImplementedError

    def channel_mix(self, g: Graph, x: Value, x_prev: Value, i: int) -> Value:
        raise NotImplementedError

    def forward(self, g: Graph, all_logits: bool) -> Value:
        c = self.cfg
        x = g.get_rows(self.w["token_embd.weight"], g.tokens)
        x = self.norm(g, x, "token_embd_norm")  # rwkv.cpp's blocks.0.ln0
        for i in range(c.n_layer):
            p = f"blk.{i}."
            h = self.norm(g, x, p + "attn_norm")
            x = g.add(x, self.time_mix(g, h, g.token_shift(h, p + "shift_att"), i))
            h = self.norm(g, x, p + "attn_norm_2")
            x = g.add(x, self.channel_mix(g, h, g.token_shift(h, p + "shift_ffn"), i))
            if c.rescale_every and (i + 1) % c.rescale_every == 0:
                x = g.scale(x, 0.5)
        if not all_logits:
            x = g.last_row(x)
        x = self.norm(g, x, "output_norm")
        return g.matmul(x, self.w["output.weight"])
