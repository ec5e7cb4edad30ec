"""phi3, smollm3, granite and mistral3 beyond what their ../shared/archs files show.

test_archs.py runs the four files against llama.cpp's logits. The saver writes each with its
defaults, so some of what llama.cpp does is not exercised there: phi3's fused `attn_qkv` (the
saver writes separate q/k/v) and its long rope factors (llama.cpp used the short ones: the
context was not past rope.scaling.original_context_length), granite's embedding_scale and
logit_scale (0 and 1: no-ops), its rope switch, and smollm3's rope-less layers (the file has
two layers, the first without rope is the fourth). Each is shown here on copies of the files
with tensors or keys changed, against llama.cpp's logits where the change keeps the network's
function, and by an exact relation or the graph's structure where it does not.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from fastllm import Model
from fastllm.errors import GGUFError, UnsupportedError
from test_archs import RMS_BOUND, bound, copy_with_keys, make_backend

F32 = gguf.GGUFValueType.FLOAT32



def rewrite(src: Path, dst: Path, tensors: dict[str, np.ndarray | None],
            keys: dict | None = None) -> Path:
    """src with tensors replaced or added (numpy order, float32) or removed (None), and
    metadata keys set ({key: (value, GGUFValueType)}) or removed ({key: None})."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    keys = keys or {}
    for k, f in r.fields.items():
        v = f.contents()
        if k.startswith("GGUF.") or k == "general.architecture" or k in keys or v == []:
            continue
        w.add_key_value(k, v, f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for k, vt in keys.items():
        if vt is not None:
            w.add_key_value(k, *vt)
    for t in r.tensors:
        if t.name not in tensors:
            w.add_tensor(t.name, np.array(t.data), raw_shape=tuple(reversed(t.shape.tolist())))
    for name, a in tensors.items():
        if a is not None:
            w.add_tensor(name, np.ascontiguousarray(a, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of an F32 file, numpy order."""
    return {t.name: np.array(t.data, np.float32).reshape(tuple(reversed(t.shape.tolist())))
            for t in gguf.GGUFReader(str(path)).tensors}


def assert_matches_llamacpp(got: np.ndarray, want: np.ndarray, backend: str) -> None:
    assert np.abs(got - want).max() <= bound(backend, want)
    assert float(np.sqrt(np.mean(np.square(got - want)))) <= RMS_BOUND


def fuse_qkv(src: Path, dst: Path, fused_bias: bool) -> Path:
    """src with each attention layer's q/k/v as one attn_qkv (llama.cpp's fused layout): the
    per-tensor scales (where there are any) folded into the rows, then a shared attn_qkv.scale
    of 2 taken back out (a power of two: exact), the biases as attn_qkv.bias or left as the
    three separate ones."""
    t = tensors_of(src)
    edits: dict[str, np.ndarray | None] = {}
    one = np.ones(1, np.float32)
    for p in [n[:-len("attn_q.weight")] for n in t if n.endswith(".attn_q.weight")]:
        rows = [t[p + f"attn_{x}.weight"] * t.get(p + f"attn_{x}.scale", one)[0] / 2
                for x in "qkv"]
        edits[p + "attn_qkv.weight"] = np.concatenate(rows)
        edits[p + "attn_qkv.scale"] = np.array([2.0], np.float32)
        for x in "qkv":
            for kind in ("weight", "scale", "input_scale"):
                edits[p + f"attn_{x}.{kind}"] = None
        if fused_bias:
            edits[p + "attn_qkv.bias"] = np.concatenate([t[p + f"attn_{x}.bias"] for x in "qkv"])
            for x in "qkv":
                edits[p + f"attn_{x}.bias"] = None
    return rewrite(src, dst, edits)


@pytest.mark.parametrize(("name", "fused_bias", "backend"), [
    ("phi3-dense", True, "reference"), ("phi3-dense", False, "reference"),
    ("phi3-dense", True, "webgpu"), ("granite-dense", True, "reference")])
def test_fused_qkv_gives_llamacpp_logits(archs, archs_logits, tmp_path, name, fused_bias, backend):
    """A fused attn_qkv (Phi-3's own layout; llama.cpp's create_tensor_qkv takes it for every
    architecture here) computes what the separate tensors do: llama.cpp's logits for them."""
    r = archs_logits[name + ".gguf"]
    p = fuse_qkv(archs / f"{name}.gguf", tmp_path / "fused.gguf", fused_bias)
    m = Model.load(p, backend=make_backend(backend))
    assert "blk.0.attn_qkv.weight[k]" in m.net.w and "blk.0.attn_q.weight" not in m.net.w
    assert_matches_llamacpp(m.logits(r["tokens"]), np.asarray(r["logits"], np.float32), backend)


def test_fused_qkv_missing_both_layouts_names_the_tensor(archs, tmp_path):
    p = rewrite(archs / "phi3-dense.gguf", tmp_path / "noq.gguf", {"blk.1.attn_q.weight": None})
    with pytest.raises(GGUFError, match=r"noq\.gguf: missing tensor 'blk\.1\.attn_q\.weight' "
                                        r"\(and no fused 'blk\.1\.attn_qkv\.weight'\)"):
        Model.load(p, backend="reference")


def test_fused_tensor_of_the_wrong_size_names_it(archs, tmp_path):
    """phi3's ffn_up holds gate and up, n_ff rows each: other row counts are a clear error."""
    t = tensors_of(archs / "phi3-dense.gguf")
    p = rewrite(archs / "phi3-dense.gguf", tmp_path / "up.gguf",
                {"blk.0.ffn_up.weight": t["blk.0.ffn_up.weight"][:700]})
    with pytest.raises(GGUFError, match=r"up\.gguf: tensor 'blk\.0\.ffn_up\.weight' has 700 "
                                        r"rows, expected 768 \(gate 384 \+ up 384\)"):
        Model.load(p, backend="reference")


def test_a_fused_part_the_graph_forgets_fails_the_load(archs, monkeypatch):
    """A fused tensor counts as used only when the graph reads every part of it."""
    from fastllm.models.phi3 import Phi3

    monkeypatch.setattr(Phi3, "ffn_block", lambda self, g, x, i: g.matmul(
        g.swiglu(*(g.matmul(x, self.w[f"blk.{i}.ffn_up.weight[gate]"]),) * 2),
        self.w[f"blk.{i}.ffn_down.weight"]))
    with pytest.raises(UnsupportedError, match=r"does not use: blk\.N\.ffn_up\.weight"):
        Model.load(archs / "phi3-dense.gguf", backend="reference")


def test_phi3_long_rope_factors_past_the_original_context(archs, archs_logits, tmp_path):
    """llama.cpp's get_rope_factors: rope_factors_long when the context exceeds
    rope.scaling.original_context_length (256 in the file), else rope_factors_short. Its logits
    were computed with the short ones: a context of 512 moves fastllm off them, unless the
    long factors are made equal to the short ones; at 256 the long ones are never read."""
    r = archs_logits["phi3-dense.gguf"]
    want = np.asarray(r["logits"], np.float32)
    src = archs / "phi3-dense.gguf"
    long_ctx = Model.load(src, backend="reference", n_ctx=512).logits(r["tokens"])
    assert float(np.sqrt(np.mean(np.square(long_ctx - want)))) > 3 * RMS_BOUND
    t = tensors_of(src)
    same = rewrite(src, tmp_path / "same.gguf",
                   {"rope_factors_long.weight": t["rope_factors_short.weight"]})
    assert_matches_llamacpp(Model.load(same, backend="reference", n_ctx=512).logits(r["tokens"]),
                            want, "reference")
    other = rewrite(src, tmp_path / "other.gguf",
                    {"rope_factors_long.weight": t["rope_factors_long.weight"] * 3})
    np.testing.assert_array_equal(
        Model.load(other, backend="reference", n_ctx=256).logits(r["tokens"]),
        Model.load(src, backend="reference", n_ctx=256).logits(r["tokens"]))


def test_smollm3_no_rope_in_every_fourth_layer(archs, tmp_path):
    """llama.cpp's smollm3 rotates Q and K in layer il unless (il + 1) % 4 == 0. The file has two
    layers; a copy with four (its layers twice) records rope for layers 0-2 and none for 3."""
    t = tensors_of(archs / "smollm3-dense.gguf")
    more = {n.replace("blk.", "blk.X", 1): a for n, a in t.items() if n.startswith("blk.")}
    more = {n.replace("blk.X0.", "blk.2.").replace("blk.X1.", "blk.3."): a
            for n, a in more.items()}
    p = rewrite(archs / "smollm3-dense.gguf", tmp_path / "four.gguf", more,
                {"smollm3.block_count": (4, gguf.GGUFValueType.UINT32)})
    m = Model.load(p, backend="reference")
    g = m.net.build(3, False)
    made_by = {n.out.id: n.op for n in g.nodes if n.out is not None}
    k_op = {n.attrs["layer"]: made_by[n.args[0].id] for n in g.nodes if n.op == "kv_store"}
    assert k_op == {0: "rope", 1: "rope", 2: "rope", 3: "add"}  # layer 3: k = x @ W * s + b
    assert sum(n.op == "rope" for n in g.nodes) == 6  # q and k of three layers
    assert np.isfinite(m.logits([1, 2, 3, 4, 5])).all()


@pytest.fixture(scope="module")
def granite_plain(archs, archs_logits) -> np.ndarray:
    return Model.load(archs / "granite-dense.gguf", backend="reference").logits(
        archs_logits["granite-dense.gguf"]["tokens"])


def granite_with(archs, archs_logits, tmp_path, keys: dict,
                 tensors: dict | None = None) -> np.ndarray:
    p = rewrite(archs / "granite-dense.gguf", tmp_path / "g.gguf", tensors or {},
                {f"granite.{k}": v for k, v in keys.items()})
    return Model.load(p, backend="reference").logits(archs_logits["granite-dense.gguf"]["tokens"])


def test_granite_logit_scale_divides_the_logits(archs, archs_logits, tmp_path, granite_plain):
    got = granite_with(archs, archs_logits, tmp_path, {"logit_scale": (4.0, F32)})
    np.testing.assert_array_equal(got, granite_plain / 4)  # a power of two: exact


def test_granite_embedding_scale_multiplies_the_embeddings(archs, archs_logits, tmp_path,
                                                           granite_plain):
    """embedding_scale 4 over embeddings divided by 4 (exact in float32) is the file's network
    again; embedding_scale 0, as in the file, means no scaling (llama.cpp), so the same
    divided embeddings give other logits."""
    emb = tensors_of(archs / "granite-dense.gguf")["token_embd.weight"] / 4
    scaled = granite_with(archs, archs_logits, tmp_path, {"embedding_scale": (4.0, F32)},
                          {"token_embd.weight": emb})
    np.testing.assert_array_equal(scaled, granite_plain)
    unscaled = granite_with(archs, archs_logits, tmp_path, {"embedding_scale": (0.0, F32)},
                            {"token_embd.weight": emb})
    assert np.abs(unscaled - granite_plain).max() > 1e-3


def test_granite_attention_scale(archs, archs_logits, tmp_path, granite_plain):
    """attention.scale 0 (the file's) means 1/sqrt(head size); another value replaces it."""
    d = 1.0 / np.sqrt(np.float32(128))
    same = granite_with(archs, archs_logits, tmp_path, {"attention.scale": (float(d), F32)})
    np.testing.assert_allclose(same, granite_plain, rtol=0, atol=1e-6)
    other = granite_with(archs, archs_logits, tmp_path, {"attention.scale": (0.5, F32)})
    # (these random weights leave attention nearly uniform: 0.5 instead of 0.088 moves the
    # logits by 5e-4, 50 times the RMS bound of test_archs)
    assert np.abs(other - granite_plain).max() > 1e-4


def test_granite_rope_off_when_not_finetuned(archs, archs_logits, tmp_path, granite_plain):
    """rope.scaling.finetuned false switches rope off (llama.cpp's granite). Rope with every
    frequency divided by 1e30 (rope_freqs, which the file has) rotates by angles of 1e-28 at
    most: the network without rope, as a second way of writing it."""
    ids = archs_logits["granite-dense.gguf"]["tokens"]
    src = archs / "granite-dense.gguf"
    off = copy_with_keys(src, tmp_path / "norope.gguf",
                         {"granite.rope.scaling.finetuned": (False, gguf.GGUFValueType.BOOL)})
    m = Model.load(off, backend="reference")
    assert not any(n.op == "rope" for n in m.net.build(2, False).nodes)
    still = rewrite(src, tmp_path / "still.gguf", {"rope_freqs.weight": np.full(64, 1e30)})
    np.testing.assert_allclose(m.logits(ids), Model.load(still, backend="reference").logits(ids),
                               rtol=0, atol=1e-6)
    # these near-uniform attentions make rope's part small (1.3e-4 measured; the two ways of
    # writing "no rope" agree to the bit on the reference backend)
    assert np.abs(m.logits(ids) - granite_plain).max() > 1e-5


def test_granite_logit_scale_zero_is_an_error(archs, tmp_path):
    p = copy_with_keys(archs / "granite-dense.gguf", tmp_path / "k.gguf",
                       {"granite.logit_scale": (0.0, F32)})
    with pytest.raises(GGUFError, match=r"k\.gguf: granite\.logit_scale is 0"):
        Model.load(p, backend="reference")


def test_mistral3_attention_temperature_within_the_original_context(archs, archs_logits, tmp_path):
    """llama.cpp scales mistral3's queries by 1 + beta * log(1 + floor(p / n)), n the original
    context (256 here): 1 exactly below n. So a context of n gives llama.cpp's logits for the
    file without the key, and a longer one is refused naming the key and the way out."""
    r = archs_logits["mistral3-dense.gguf"]
    p = copy_with_keys(archs / "mistral3-dense.gguf", tmp_path / "t.gguf",
                       {"mistral3.attention.temperature_scale": (0.1, F32)})
    m = Model.load(p, backend="reference", n_ctx=256)
    assert_matches_llamacpp(m.logits(r["tokens"]), np.asarray(r["logits"], np.float32),
                            "reference")
    with pytest.raises(UnsupportedError, match=r"t\.gguf: mistral3\.attention\."
                                               r"temperature_scale 0\.1 .* n_ctx <= 256"):
        Model.load(p, backend="reference", n_ctx=257)


def test_granite_needs_logit_scale(archs, tmp_path):
    """llama.cpp reads granite.logit_scale as a required key."""
    p = rewrite(archs / "granite-dense.gguf", tmp_path / "nols.gguf", {},
                {"granite.logit_scale": None})
    with pytest.raises(GGUFError, match="missing metadata key 'granite.logit_scale'"):
        Model.load(p, backend="reference")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_0"])
def test_row_blocks_of_a_quantized_tensor(qtype):
    """A fused tensor's parts are byte ranges of whole rows: dequantized, they are the rows of
    the whole as the gguf package dequantizes it (3 blocks a row here, so a part may start off
    a 4-byte boundary)."""
    from fastllm.gguf import TensorInfo
    from fastllm.models.base import row_block
    from fastllm.quants import GGMLType, dequantize

    t = gguf.GGMLQuantizationType[qtype]
    a = np.random.default_rng(5).standard_normal((12, 96)).astype(np.float32)
    raw = gguf.quants.quantize(a, t)
    want = gguf.quants.dequantize(raw, t)
    info = TensorInfo("w", GGMLType[qtype], (12, 96), raw.reshape(-1), "f.gguf")
    start = 0
    for part, rows in (("a", 5), ("b", 4), ("c", 3)):
        got = row_block(info, start, rows, part)
        assert got.name == f"w[{part}]" and got.shape == (rows, 96)
        np.testing.assert_array_equal(dequantize(got.data, got.type, got.shape),
                                      want[start:start + rows])
        start += rows


@pytest.mark.parametrize(("name", "backend"), [
    ("phi3-dense", "reference"), ("phi3-dense", "webgpu"), ("smollm3-dense", "webgpu")])
def test_a_batched_step_equals_each_sequence_alone(archs, name, backend):
    """Several sequences per step (each row its own slot and position): phi3's fused parts and
    long/short factors and smollm3's layers give each row the logits of its sequence run alone
    on the reference backend, up to float32 reassociation in other kernels (measured up to
    2.3e-7 on logits up to 0.5)."""
    m = Model.load(archs / f"{name}.gguf", backend=make_backend(backend), n_seq=3, n_ctx=64)
    one = Model.load(archs / f"{name}.gguf", backend="reference", n_ctx=64)
    seqs = [[5, 9, 17, 3], [7, 100], [1, 2, 3, 4, 5, 6]]
    for s, ids in enumerate(seqs):
        m.prefill(ids, slot=s)
    order = [2, 0, 1]
    toks = [40, 41, 42]
    got = m.decode_rows(toks, order)
    for row, s in enumerate(order):
        one.prefill(seqs[s])
        want = one.decode(toks[row])
        np.testing.assert_allclose(got[row], want, rtol=0, atol=1e-6)


def test_mistral3_yarn_loads_and_scales(archs, archs_logits, tmp_path):
    """Ministral 3's rope.scaling.type "yarn" (test_yarn.py checks the rotation against ggml):
    the file's rope_freqs are folded into the divisors computed at load, so they count as read;
    factor 1 is no scaling at all, another factor moves the logits."""
    from fastllm.models.layout import YARN_FACTORS

    ids = archs_logits["mistral3-dense.gguf"]["tokens"][:24]
    plain = Model.load(archs / "mistral3-dense.gguf", backend="reference").logits(ids)
    out = {}
    for factor in (1.0, 4.0):
        p = copy_with_keys(archs / "mistral3-dense.gguf", tmp_path / f"y{factor}.gguf", {
            "mistral3.rope.scaling.type": ("yarn", gguf.GGUFValueType.STRING),
            "mistral3.rope.scaling.factor": (factor, F32),
            "mistral3.rope.scaling.original_context_length": (64, gguf.GGUFValueType.UINT32)})
        m = Model.load(p, backend="reference")
        assert (YARN_FACTORS in m.net.w) == (factor != 1.0)
        out[factor] = m.logits(ids)
    np.testing.assert_array_equal(out[1.0], plain)
    assert np.abs(out[4.0] - plain).max() > 1e-5
    # the divisors are a weight like any other on the GPU: WebGPU differs from the reference
    # by its f16 rounding only (test_archs' bound against llama.cpp; measured 2e-5)
    gpu = Model.load(tmp_path / "y4.0.gguf", backend=make_backend("webgpu")).logits(ids)
    assert np.abs(gpu - out[4.0]).max() <= bound("webgpu", out[4.0])
