"""What every architecture provides: configuration from GGUF metadata, the tensors it needs, the
KV cache layout, and the recording of one forward pass into a Graph.

Every tensor of a file is accounted for at load (`Architecture.check_tensors`): it is used by the
recorded graph (or read on the host, like a per-tensor `.scale`), or it is on the architecture's
short list of tensors llama.cpp loads but does not use for generation. Anything else is an
UnsupportedError naming it: a tensor left out silently gives wrong logits silently.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Graph, KVSpec, Value, Weight
from ..errors import GGUFError, UnsupportedError
from ..gguf import GGUFFile, TensorInfo
from ..quants import dequantize

# llama.cpp's generic loading pass (llama-model.cpp, after each architecture's own tensors) also
# loads, for each layer matrix it created, an optional `.input_scale`: NVFP4's activation scale.
# No llama.cpp graph reads it (ggml's products do not quantize activations), so it changes nothing
# there, and nothing here.
INPUT_SCALED = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
# llama.cpp's LLAMA_MAX_EXPERTS
MAX_EXPERTS = 512


@dataclass
class Config:
    """Transformer hyper-parameters. `from_gguf` is the one place GGUF keys become configuration;
    defaults and zeros mean what they mean to llama.cpp (src/llama-model.cpp, load_hparams)."""

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
    # llama.cpp's rope attn_factor (rope.scaling.attn_factor): multiplies the rotated values
    rope_attn_factor: float = 1.0
    # per-tensor multipliers (`*.scale`, shape {1}) read from the file at load: tensor -> value
    scalars: dict[str, float] = field(default_factory=dict)
    # mixture of experts (expert_count, expert_used_count; 0 for a dense model)
    n_expert: int = 0
    n_expert_used: int = 0

    @classmethod
    def from_gguf(cls, md: dict[str, Any], path: str = "", scalings: tuple[str, ...] = ()
                  ) -> Config:
        """`scalings`: rope scaling types past none and linear that the architecture's rope
        implements (its rope_freq_scale is then 1 / factor, as in llama.cpp)."""
        arch = md["general.architecture"]
        key = KeyReader(md, arch, path)
        n_embd = key("embedding_length")
        n_head = key("attention.head_count")
        if n_embd <= 0 or n_head <= 0 or n_embd > 1 << 20:
            raise GGUFError(f"{path}: bad {arch}.embedding_length / attention.head_count")
        head_dim = key("attention.key_length", n_embd // n_head)
        if key("attention.value_length", n_embd // n_head) != head_dim:
            raise UnsupportedError(f"{path}: {arch}.attention.value_length differs from "
                                   f"attention.key_length; fastllm's heads have one size")
        if not md.get(f"{arch}.attention.causal", True):
            raise UnsupportedError(f"{path}: {arch}.attention.causal is false: a non-causal "
                                   f"(embedding) model, which fastllm does not run")
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = key("vocab_size", len(tokens) if tokens is not None else 0)
        cfg = cls(
            arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=key("block_count"),
            n_head=n_head, n_head_kv=key("attention.head_count_kv", n_head),
            n_ff=key("feed_forward_length"), head_dim=head_dim,
            n_rot=key("rope.dimension_count", head_dim), n_ctx_train=key("context_length", 2048),
            rms_eps=key("attention.layer_norm_rms_epsilon", 1e-5, float),
            rope_base=key("rope.freq_base", 10000.0, float),
            rope_freq_scale=rope_freq_scale(key, md, arch, path, scalings),
            sliding_window=key("attention.sliding_window", 0),
            rope_attn_factor=key("rope.scaling.attn_factor", 1.0, float),
            n_expert=key("expert_count", 0), n_expert_used=key("expert_used_count", 0),
        )
        # llama.cpp's load_hparams asserts these for every architecture
        if not (0 <= cfg.n_expert_used <= cfg.n_expert <= MAX_EXPERTS
                and (cfg.n_expert_used > 0) == (cfg.n_expert > 0)):
            raise GGUFError(f"{path}: bad {arch}.expert_count {cfg.n_expert} / "
                            f"expert_used_count {cfg.n_expert_used} (0 for a dense model, else "
                            f"1 <= used <= count <= {MAX_EXPERTS})")
        if (cfg.n_head_kv <= 0 or cfg.n_head % cfg.n_head_kv or cfg.n_layer <= 0
                or cfg.n_rot > cfg.head_dim or cfg.n_rot % 2):
            raise GGUFError(f"{path}: inconsistent attention shape (heads {cfg.n_head}, kv heads "
                            f"{cfg.n_head_kv}, layers {cfg.n_layer}, rot {cfg.n_rot})")
        if cfg.rope_attn_factor != 1.0 and cfg.n_rot != cfg.head_dim:
            # the factor scales only the rotated part of a head: a scale op after rope cannot
            raise UnsupportedError(f"{path}: {arch}.rope.scaling.attn_factor "
                                   f"{cfg.rope_attn_factor} with rope.dimension_count "
                                   f"{cfg.n_rot} < key_length {cfg.head_dim}")
        return cfg


class KeyReader:
    """`{arch}.name` metadata values with llama.cpp's defaults, errors naming the key."""

    def __init__(self, md: dict[str, Any], arch: str, path: str):
        self.md, self.arch, self.path = md, arch, path

    def __call__(self, name: str, default: Any = ..., kind=int) -> Any:
        full = f"{self.arch}.{name}"
        if full not in self.md:
            if default is ...:
                raise GGUFError(f"{self.path}: missing metadata key {full!r}")
            return default
        v = self.md[full]
        if hasattr(v, "__len__") and not isinstance(v, str):
            # per-layer arrays (e.g. head_count_kv): fastllm needs them uniform
            vals = {int(x) for x in v}
            if len(vals) != 1:
                raise UnsupportedError(f"{self.path}: per-layer {full} values {sorted(vals)} "
                                       f"are not supported")
            v = vals.pop()
        try:
            return kind(v)
        except (TypeError, ValueError):
            raise GGUFError(f"{self.path}: metadata key {full!r} has a bad value {v!r}") from None


