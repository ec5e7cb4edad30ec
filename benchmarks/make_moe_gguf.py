"""Write a random-weight GGUF of a real mixture-of-experts or hybrid model's shape for speed runs:
noise weights, real shapes, real tensor types and file layout, the tokenizer copied from a
vocab-only GGUF and padded with unused tokens to the model's vocabulary size (so the embedding and
output matrices have their real size; ../shared/vocab/ggml-vocab-llama-bpe.gguf, the one .peer/
carries, serves every shape).

Shapes (`--shape`):

- `qwen3-30b-a3b`: Qwen3-30B-A3B (`qwen3moe`: 48 layers of n_embd 2048, 32 query heads and 4 KV
  heads of 128, 128 experts of 768 of which 8 are used per token, vocabulary 151,936). Types as
  llama.cpp's Q4_K_M recipe (llama_tensor_get_type) gives them for it: Q4_K for the experts' gate
  and up, for attn_q, attn_k, attn_output and the token embedding; Q6_K for the output matrix
  and, in the layers where the recipe gives more bits (use_more_bits: i < n/8, i >= 7n/8, and
  every third layer between), for attn_v and ffn_down_exps (Q4_K in the others); the router
  (ffn_gate_inp) and the norms F32 (llama-quantize never quantizes the router).
- `gpt-oss-20b`: OpenAI's gpt-oss-20b (`gpt-oss`, llama.cpp's src/models/openai-moe.cpp and its
  loader: 24 layers of n_embd 2880, 64 query heads and 8 KV heads of 64 with biases and a sink
  logit per head, every other layer a sliding window of 128, 32 experts of 2880 of which 4 are
  used, each with per-expert biases, a router with a bias, vocabulary 201,088, rope base 150,000).
  Types as llama.cpp's MXFP4_MOE file has them: the experts' stacked matrices MXFP4, every other
  matrix Q8_0, the router, biases, sinks and norms F32. The real file's YaRN rope scaling
  (factor 32 over 4,096 positions) is left out: it costs nothing at run time and fastllm's
  loader refuses YaRN.
- `qwen35-moe`: Qwen3.5-35B-A3B / Qwen3.6-35B-A3B (`qwen35moe`; the model card's numbers: 40
  layers of n_embd 2048 in ten groups of three Gated DeltaNet layers and one gated attention
  layer; DeltaNet 16 key heads and 32 value heads of 128, conv kernel 4; attention 16 query
  heads and 2 KV heads of 256, rope over 64 dims, sections 11/11/10/0, base 10^7; 256 experts of
  512, 8 used, plus a shared expert of 512 with its sigmoid gate; vocabulary 248,320). Tensor
  names and layouts as llama.cpp's converter writes them (the fused ffn_gate_up_exps,
  attn_qkv/attn_gate/ssm_* of the DeltaNet layers, the query projection carrying the output
  gate), as in ../shared/archs/qwen35moe-moe.gguf.
- `qwen35-dense`: Qwen3.5-9B (`qwen35`; model card: 32 layers of n_embd 4096, FFN 12,288,
  DeltaNet 16 key / 32 value heads of 128, attention 16 query and 4 KV heads of 256, rope as
  above, vocabulary 248,320).

The qwen35 shapes take llama.cpp's Q4_K_M recipe as fastllm's quantizer ports it: Q4_K by
default, Q6_K for the output and, in the use_more_bits layers, for attn_v or attn_qkv (one per
layer, the attn_v category) and the ffn_down products (routed and shared); ssm_conv1d, the
router, the 1-D tensors and the norms F32.

`--layers N` writes the first N layers of the real width (the whole files are 17.3, 11.3, 19.7
and 5.2 GiB, the sizes of the published Q4_K_M and MXFP4 files of these models); `--scale-down` shrinks every dimension (n_embd 256, small heads, 8 experts of 256, 2 used, the
vocab file's own vocabulary) for a smoke test that the file loads. The tensors are generated and
written one at a time, so memory stays at one tensor.

Example: python3 benchmarks/make_moe_gguf.py --shape gpt-oss-20b --layers 8
--vocab ../shared/vocab/ggml-vocab-llama-bpe.gguf --out gpt-oss-8l.gguf
"""

