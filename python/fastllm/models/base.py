"""What every architecture provides: configuration from GGUF metadata, the tensors it needs, the
KV cache layout, and the recording of one forward pass into a Graph."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..backends.base import Graph, KVSpec, Value, Weight
from ..errors import GGUFError, UnsupportedError


@dataclass
class Config:
    """Transformer hyper-parameters. `from_gguf` is the one place GGUF keys become configuration."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    n_rot: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_freq_scale: float
    sliding_window: int = 0

    @classmethod
    def from_gguf(cls, md: dict[str, Any], path: str = "") -> Config:
        arch = md["general.architecture"]

        def key(name: str, default: Any = ..., kind=int) -> Any:
            full = f"{arch}.{name}"
            if full not in md:
                if default is ...:
                    raise GGUFError(f"{path}: missing metadata key {full!r}")
                return default
            v = md[full]
            if hasattr(v, "__len__") and not isinstance(v, str):
                # per-layer arrays (e.g. head_count_kv): fastllm needs them uniform
                vals = {int(x) for x in v}
                if len(vals) != 1:
                    raise UnsupportedError(f"{path}: per-layer {full} values {sorted(vals)} are "
                                           f"not supported")
                v = vals.pop()
            try:
                return kind(v)
            except (TypeError, ValueError):
                raise GGUFError(f"{path}: metadata key {full!r} has a bad value {v!r}") from None

        n_embd = key("embedding_length")
        n_head = key("attention.head_count")
        if n_embd <= 0 or n_head <= 0 or n_embd > 1 << 20:
            raise GGUFError(f"{path}: bad {arch}.embedding_length / attention.head_count")
        head_dim = key("attention.key_length", n_embd // n_head)
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = key("vocab_size", len(tokens) if tokens is not None else 0)
        scaling = md.get(f"{arch}.rope.scaling.type", "none")
        freq_scale = 1.0
        if scaling == "linear":
            freq_scale = 1.0 / key("rope.scaling.factor", 1.0, float)
        elif scaling not in ("none", ""):
            raise UnsupportedError(f"{path}: rope scaling {scaling!r} is not supported "
                                   f"(fastllm does none and linear; llama3-style scaling comes "
                                   f"from the rope_freqs tensor)")
        cfg = cls(
            arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=key("block_count"),
            n_head=n_head, n_head_kv=key("attention.head_count_kv", n_head),
            n_ff=key("feed_forward_length"), head_dim=head_dim,
            n_rot=key("rope.dimension_count", head_dim), n_ctx_train=key("context_length", 2048),
            rms_eps=key("attention.layer_norm_rms_epsilon", 1e-5, float),
            rope_base=key("rope.freq_base", 10000.0, float), rope_freq_scale=freq_scale,
            sliding_window=key("attention.sliding_window", 0),
        )
        if (cfg.n_head_kv <= 0 or cfg.n_head % cfg.n_head_kv or cfg.n_layer <= 0
                or cfg.n_rot > cfg.head_dim or cfg.n_rot % 2):
            raise GGUFError(f"{path}: inconsistent attention shape (heads {cfg.n_head}, kv heads "
                            f"{cfg.n_head_kv}, layers {cfg.n_layer}, rot {cfg.n_rot})")
        return cfg


class Architecture(ABC):
    """One network family. Subclasses set `arch` and implement `forward`."""

    arch: str = ""
    # True for models whose memory is a fixed-size state (RWKV): the context length costs nothing
    recurrent: bool = False

    def __init__(self, cfg: Config, weights: dict[str, Weight]):
        self.cfg = cfg
        self.w = weights

    @classmethod
    def config(cls, md: dict[str, Any], path: str = "") -> Config:
        return Config.from_gguf(md, path)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        """GGUF tensor names the file must have (optional ones are used when present)."""
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.weight" for t in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
        return names

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        kv = self.cfg.n_head_kv * self.cfg.head_dim
        return KVSpec(n_ctx, (kv,) * self.cfg.n_layer, (n_ctx,) * self.cfg.n_layer)

    @abstractmethod
    def forward(self, g: Graph, all_logits: bool) -> Value:
        """Record the forward pass of g.tokens; return logits (n or 1, n_vocab)."""

    def build(self, n_tokens: int, all_logits: bool) -> Graph:
        g = Graph(n_tokens)
        g.output("logits", self.forward(g, all_logits))
        return g