def rope_freq_scale(key: KeyReader, md: dict[str, Any], arch: str, path: str,
                    scalings: tuple[str, ...] = ()) -> float:
    """llama.cpp's rope_freq_scale_train: the scaling type defaults to linear, and a factor of 0
    (or none written) means no scaling; type "none" never scales."""
    scaling = md.get(f"{arch}.rope.scaling.type", "linear")
    factor = key("rope.scaling.factor", None, float)
    if factor is None:
        factor = key("rope.scale_linear", 0.0, float)  # the older key llama.cpp still reads
    if scaling == "none" or factor == 0.0:
        return 1.0
    if scaling == "linear" or scaling in scalings:
        return 1.0 / factor
    if scaling == "yarn" and factor == 1.0:
        return 1.0  # YaRN at factor 1 interpolates nothing and leaves the magnitudes alone
    raise UnsupportedError(f"{path}: {arch}.rope.scaling.type {scaling!r} (factor {factor}) is "
                           f"not supported: fastllm does none and linear; llama3-style scaling "
                           f"comes from the rope_freqs tensor")


def _short_names(names: list[str]) -> str:
    """Tensor names with the layer number folded (`blk.N.ffn_up_exps.weight`), for messages."""
    folded = sorted({re.sub(r"^blk\.\d+\.", "blk.N.", n) for n in names})
    return ", ".join(folded)