from __future__ import annotations

import argparse
import os
import sys

import gguf
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_decode_bytes import step_bytes

QWEN35_COMMON = {"n_ctx": 262144, "head_dim": 256, "n_rot": 64, "rope_sections": [11, 11, 10, 0],
                 "rope_base": 1e7, "eps": 1e-6, "d_conv": 4, "d_state": 128, "n_k_heads": 16,
                 "n_v_heads": 32, "attn_every": 4, "n_vocab": 248320}
SHAPES = {
    "qwen3-30b-a3b": {"arch": "qwen3moe", "n_embd": 2048, "n_layer": 48, "n_head": 32,
                      "n_head_kv": 4, "head_dim": 128, "n_ff": 6144, "n_ff_exp": 768,
                      "n_expert": 128, "n_expert_used": 8, "rope_base": 1e6, "n_ctx": 40960,
                      "eps": 1e-6, "n_vocab": 151936},
    "gpt-oss-20b": {"arch": "gpt-oss", "n_embd": 2880, "n_layer": 24, "n_head": 64,
                    "n_head_kv": 8, "head_dim": 64, "n_ff": 2880, "n_ff_exp": 2880,
                    "n_expert": 32, "n_expert_used": 4, "rope_base": 150000.0, "n_ctx": 131072,
                    "eps": 1e-5, "window": 128, "n_vocab": 201088},
    "qwen35-moe": {"arch": "qwen35moe", **QWEN35_COMMON, "n_embd": 2048, "n_layer": 40,
                   "n_head": 16, "n_head_kv": 2, "n_ff": 512, "n_ff_exp": 512, "n_ff_shexp": 512,
                   "n_expert": 256, "n_expert_used": 8},
    "qwen35-dense": {"arch": "qwen35", **QWEN35_COMMON, "n_embd": 4096, "n_layer": 32,
                     "n_head": 16, "n_head_kv": 4, "n_ff": 12288, "n_expert": 0,
                     "n_expert_used": 0},
}
SCALED_DOWN = {"n_embd": 256, "n_head": 4, "n_head_kv": 2, "head_dim": 64, "n_ff": 512,
               "n_ff_exp": 256, "n_ff_shexp": 256, "n_expert": 8, "n_expert_used": 2,
               "n_rot": 64, "d_state": 64, "n_k_heads": 2, "n_v_heads": 4, "n_vocab": 0}

T = gguf.GGMLQuantizationType
Q4K, Q6K, Q8_0, MXFP4, F32 = T.Q4_K, T.Q6_K, T.Q8_0, T.MXFP4, T.F32
# block values, block bytes, byte offsets of the f16 scales (ggml-common.h); MXFP4's scale is one
# E8M0 exponent byte at offset 0 and is filled apart (random_blocks)
BLOCKS = {Q4K: (256, 144, (0, 2)), Q6K: (256, 210, (208,)), Q8_0: (32, 34, (0,)),
          MXFP4: (32, 17, ())}
NORM, VEC = "norm", "vec"  # F32 kinds: RMSNorm gains around 1, small vectors (biases, router...)


def copy_tokenizer(w: gguf.GGUFWriter, vocab_path: str, n_vocab: int) -> int:
    """The tokenizer.* keys of a vocab-only GGUF with their value types, the token list padded
    with unused tokens ([PADn], type UNUSED) up to n_vocab; returns the vocabulary size. Read
    with fastllm's GGUF reader (python/ on PYTHONPATH): the gguf package's takes ~20x longer
    over a BPE vocabulary's 400k strings."""
    from fastllm.gguf import open_gguf

    src = open_gguf(vocab_path)
    have = 0
    for key, val in src.metadata.items():
        if not key.startswith("tokenizer."):
            continue
        vtype, sub = src.value_types[key]
        if isinstance(val, np.ndarray):
            val = val.tolist()
        if key == "tokenizer.ggml.tokens":
            have = len(val)
            val = val + [f"[PAD{i}]" for i in range(have, n_vocab)]
        elif key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            pad = int(gguf.TokenType.UNUSED) if key.endswith("token_type") else 0.0
            val = val + [pad] * (n_vocab - len(val))
        w.add_key_value(key, val, gguf.GGUFValueType(vtype),
                        sub_type=None if sub is None else gguf.GGUFValueType(sub))
    if not have:
        raise SystemExit(f"{vocab_path}: no tokenizer.ggml.tokens")
    return max(have, n_vocab)


