"""A fused `attn_qkv` in every architecture whose llama.cpp loader accepts one.

llama.cpp creates the attention of llama (dense and MoE), qwen2, qwen3, qwen3moe, gemma3,
gpt-oss and the full-attention layers of qwen35/qwen35moe through
llama_model_base::create_tensor_qkv (src/models/<arch>.cpp) and reads them through
llm_graph_context::build_qkv: one fused tensor, Q's rows then K's then V's, in place of the
three (test_archs_dense.py shows it for phi3 and granite). The saver writes the separate layout,
so each check here is on a copy of an ../shared/archs file with q/k/v (and their biases) fused:
a row concatenation changes no dot product, so llama.cpp's logits for the original file are the
reference, within test_archs.py's bounds. What follows the projection is the separate layout's:
qwen3's and gemma3's per-head q/k norms, gpt-oss's biases and sinks, qwen35's query whose rows
carry each head's output gate (its fused query part is twice n_head * head_dim rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastllm import Model
from fastllm.errors import GGUFError
from test_archs import make_backend
from test_archs_dense import assert_matches_llamacpp, fuse_qkv, rewrite, tensors_of

# one file per architecture (the MoE ones with 6 experts, 2 used: routing matters)
FILES = ["llama-dense", "llama-moe", "qwen2-dense", "qwen3-dense", "gemma3-dense",
         "qwen3moe-moe-e6k2", "gpt-oss-moe-e6k2", "qwen35-dense", "qwen35moe-moe-e6k2"]
# on WebGPU, the files whose attention has something past the projections: per-head norms
# (qwen3, gemma3, with its window), biases and sinks (gpt-oss), the gated query (qwen35)
GPU_FILES = ["qwen3-dense", "gemma3-dense", "gpt-oss-moe-e6k2", "qwen35-dense"]



def attention_layers(path: Path) -> list[int]:
    return sorted(int(n.split(".")[1]) for n in tensors_of(path) if n.endswith(".attn_q.weight"))


def check_fused(archs, archs_logits, tmp_path, name: str, fused_bias: bool, backend: str) -> None:
    r = archs_logits[name + ".gguf"]
    layers = attention_layers(archs / f"{name}.gguf")
    p = fuse_qkv(archs / f"{name}.gguf", tmp_path / "fused.gguf", fused_bias)
    m = Model.load(p, backend=make_backend(backend))
    for i in layers:  # loaded as three parts, the separate tensors gone
        assert f"blk.{i}.attn_qkv.weight[q]" in m.net.w
        assert f"blk.{i}.attn_q.weight" not in m.net.w
        assert (f"blk.{i}.attn_qkv.bias[v]" in m.net.w) == fused_bias
    assert_matches_llamacpp(m.logits(r["tokens"]), np.asarray(r["logits"], np.float32), backend)


@pytest.mark.parametrize("name", FILES)
def test_fused_qkv_gives_llamacpp_logits(archs, archs_logits, tmp_path, name):
    check_fused(archs, archs_logits, tmp_path, name, True, "reference")


@pytest.mark.parametrize("name", GPU_FILES)
def test_fused_qkv_on_webgpu(archs, archs_logits, tmp_path, name):
    check_fused(archs, archs_logits, tmp_path, name, True, "webgpu")


@pytest.mark.parametrize("name", ["gpt-oss-moe-e6k2", "qwen35-dense"])
def test_fused_weight_with_separate_biases(archs, archs_logits, tmp_path, name):
    """build_qkv adds the three separate biases to a fused product when all three are there."""
    check_fused(archs, archs_logits, tmp_path, name, False, "reference")


def test_qwen35_delta_layer_attn_qkv_stays_whole(archs, archs_logits, tmp_path):
    """qwen35's DeltaNet layers have an attn_qkv of their own (the delta rule's q, k, v, read
    whole by the convolution): only the attention layers' one is split."""
    p = fuse_qkv(archs / "qwen35-dense.gguf", tmp_path / "fused.gguf", True)
    m = Model.load(p, backend="reference")
    assert "blk.0.attn_qkv.weight" in m.net.w and "blk.0.attn_qkv.weight[q]" not in m.net.w
    assert "blk.1.attn_qkv.weight" not in m.net.w and "blk.1.attn_qkv.weight[q]" in m.net.w


def test_qwen35_fused_query_without_its_gate_names_the_tensor(archs, tmp_path):
    """qwen35's fused query part holds the gate too: a tensor laid out with n_head * head_dim
    query rows (256 here, no gate) is refused, naming the rows it should have."""
    t = tensors_of(archs / "qwen35-dense.gguf")
    p = "blk.1."
    qkv = np.concatenate([t[p + "attn_q.weight"][:256], t[p + "attn_k.weight"],
                          t[p + "attn_v.weight"]])
    edits = {p + f"attn_{x}.{k}": None for x in "qkv" for k in ("weight", "scale", "input_scale")}
    bad = rewrite(archs / "qwen35-dense.gguf", tmp_path / "nogate.gguf",
                  edits | {p + "attn_qkv.weight": qkv})
    with pytest.raises(GGUFError, match=r"nogate\.gguf: tensor 'blk\.1\.attn_qkv\.weight' has "
                                        r"768 rows, expected 1024 \(q 512 \+ k 256 \+ v 256\)"):
        Model.load(bad, backend="reference")


def test_a_fused_bias_of_the_wrong_size_names_it(archs, tmp_path):
    t = tensors_of(archs / "qwen3-dense.gguf")
    p = "blk.0."
    fused = fuse_qkv(archs / "qwen3-dense.gguf", tmp_path / "fused.gguf", True)
    bias = np.concatenate([t[p + f"attn_{x}.bias"] for x in "qk"])
    bad = rewrite(fused, tmp_path / "bias.gguf", {p + "attn_qkv.bias": bias})
    with pytest.raises(GGUFError, match=r"bias\.gguf: tensor 'blk\.0\.attn_qkv\.bias' has 320 "
                                        r"rows, expected 384 \(q 256 \+ k 64 \+ v 64\)"):
        Model.load(bad, backend="reference")


def test_no_attention_tensors_names_what_is_missing(archs, tmp_path):
    """Neither layout: the load fails naming the first separate tensor and the fused one."""
    edits = {f"blk.0.attn_{x}.weight": None for x in "qkv"}
    bad = rewrite(archs / "gemma3-dense.gguf", tmp_path / "noqkv.gguf", edits)
    with pytest.raises(GGUFError, match=r"noqkv\.gguf: missing tensor 'blk\.0\.attn_q\.weight' "
                                        r"\(and no fused 'blk\.0\.attn_qkv\.weight'\)"):
        Model.load(bad, backend="reference")
