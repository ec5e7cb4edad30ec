"""Write a random-weight Qwen3.5 GGUF (`qwen35` or `qwen35moe`) of a real model's shape, in
llama.cpp's layout and metadata, for speed runs beside llama.cpp on the same file. The weights
are noise; the shapes, tensor types and layout are real: matrices Q4_K (the down projections and
the output matrix Q6_K, as llama.cpp's Q4_K_M recipe leaves them), norms, the convolution, A and
dt_bias F32. The tokenizer is copied from a vocab-only GGUF (its vocabulary, not Qwen3.5's
248,320 ids, sizes the embedding and output matrices).

    python benchmarks/make_qwen35_gguf.py --shape qwen3.5-9b --vocab ../shared/vocab/ggml-vocab-qwen2.gguf --out q9.gguf
    python benchmarks/make_qwen35_gguf.py --shape qwen3.5-35b-a3b --layers 8 ...   # 8 of its 40 layers
    python benchmarks/make_qwen35_gguf.py --shape tiny ...   # a small file for a smoke test

Shapes from the models' config.json (hidden size, layers, attention heads / KV heads of 256,
linear-attention key heads 16 and value heads 32 of 128, conv kernel 4, every fourth layer full
attention, rope over 64 dims with sections [11, 11, 10, 0], base 1e7).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from fastllm.quants import GGMLType, random_blocks


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int  # dense FFN (qwen35)
    n_expert: int = 0  # qwen35moe
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    head_dim: int = 256
    k_heads: int = 16  # linear attention (ssm.group_count)
    v_heads: int = 32  # ssm.time_step_rank
    d_state: int = 128
    n_rot: int = 64


SHAPES = {
    "tiny": Shape(256, 4, 2, 1, 512, head_dim=128, k_heads=1, v_heads=2, n_rot=32),
    "tiny-moe": Shape(256, 4, 2, 1, 0, 8, 2, 256, 256, head_dim=128, k_heads=1, v_heads=2,
                      n_rot=32),
    "qwen3.5-4b": Shape(2560, 32, 16, 4, 9216),
    "qwen3.5-9b": Shape(4096, 32, 16, 4, 12288),
    "qwen3.5-35b-a3b": Shape(2048, 40, 16, 2, 0, 256, 8, 512, 512),
}
Q4, Q6, F32 = GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F32


def copy_tokenizer(w: gguf.GGUFWriter, vocab_path: str) -> int:
    r = gguf.GGUFReader(vocab_path)
    n_vocab = 0
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
            else:
                val = [f.parts[i][0].item() for i in f.data]
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(val)
            if val:
                w.add_array(key, val)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(f.parts[-1]).decode())
        else:
            w.add_key_value(key, f.parts[-1][0].item(), vt)
    return n_vocab


class Writer:
    def __init__(self, w: gguf.GGUFWriter, rng: np.random.Generator):
        self.w, self.rng = w, rng

    def matrix(self, name: str, rows: int, cols: int, t: GGMLType = Q4, experts: int = 0):
        n = max(experts, 1)
        data = random_blocks(t, n * rows, cols, self.rng)
        if experts:
            data = data.reshape(experts, rows, -1)
        self.w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(int(t)))

    def vector(self, name: str, n: int, lo: float = 0.9, hi: float = 1.1):
        self.w.add_tensor(name, self.rng.uniform(lo, hi, n).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen3.5-9b", choices=SHAPES)
    ap.add_argument("--vocab", required=True, help="a vocab-only GGUF (../shared/vocab)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=0, help="write only this many layers")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    n_layer = a.layers or s.n_layer
    moe = s.n_expert > 0
    arch = "qwen35moe" if moe else "qwen35"
    w = gguf.GGUFWriter(a.out, arch)
    n_vocab = copy_tokenizer(w, a.vocab)
    w.add_name(f"random-{a.shape}")
    key_dim, value_dim = s.k_heads * s.d_state, s.v_heads * s.d_state
    conv_dim = 2 * key_dim + value_dim
    for k, v in {"context_length": 262144, "embedding_length": s.n_embd,
                 "block_count": n_layer, "feed_forward_length": s.n_ff,
                 "attention.head_count": s.n_head, "attention.head_count_kv": s.n_head_kv,
                 "attention.key_length": s.head_dim, "attention.value_length": s.head_dim,
                 "rope.dimension_count": s.n_rot, "ssm.conv_kernel": 4,
                 "ssm.inner_size": value_dim, "ssm.state_size": s.d_state,
                 "ssm.time_step_rank": s.v_heads, "ssm.group_count": s.k_heads,
                 "full_attention_interval": 4}.items():
        w.add_uint32(f"{arch}.{k}", v)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{arch}.rope.freq_base", 1e7)
    w.add_array(f"{arch}.rope.dimension_sections", [11, 11, 10, 0])
    if moe:
        for k, v in {"expert_count": s.n_expert, "expert_used_count": s.n_expert_used,
                     "expert_feed_forward_length": s.n_ff_exp,
                     "expert_shared_feed_forward_length": s.n_ff_shexp}.items():
            w.add_uint32(f"{arch}.{k}", v)
    t = Writer(w, np.random.default_rng(a.seed))
    t.matrix("token_embd.weight", n_vocab, s.n_embd, Q4)
    t.vector("output_norm.weight", s.n_embd)
    t.matrix("output.weight", n_vocab, s.n_embd, Q6)
    for i in range(n_layer):
        p = f"blk.{i}."
        t.vector(p + "attn_norm.weight", s.n_embd)
        t.vector(p + "post_attention_norm.weight", s.n_embd)
        if (i + 1) % 4:  # Gated DeltaNet
            t.matrix(p + "attn_qkv.weight", conv_dim, s.n_embd)
            t.matrix(p + "attn_gate.weight", value_dim, s.n_embd)
            t.matrix(p + "ssm_beta.weight", s.v_heads, s.n_embd)
            t.matrix(p + "ssm_alpha.weight", s.v_heads, s.n_embd)
            t.w.add_tensor(p + "ssm_conv1d.weight",
                           (0.3 * t.rng.standard_normal((conv_dim, 4))).astype(np.float32))
            t.vector(p + "ssm_dt.bias", s.v_heads, -1.0, 1.0)
            t.vector(p + "ssm_a", s.v_heads, -2.0, -0.1)
            t.vector(p + "ssm_norm.weight", s.d_state)
            t.matrix(p + "ssm_out.weight", s.n_embd, value_dim)
        else:  # gated full attention: q and its gate per head
            t.matrix(p + "attn_q.weight", 2 * s.n_head * s.head_dim, s.n_embd)
            t.matrix(p + "attn_k.weight", s.n_head_kv * s.head_dim, s.n_embd)
            t.matrix(p + "attn_v.weight", s.n_head_kv * s.head_dim, s.n_embd, Q6)
            t.matrix(p + "attn_output.weight", s.n_embd, s.n_head * s.head_dim)
            t.vector(p + "attn_q_norm.weight", s.head_dim)
            t.vector(p + "attn_k_norm.weight", s.head_dim)
        if moe:
            t.matrix(p + "ffn_gate_inp.weight", s.n_expert, s.n_embd, F32)
            t.matrix(p + "ffn_gate_up_exps.weight", 2 * s.n_ff_exp, s.n_embd, Q4, s.n_expert)
            t.matrix(p + "ffn_down_exps.weight", s.n_embd, s.n_ff_exp, Q6, s.n_expert)
            t.vector(p + "ffn_gate_inp_shexp.weight", s.n_embd, -0.05, 0.05)
            t.matrix(p + "ffn_gate_shexp.weight", s.n_ff_shexp, s.n_embd)
            t.matrix(p + "ffn_up_shexp.weight", s.n_ff_shexp, s.n_embd)
            t.matrix(p + "ffn_down_shexp.weight", s.n_embd, s.n_ff_shexp, Q6)
        else:
            t.matrix(p + "ffn_gate.weight", s.n_ff, s.n_embd)
            t.matrix(p + "ffn_up.weight", s.n_ff, s.n_embd)
            t.matrix(p + "ffn_down.weight", s.n_embd, s.n_ff, Q6)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.out}: {arch} {a.shape}, {n_layer} layers, vocabulary {n_vocab}")


if __name__ == "__main__":
    main()
