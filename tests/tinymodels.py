"""Tiny random-weight models of every architecture, written with gguf.GGUFWriter.

They carry a small SPM vocabulary (byte fallback + a few words) built here, so tests of the engine,
sampling and backends need no downloaded data. Weights are random: outputs mean nothing, but every
code path of the architecture runs.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WORDS = ["▁the", "▁a", "▁cat", "▁dog", "▁sat", "▁on", "▁mat", "▁and", "▁is", "▁Once", "▁upon",
         "▁time", "▁there", "▁was", "▁little", "▁girl", ".", ",", "▁", "e", "t", "a", "o", "n"]


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of a small SPM vocabulary: unk, BOS, EOS, 256 bytes, words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    types = [2, 3, 3] + [6] * 256 + [1] * len(WORDS)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, types


SHAPES = {
    # arch: (n_embd, n_layer, n_head, n_head_kv, n_ff, head_dim)
    "llama": (64, 2, 4, 2, 96, 16),
    "qwen2": (64, 2, 4, 2, 96, 16),
    "qwen3": (64, 2, 4, 2, 96, 32),  # head_dim != n_embd / n_head, as in real Qwen3
    "gemma3": (64, 3, 2, 1, 96, 32),
}


def write_tiny_model(path: Path, arch: str, *, seed: int = 0, qtype: str = "F32",
                     sliding_window: int = 8, n_ctx_train: int = 256, tied: bool = True,
                     rope_freqs: bool = False, qtypes: dict[str, str] | None = None) -> Path:
    """Write a random `arch` model to path. qtype quantizes the 2-D weights (via
    fastllm.quants.quantize) so quantized paths can be exercised too; qtypes overrides it for
    the tensors whose names contain a key (mixed types, as a Q4_K_M file has)."""
    rng = np.random.default_rng(seed)
    n_embd, n_layer, n_head, n_kv, n_ff, hd = SHAPES[arch]
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", n_ctx_train)
    w.add_uint32(f"{arch}.embedding_length", n_embd)
    w.add_uint32(f"{arch}.block_count", n_layer)
    w.add_uint32(f"{arch}.feed_forward_length", n_ff)
    w.add_uint32(f"{arch}.attention.head_count", n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", n_kv)
    w.add_uint32(f"{arch}.attention.key_length", hd)
    w.add_uint32(f"{arch}.attention.value_length", hd)
    w.add_uint32(f"{arch}.rope.dimension_count", hd)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0 if arch == "llama" else 1_000_000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    if arch == "gemma3":
        w.add_uint32(f"{arch}.attention.sliding_window", sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(rows: int, cols: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * s).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def add2d(name: str, x: np.ndarray) -> None:
        qt = next((t for k, t in (qtypes or {}).items() if k in name), qtype)
        if qt == "F32":
            w.add_tensor(name, x)
            return
        from fastllm.quants import GGMLType, quantize

        t = GGMLType[qt]
        raw = quantize(x, t)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(int(t)))

    add2d("token_embd.weight", mat(n_vocab, n_embd, 1.0))
    w.add_tensor("output_norm.weight", norm(n_embd))
    if not tied:
        add2d("output.weight", mat(n_vocab, n_embd))
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", (1.0 + rng.random(hd // 2) * 3).astype(np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        add2d(p + "attn_q.weight", mat(n_head * hd, n_embd))
        add2d(p + "attn_k.weight", mat(n_kv * hd, n_embd))
        add2d(p + "attn_v.weight", mat(n_kv * hd, n_embd))
        add2d(p + "attn_output.weight", mat(n_embd, n_head * hd))
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        add2d(p + "ffn_gate.weight", mat(n_ff, n_embd))
        add2d(p + "ffn_up.weight", mat(n_ff, n_embd))
        add2d(p + "ffn_down.weight", mat(n_embd, n_ff))
        if arch == "qwen2":
            for t, n in (("q", n_head * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
                w.add_tensor(p + f"attn_{t}.bias", (0.1 * rng.standard_normal(n)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            w.add_tensor(p + "attn_q_norm.weight", norm(hd))
            w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        if arch == "gemma3":
            w.add_tensor(p + "post_attention_norm.weight", norm(n_embd))
            w.add_tensor(p + "post_ffw_norm.weight", norm(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
