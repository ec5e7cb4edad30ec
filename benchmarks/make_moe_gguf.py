"""Write a random-weight mixture-of-experts GGUF of a real model's shape for speed runs: noise
weights, real shapes, real tensor types and file layout, the tokenizer copied from a vocab-only
GGUF (../shared/vocab/ggml-vocab-qwen2.gguf for Qwen3).

Shape qwen3-30b-a3b: Qwen3-30B-A3B (`qwen3moe`: 48 layers of n_embd 2048, 32 query heads and 4
KV heads of 128, 128 experts of 768 of which 8 are used per token, vocabulary 151,936). Types as
llama.cpp's Q4_K_M recipe (llama_tensor_get_type) gives them for it: Q4_K for the experts' gate
and up, for attn_q, attn_k, attn_output and the token embedding; Q6_K for the output matrix and,
in the layers where the recipe gives more bits (use_more_bits: i < n/8, i >= 7n/8, and every
third layer between), for attn_v and ffn_down_exps (Q4_K in the others); the router
(ffn_gate_inp) and the norms F32 (llama-quantize never quantizes the router).

`--layers N` writes the first N layers of the real width (the whole model is ~17 GB); `--scale-down`
shrinks every dimension (n_embd 256, 8 experts of 256, 2 used) for a smoke test that the file
loads. The tensors are generated and written one at a time, so memory stays at one tensor.

Example: python3 benchmarks/make_moe_gguf.py --layers 8 --vocab ../shared/vocab/ggml-vocab-qwen2.gguf
--out q30b-8l.gguf
"""

from __future__ import annotations

import argparse

import gguf
import numpy as np

SHAPES = {
    "qwen3-30b-a3b": {"n_embd": 2048, "n_layer": 48, "n_head": 32, "n_head_kv": 4,
                      "head_dim": 128, "n_ff": 6144, "n_ff_exp": 768, "n_expert": 128,
                      "n_expert_used": 8, "rope_base": 1e6, "n_ctx": 40960, "eps": 1e-6},
}
SCALED_DOWN = {"n_embd": 256, "n_head": 4, "n_head_kv": 2, "head_dim": 64, "n_ff": 512,
               "n_ff_exp": 256, "n_expert": 8, "n_expert_used": 2}

Q4K, Q6K = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K
F32 = gguf.GGMLQuantizationType.F32
# block values, block bytes, byte offsets of the f16 scales (d, dmin) (ggml-common.h)
BLOCKS = {Q4K: (256, 144, (0, 2)), Q6K: (256, 210, (208,))}


def copy_tokenizer(w: gguf.GGUFWriter, vocab_path: str) -> int:
    """The tokenizer.* keys of a vocab-only GGUF; returns the vocabulary size."""
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
            w.add_array(key, val)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(f.parts[-1]).decode())
        else:
            w.add_key_value(key, f.parts[-1][0].item(), vt)
    if not n_vocab:
        raise SystemExit(f"{vocab_path}: no tokenizer.ggml.tokens")
    return n_vocab