class Architecture(ABC):
    """One network family. Subclasses set `arch` and implement `forward`."""

    arch: str = ""
    # rope scaling types past none and linear the architecture implements (Config.from_gguf)
    ROPE_SCALINGS: tuple[str, ...] = ()
    # True for models whose memory is a fixed-size state (RWKV): the context length costs nothing
    recurrent: bool = False
    # True where llama.cpp's graph of the architecture has mixture-of-experts layers (read when
    # expert_count > 0; elsewhere, as in llama.cpp, the expert count changes nothing)
    EXPERTS: bool = False

    @classmethod
    def moe(cls, cfg: Config) -> bool:
        """Whether cfg's layers are mixtures of experts."""
        return cls.EXPERTS and cfg.n_expert > 0

    def __init__(self, cfg: Config, weights: dict[str, Weight]):
        self.cfg = cfg
        self.w = weights
        self.scalars_read: set[str] = set()  # cfg.scalars the recorded graphs applied

    def scalar(self, name: str) -> float | None:
        """A per-tensor multiplier read at load (cfg.scalars), or None; noted as used."""
        v = self.cfg.scalars.get(name)
        if v is not None:
            self.scalars_read.add(name)
        return v

    @classmethod
    def config(cls, md: dict[str, Any], path: str = "") -> Config:
        return Config.from_gguf(md, path, cls.ROPE_SCALINGS)

    @classmethod
    def required_tensors(cls, cfg: Config) -> list[str]:
        """GGUF tensor names the file must have."""
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(cfg.n_layer):
            names += [f"blk.{i}.{t}.weight" for t in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
        return names

    @classmethod
    def optional_tensors(cls, cfg: Config) -> list[str]:
        """GGUF tensor names the forward pass uses when the file has them."""
        return []

    @classmethod
    def ignored_tensors(cls, cfg: Config) -> dict[str, str]:
        """Tensors llama.cpp loads for this architecture but does not use for generation, each
        with the reason; they are left unused here too."""
        return {}

    @classmethod
    def scalar_tensors(cls, cfg: Config) -> list[str]:
        """Optional one-value tensors read on the host at load into cfg.scalars."""
        return []

    @classmethod
    def fused_tensors(cls, cfg: Config) -> dict[str, tuple[tuple[str, int], ...]]:
        """Fused tensors (llama.cpp's `attn_qkv`, phi3's gate+up `ffn_up`) that the graph reads
        as separate row blocks: name -> ((part, rows), ...) in storage order. Each part is
        loaded as a tensor of its own, `name[part]`, over the same bytes of the file, so the
        products stay ordinary ones (and fuse as the unfused layout's do) and no op splits
        activations."""
        return {}

    @classmethod
    def weight_infos(cls, cfg: Config, f: GGUFFile) -> dict[str, TensorInfo]:
        """The tensors a backend loads: the file's, each fused one (fused_tensors) that the file
        has replaced by its parts."""
        fused = cls.fused_tensors(cfg)
        out: dict[str, TensorInfo] = {}
        for name, info in f.tensors.items():
            if name not in fused:
                out[name] = info
                continue
            start = 0
            for part, rows in fused[name]:
                out[part_name(name, part)] = row_block(info, start, rows, part)
                start += rows
            if start != info.shape[0]:
                raise GGUFError(f"{f.path}: tensor {name!r} has {info.shape[0]} rows, expected "
                                f"{start} ({' + '.join(f'{p} {r}' for p, r in fused[name])})")
        return out

    @classmethod
    def check_tensors(cls, cfg: Config, f: GGUFFile) -> None:
        """Account for every tensor of f before anything is allocated: a tensor that is neither
        used nor on the ignored list is an UnsupportedError naming it; a missing required one a
        GGUFError. Fills cfg.scalars, then records the decode graph over the file's shapes and
        checks that it really reads every tensor it claims (so the lists cannot drift from the
        forward pass)."""
        required = cls.required_tensors(cfg)
        known = set(required) | set(cls.optional_tensors(cfg)) | set(cls.scalar_tensors(cfg))
        ignored = cls.ignored_tensors(cfg)
        unknown = [n for n in f.tensors if n not in known and n not in ignored]
        if unknown:
            raise UnsupportedError(cls._unused_message(cfg, f, unknown))
        for name in required:
            f.tensor(name)  # raises GGUFError naming the missing tensor
        for name in cls.scalar_tensors(cfg):
            if name in f.tensors:
                cfg.scalars[name] = read_scalar(f, name)
        stubs = {n: Weight(n, t.type, t.shape) for n, t in cls.weight_infos(cfg, f).items()}
        try:
            net = cls(cfg, stubs)
            g = net.build(1, False)
        except GGUFError as e:
            raise GGUFError(f"{f.path}: {e}") from None
        # (attention's sinks ride in a node's attrs)
        used = {a.name for node in g.nodes for a in (*node.args, *node.attrs.values())
                if isinstance(a, Weight)}
        used |= net.scalars_read
        # a fused tensor is used when the graph reads every one of its parts
        used |= {n for n, parts in cls.fused_tensors(cfg).items()
                 if all(part_name(n, p) in used for p, _ in parts)}
        unused = [n for n in f.tensors if n not in used and n not in ignored]
        if unused:
            raise UnsupportedError(cls._unused_message(cfg, f, unused))

    @classmethod
    def _unused_message(cls, cfg: Config, f: GGUFFile, names: list[str]) -> str:
        hint = ""
        n_expert = f.metadata.get(f"{cls.arch}.expert_count", 0)
        if isinstance(n_expert, (int, np.integer)) and n_expert > 0 and not cls.EXPERTS:
            hint = (f" ({cls.arch}.expert_count = {n_expert}: llama.cpp's {cls.arch} has no "
                    f"mixture-of-experts layers)")
        return (f"{f.path}: {len(names)} tensor(s) that fastllm's {cls.arch} does not use: "
                f"{_short_names(names)}, e.g. {names[0]!r}{hint}")

    def kv_spec(self, n_ctx: int, n_batch: int) -> KVSpec:
        kv = self.cfg.n_head_kv * self.cfg.head_dim
        return KVSpec(n_ctx, (kv,) * self.cfg.n_layer, (n_ctx,) * self.cfg.n_layer)

    @abstractmethod
    def forward(self, g: Graph, all_logits: bool) -> Value:
        """Record the forward pass of g.tokens; return logits (n or 1, n_vocab)."""

    def build(self, n_tokens: int, all_logits: bool, rows: bool = False) -> Graph:
        """The graph of one run of n_tokens; rows=True: each row its own sequence (Graph.rows),
        every row's logits."""
        g = Graph(n_tokens, rows=rows)
        g.output("logits", self.forward(g, all_logits))
        return g


def part_name(name: str, part: str) -> str:
    """The name a fused tensor's part is loaded under: `blk.0.attn_qkv.weight[q]`."""
    return f"{name}[{part}]"


def row_block(info: TensorInfo, start: int, rows: int, part: str) -> TensorInfo:
    """Rows start..start+rows of a tensor (elements, for a vector) as a view of its bytes,
    named as its part: a row of a GGUF matrix is whole blocks, contiguous, so a row range is a
    byte range."""
    n = info.shape[0]
    unit, rem = divmod(int(info.data.nbytes), n)
    if rem or len(info.shape) > 2:
        raise UnsupportedError(f"{info.file}: tensor {info.name!r} ({info.type.name}, shape "
                               f"{info.shape}) cannot be split into row blocks")
    return TensorInfo(part_name(info.name, part), info.type,
                      (rows, *info.shape[1:]), info.data[start * unit:(start + rows) * unit],
                      info.file)


def read_scalar(f: GGUFFile, name: str) -> float:
    """The one value of a {1}-shaped tensor (llama.cpp's per-tensor `.scale`)."""
    t = f.tensors[name]
    if t.n_elements != 1:
        raise GGUFError(f"{f.path}: tensor {name!r} has shape {t.shape}, expected (1,)")
    v = float(dequantize(t.data, t.type, t.shape).reshape(-1)[0])
    if not np.isfinite(v):
        raise GGUFError(f"{f.path}: tensor {name!r} holds {v}")
    return v