def random_blocks(rng: np.random.Generator, rows: int, cols: int, qtype) -> np.ndarray:
    """(rows, bytes per row) of random blocks with small finite scales (the quant bits, the 6-bit
    sub-block scales and mins are any bytes: every pattern is a valid block)."""
    n, nbytes, offsets = BLOCKS[qtype]
    if cols % n:
        raise SystemExit(f"rows of {cols} values are not whole {qtype.name} blocks of {n}")
    raw = rng.integers(0, 256, size=(rows, cols // n, nbytes), dtype=np.uint8)
    for off in offsets:
        d = rng.uniform(0.0001, 0.0005, size=(rows, cols // n)).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // n, 2)
    if qtype == MXFP4:
        # E8M0 exponents of 2^-9..2^-6 (ggml halves them): values up to 12 * 2^-7, no NaN (0xFF)
        raw[:, :, 0] = rng.integers(118, 122, size=(rows, cols // n), dtype=np.uint8)
    return raw.reshape(rows, -1)


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the layers where Q4_K_M gives attn_v and ffn_down Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Plan = list[tuple[str, tuple[int, ...], object]]


def plan_qwen3moe(s: dict, n_layer: int, n_vocab: int) -> Plan:
    d, hd, E, ff = s["n_embd"], s["head_dim"], s["n_expert"], s["n_ff_exp"]
    out = [("token_embd.weight", (n_vocab, d), Q4K)]
    for i in range(n_layer):
        p = f"blk.{i}."
        v = Q6K if more_bits(i, s["n_layer"]) else Q4K
        out += [(p + "attn_norm.weight", (d,), NORM),
                (p + "attn_q.weight", (s["n_head"] * hd, d), Q4K),
                (p + "attn_k.weight", (s["n_head_kv"] * hd, d), Q4K),
                (p + "attn_v.weight", (s["n_head_kv"] * hd, d), v),
                (p + "attn_output.weight", (d, s["n_head"] * hd), Q4K),
                (p + "attn_q_norm.weight", (hd,), NORM),
                (p + "attn_k_norm.weight", (hd,), NORM),
                (p + "ffn_norm.weight", (d,), NORM),
                (p + "ffn_gate_inp.weight", (E, d), VEC),
                (p + "ffn_gate_exps.weight", (E, ff, d), Q4K),
                (p + "ffn_up_exps.weight", (E, ff, d), Q4K),
                (p + "ffn_down_exps.weight", (E, d, ff), v)]
    return out + [("output_norm.weight", (d,), NORM), ("output.weight", (n_vocab, d), Q6K)]


def plan_gpt_oss(s: dict, n_layer: int, n_vocab: int) -> Plan:
    d, hd, E, ff = s["n_embd"], s["head_dim"], s["n_expert"], s["n_ff_exp"]
    q, kv = s["n_head"] * hd, s["n_head_kv"] * hd
    out = [("token_embd.weight", (n_vocab, d), Q8_0)]
    for i in range(n_layer):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (d,), NORM),
                (p + "attn_q.weight", (q, d), Q8_0), (p + "attn_q.bias", (q,), VEC),
                (p + "attn_k.weight", (kv, d), Q8_0), (p + "attn_k.bias", (kv,), VEC),
                (p + "attn_v.weight", (kv, d), Q8_0), (p + "attn_v.bias", (kv,), VEC),
                (p + "attn_output.weight", (d, q), Q8_0), (p + "attn_output.bias", (d,), VEC),
                (p + "attn_sinks.weight", (s["n_head"],), VEC),
                (p + "post_attention_norm.weight", (d,), NORM),
                (p + "ffn_gate_inp.weight", (E, d), VEC), (p + "ffn_gate_inp.bias", (E,), VEC),
                (p + "ffn_gate_exps.weight", (E, ff, d), MXFP4),
                (p + "ffn_gate_exps.bias", (E, ff), VEC),
                (p + "ffn_up_exps.weight", (E, ff, d), MXFP4),
                (p + "ffn_up_exps.bias", (E, ff), VEC),
                (p + "ffn_down_exps.weight", (E, d, ff), MXFP4),
                (p + "ffn_down_exps.bias", (E, d), VEC)]
    return out + [("output_norm.weight", (d,), NORM), ("output.weight", (n_vocab, d), Q8_0)]


def recurrent(s: dict, i: int) -> bool:
    """Qwen3.5's layer kinds: every attn_every-th layer is full attention, the rest DeltaNet."""
    return (i + 1) % s["attn_every"] != 0


def plan_qwen35(s: dict, n_layer: int, n_vocab: int) -> Plan:
    d, hd, L = s["n_embd"], s["head_dim"], s["n_layer"]
    S, nv = s["d_state"], s["n_v_heads"]
    inner = nv * S
    conv = 2 * s["n_k_heads"] * S + inner
    out = [("token_embd.weight", (n_vocab, d), Q4K)]
    for i in range(n_layer):
        p = f"blk.{i}."
        v = down = Q6K if more_bits(i, L) else Q4K
        out += [(p + "attn_norm.weight", (d,), NORM),
                (p + "post_attention_norm.weight", (d,), NORM)]
        if recurrent(s, i):
            out += [(p + "attn_qkv.weight", (conv, d), v),
                    (p + "attn_gate.weight", (inner, d), Q4K),
                    (p + "ssm_conv1d.weight", (conv, s["d_conv"]), VEC),
                    (p + "ssm_dt.bias", (nv,), VEC),
                    (p + "ssm_a", (nv,), VEC),
                    (p + "ssm_alpha.weight", (nv, d), Q4K),
                    (p + "ssm_beta.weight", (nv, d), Q4K),
                    (p + "ssm_norm.weight", (S,), NORM),
                    (p + "ssm_out.weight", (d, inner), Q4K)]
        else:
            out += [(p + "attn_q.weight", (2 * s["n_head"] * hd, d), Q4K),  # query + gate
                    (p + "attn_k.weight", (s["n_head_kv"] * hd, d), Q4K),
                    (p + "attn_v.weight", (s["n_head_kv"] * hd, d), v),
                    (p + "attn_output.weight", (d, s["n_head"] * hd), Q4K),
                    (p + "attn_q_norm.weight", (hd,), NORM),
                    (p + "attn_k_norm.weight", (hd,), NORM)]
        if s["n_expert"]:
            E, ff, fs = s["n_expert"], s["n_ff_exp"], s["n_ff_shexp"]
            out += [(p + "ffn_gate_inp.weight", (E, d), VEC),
                    (p + "ffn_gate_up_exps.weight", (E, 2 * ff, d), Q4K),
                    (p + "ffn_down_exps.weight", (E, d, ff), down),
                    (p + "ffn_gate_inp_shexp.weight", (d,), VEC),
                    (p + "ffn_gate_shexp.weight", (fs, d), Q4K),
                    (p + "ffn_up_shexp.weight", (fs, d), Q4K),
                    (p + "ffn_down_shexp.weight", (d, fs), down)]
        else:
            out += [(p + "ffn_gate.weight", (s["n_ff"], d), Q4K),
                    (p + "ffn_up.weight", (s["n_ff"], d), Q4K),
                    (p + "ffn_down.weight", (d, s["n_ff"]), down)]
    return out + [("output_norm.weight", (d,), NORM), ("output.weight", (n_vocab, d), Q6K)]


PLANS = {"qwen3moe": plan_qwen3moe, "gpt-oss": plan_gpt_oss, "qwen35moe": plan_qwen35,
         "qwen35": plan_qwen35}
FILE_TYPES = {"gpt-oss": gguf.LlamaFileType.MOSTLY_MXFP4_MOE}


def nbytes(shape: tuple[int, ...], kind) -> int:
    if kind in (NORM, VEC):
        return 4 * int(np.prod(shape))
    n, b, _ = BLOCKS[kind]
    return int(np.prod(shape[:-1])) * (shape[-1] // n) * b


def tensor_data(rng: np.random.Generator, shape: tuple[int, ...], kind) -> np.ndarray:
    if kind == NORM:
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if kind == VEC:
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rows = int(np.prod(shape[:-1]))
    return random_blocks(rng, rows, shape[-1], kind)


def add_metadata(w: gguf.GGUFWriter, s: dict, n_layer: int) -> None:
    arch = s["arch"]
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(n_layer)
    w.add_feed_forward_length(s["n_ff"])
    if s["n_expert"]:
        w.add_expert_feed_forward_length(s["n_ff_exp"])
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_dimension_count(s.get("n_rot", s["head_dim"]))
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["eps"])
    if arch == "gpt-oss":
        w.add_sliding_window(s["window"])
    if arch in ("qwen35", "qwen35moe"):
        if s["n_expert"]:
            w.add_expert_shared_feed_forward_length(s["n_ff_shexp"])
        w.add_rope_dimension_sections(s["rope_sections"])
        w.add_ssm_conv_kernel(s["d_conv"])
        w.add_ssm_inner_size(s["n_v_heads"] * s["d_state"])
        w.add_ssm_state_size(s["d_state"])
        w.add_ssm_time_step_rank(s["n_v_heads"])
        w.add_ssm_group_count(s["n_k_heads"])
        w.add_full_attention_interval(s["attn_every"])
        # the per-layer flags newer llama.cpp savers write (../shared/archs/qwen35-dense.gguf)
        w.add_key_value(f"{arch}.attention.recurrent_layers",
                        [int(recurrent(s, i)) for i in range(n_layer)],
                        gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    w.add_file_type(FILE_TYPES.get(arch, gguf.LlamaFileType.MOSTLY_Q4_K_M))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen3-30b-a3b", choices=SHAPES)
    ap.add_argument("--vocab", required=True, help="a vocab-only GGUF (its tokenizer is copied)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=0, help="write this many layers (0: all)")
    ap.add_argument("--scale-down", action="store_true",
                    help="every dimension small (a smoke test of the file)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    s = dict(SHAPES[a.shape])
    if a.scale_down:
        s.update({k: v for k, v in SCALED_DOWN.items() if k in s or k == "n_vocab"})
        if not SHAPES[a.shape]["n_expert"]:
            s["n_expert"] = s["n_expert_used"] = 0  # a dense shape stays dense
    n_layer = a.layers or s["n_layer"]
    if not 0 < n_layer <= s["n_layer"]:
        raise SystemExit(f"--layers {a.layers}: the shape has {s['n_layer']} layers")
    w = gguf.GGUFWriter(a.out, s["arch"])
    w.add_name(f"random-{a.shape}" + ("-scaled-down" if a.scale_down else "")
               + (f"-{n_layer}-layers" if n_layer != s["n_layer"] else ""))
    add_metadata(w, s, n_layer)
    n_vocab = copy_tokenizer(w, a.vocab, s["n_vocab"])
    w.add_vocab_size(n_vocab)
    tensors = PLANS[s["arch"]](s, n_layer, n_vocab)
    for name, shape, kind in tensors:
        if kind in (NORM, VEC):
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, kind))
        else:
            n, b, _ = BLOCKS[kind]
            w.add_tensor_info(name, (*shape[:-1], shape[-1] // n * b), np.dtype(np.uint8),
                              nbytes(shape, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    for _name, shape, kind in tensors:  # one tensor in memory at a time
        w.write_tensor_data(tensor_data(rng, shape, kind))
    w.close()
    total = sum(nbytes(shape, kind) for _n, shape, kind in tensors)
    step = step_bytes([(name, shape[0], nbytes(shape, kind)) for name, shape, kind in tensors],
                      s["n_expert"], s["n_expert_used"])
    used = f"{s['n_expert_used']} of {s['n_expert']} experts a layer" if s["n_expert"] else "dense"
    print(f"{a.out}: {n_layer} layers, {total / 2**30:.2f} GiB of tensors; a one-token decode "
          f"step reads {step / 2**20:.1f} MiB of weights ({used})")


if __name__ == "__main__":
    main()