def random_blocks(rng: np.random.Generator, rows: int, cols: int, qtype) -> np.ndarray:
    """(rows, bytes per row) of random blocks with small finite f16 scales (the quant bits, the
    6-bit sub-block scales and mins are any bytes: every pattern is a valid block)."""
    n, nbytes, offsets = BLOCKS[qtype]
    if cols % n:
        raise SystemExit(f"rows of {cols} values are not whole {qtype.name} blocks of {n}")
    raw = rng.integers(0, 256, size=(rows, cols // n, nbytes), dtype=np.uint8)
    for off in offsets:
        d = rng.uniform(0.0001, 0.0005, size=(rows, cols // n)).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // n, 2)
    return raw.reshape(rows, -1)


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the layers where Q4_K_M gives attn_v and ffn_down Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def plan(s: dict, n_layer: int, n_vocab: int) -> list[tuple[str, tuple[int, ...], object]]:
    """(name, numpy-order shape, type or "norm") of every tensor, in file order."""
    d, hd, L = s["n_embd"], s["head_dim"], n_layer
    E, ff = s["n_expert"], s["n_ff_exp"]
    out = [("token_embd.weight", (n_vocab, d), Q4K)]
    for i in range(L):
        p = f"blk.{i}."
        v = Q6K if more_bits(i, s["n_layer"]) else Q4K
        out += [(p + "attn_norm.weight", (d,), "norm"),
                (p + "attn_q.weight", (s["n_head"] * hd, d), Q4K),
                (p + "attn_k.weight", (s["n_head_kv"] * hd, d), Q4K),
                (p + "attn_v.weight", (s["n_head_kv"] * hd, d), v),
                (p + "attn_output.weight", (d, s["n_head"] * hd), Q4K),
                (p + "attn_q_norm.weight", (hd,), "norm"),
                (p + "attn_k_norm.weight", (hd,), "norm"),
                (p + "ffn_norm.weight", (d,), "norm"),
                (p + "ffn_gate_inp.weight", (E, d), F32),
                (p + "ffn_gate_exps.weight", (E, ff, d), Q4K),
                (p + "ffn_up_exps.weight", (E, ff, d), Q4K),
                (p + "ffn_down_exps.weight", (E, d, ff), v)]
    out += [("output_norm.weight", (d,), "norm"), ("output.weight", (n_vocab, d), Q6K)]
    return out


def nbytes(shape: tuple[int, ...], kind) -> int:
    if kind in ("norm", F32):
        return 4 * int(np.prod(shape))
    n, b, _ = BLOCKS[kind]
    return int(np.prod(shape[:-1])) * (shape[-1] // n) * b


def decode_bytes(tensors, n_expert: int, n_used: int) -> tuple[int, int]:
    """(bytes of the file's tensors, bytes of weights a one-token decode step reads): every
    tensor but the experts' matrices, of which only the n_used chosen experts' slices, and of
    the token embedding one row."""
    total = step = 0
    for name, shape, kind in tensors:
        b = nbytes(shape, kind)
        total += b
        if "_exps." in name:
            b = b * n_used // n_expert
        elif name == "token_embd.weight":
            b //= shape[0]
        step += b
    return total, step


def tensor_data(rng: np.random.Generator, shape: tuple[int, ...], kind) -> np.ndarray:
    if kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if kind == F32:
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rows = int(np.prod(shape[:-1]))
    return random_blocks(rng, rows, shape[-1], kind)


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
        s.update(SCALED_DOWN)
    n_layer = a.layers or s["n_layer"]
    if not 0 < n_layer <= s["n_layer"]:
        raise SystemExit(f"--layers {a.layers}: the shape has {s['n_layer']} layers")
    w = gguf.GGUFWriter(a.out, "qwen3moe")
    w.add_name(f"random-{a.shape}" + ("-scaled-down" if a.scale_down else "")
               + (f"-{n_layer}-layers" if n_layer != s["n_layer"] else ""))
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(n_layer)
    w.add_feed_forward_length(s["n_ff"])
    w.add_expert_feed_forward_length(s["n_ff_exp"])
    w.add_expert_count(s["n_expert"])
    w.add_expert_used_count(s["n_expert_used"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    n_vocab = copy_tokenizer(w, a.vocab)
    w.add_vocab_size(n_vocab)
    tensors = plan(s, n_layer, n_vocab)
    for name, shape, kind in tensors:
        if kind in ("norm", F32):
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
    total, step = decode_bytes(tensors, s["n_expert"], s["n_expert_used"])
    print(f"{a.out}: {n_layer} layers, {total / 2**30:.2f} GiB of tensors; a one-token decode "
          f"step reads {step / 2**20:.1f} MiB of weights ({s['n_expert_used']} of "
          f"{s['n_expert']} experts a layer)")


if __name__ == "__main__":
    main()
