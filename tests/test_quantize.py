"""Quantizers (fastllm.quants.quantize) and model requantization (fastllm.quantize)."""

from __future__ import annotations

import hashlib
import math

import gguf
import numpy as np
import pytest

from conftest import IN_CI, need
from fastllm.errors import GGUFError, UnsupportedError
from fastllm.gguf import open_gguf
from fastllm.quantize import FTYPES, plan_types, quantize_file
from fastllm.quants import (
    GGML_BLOCK,
    SUPPORTED_TYPES,
    GGMLType,
    dequantize,
    quantize,
    row_bytes,
)

T = GGMLType
QUANT_TYPES = [t for t in SUPPORTED_TYPES if GGML_BLOCK[t][0] > 1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


def _rel_rmse(x: np.ndarray, t: GGMLType) -> float:
    y = dequantize(quantize(x, t), t, x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))


# Expected error on N(0, s^2) data, relative to s. Rounding to a grid of step h leaves an error
# uniform on [-h/2, h/2], RMS h/sqrt(12). The step is a group's absmax/nmax for the symmetric
# types and its range/nmax for the min-offset ones; for N(0,1) the mean absmax of a group is 2.35
# (32 values) or 2.08 (16 values) and the mean range 4.14 (32) or 3.53 (16). So Q4_0 (32 values,
# absmax -> -8) expects 2.35/8/sqrt(12) = 0.085. F16/BF16 keep 11/8 significant bits: half an
# ulp is at most 2**-11 / 2**-8 of the value, RMS about that over sqrt(3). The bounds are these
# estimates plus 15%.
def _grid(spread: float, nmax: int) -> float:
    return spread / nmax / math.sqrt(12)


EXPECTED_RMSE = {
    T.F16: 2.0**-11 / math.sqrt(3),
    T.BF16: 2.0**-8 / math.sqrt(3),
    T.Q8_0: _grid(2.35, 127),  # 0.0053
    T.Q4_0: _grid(2.35, 8),  # 0.085
    T.Q4_1: _grid(4.14, 15),  # 0.080
    T.Q5_0: _grid(2.35, 16),  # 0.042
    T.Q5_1: _grid(4.14, 31),  # 0.039
    T.Q2_K: _grid(3.53, 3),  # 0.34, 16-value groups with a min
    T.Q3_K: _grid(2.08, 4),  # 0.150, 16-value groups, levels -4..3
    T.Q4_K: _grid(4.14, 15),  # 0.080, 32-value groups with a min; the scale search does better
    T.Q5_K: _grid(4.14, 31),  # 0.039
    T.Q6_K: _grid(2.08, 32),  # 0.019, 16-value groups
    # E2M1 levels 0, 0.5, 1, 1.5, 2, 3, 4, 6 (times 2^(floor(log2 absmax) - 2)): for N(0,1) groups
    # of 32 (absmax ~2.35) steps of 0.25 below 1 (68% of the values), 0.5 to 2 (27%) and 1 past
    # 2, the last clipped at 3: sqrt(0.68 (0.25^2) + 0.27 (0.5^2) + 0.05 (1^2)) / sqrt(12) = 0.113
    T.MXFP4: math.sqrt(0.68 * 0.25**2 + 0.27 * 0.5**2 + 0.05 * 1.0**2) / math.sqrt(12),
}


@pytest.mark.parametrize("t", list(EXPECTED_RMSE), ids=lambda t: t.name)
def test_quantize_error_bound(t, rng):
    scale = float(rng.uniform(0.02, 3.0))
    x = rng.standard_normal((32, 1024), dtype=np.float32) * np.float32(scale)
    raw = quantize(x, t)
    assert raw.dtype == np.uint8 and raw.shape == (32, row_bytes(t, 1024))
    assert _rel_rmse(x, t) < 1.15 * EXPECTED_RMSE[t]


def test_k_quants_beat_plain_formats(rng):
    # the K-quant scale/min searches (make_qkx2_quants) must beat plain min/max rounding with the
    # same number of levels
    x = rng.standard_normal((64, 1024), dtype=np.float32)
    assert _rel_rmse(x, T.Q4_K) < 0.95 * _rel_rmse(x, T.Q4_1)
    assert _rel_rmse(x, T.Q5_K) < 0.98 * _rel_rmse(x, T.Q5_1)


def test_f32_roundtrip_exact(rng):
    x = rng.standard_normal((3, 40), dtype=np.float32)
    assert np.array_equal(dequantize(quantize(x, T.F32), T.F32, x.shape), x)


@pytest.mark.parametrize("t", [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.MXFP4],
                         ids=lambda t: t.name)
def test_quantize_equals_gguf(t, rng):
    # gguf's quantizers for these types transcribe ggml's quantize_row_*_ref: identical bytes
    x = rng.standard_normal((24, 768), dtype=np.float32) * np.float32(rng.uniform(0.01, 5))
    x[0, :32] *= 1e-3  # a block of small values
    x[1, 5] = 30.0  # an outlier
    ours = quantize(x, t)
    ref = np.asarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t)))).view(np.uint8)
    assert np.array_equal(ours, ref.reshape(ours.shape))


def _golden_input() -> np.ndarray:
    """Fixed data built from integer hashes (no platform-dependent math): sums of 3 uniforms,
    rows scaled 1/8 .. 2, one all-zero stretch and one outlier."""
    i = np.arange(16 * 512, dtype=np.uint64)

    def u(a: int, c: int) -> np.ndarray:
        h = (i * np.uint64(a) + np.uint64(c)) % np.uint64(1 << 32)
        return h.astype(np.float64) / float(1 << 32)

    x = (u(2654435761, 12345) + u(2246822519, 777) + u(3266489917, 4242) - 1.5) * 2.0
    x = x.reshape(16, 512) * ((np.arange(16) + 1) / 8.0)[:, None]
    x[2, :64] = 0.0
    x[5, 100] = 25.0
    return x.astype(np.float32)


# sha256 (first 32 hex digits) of ggml's quantize_row_<type>_ref output for _golden_input(),
# from ggml-quants.c (llama.cpp as vendored by llama-cpp-python 0.3.36) compiled without FMA
# contraction. (An FMA build rounds some K-quant search products differently and may choose
# another scale in a near-tied block.)
GGML_REF_SHA256 = {
    T.Q8_0: "3269677cb52d318aac48eec6ac3b55b0",
    T.Q4_0: "3cb8bf3993e7e47aaeb6c81eee34437a",
    T.Q4_1: "b79cf7f1f37c17b13bcf8febda934160",
    T.Q5_0: "5921dfc30b45d66ca59084e559e8a125",
    T.Q5_1: "7e2bca1688e1bb55d85ce0a4af2dcd4b",
    T.Q2_K: "ac6df0deb1bb3a30417eae288ac34180",
    T.Q3_K: "40d80a275a7cd210cad43e1fd65d2064",
    T.Q4_K: "08954a678c0eef438ac49ee2847617c7",
    T.Q5_K: "e87bdb8b3fed631beed256aa8c7fc0d5",
    T.Q6_K: "6b25b8737425f548327abe037a128f7e",
}


@pytest.mark.parametrize("t", list(GGML_REF_SHA256), ids=lambda t: t.name)
def test_quantize_matches_ggml_reference_bytes(t):
    raw = quantize(_golden_input(), t)
    assert hashlib.sha256(raw.tobytes()).hexdigest()[:32] == GGML_REF_SHA256[t]


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_quantize_degenerate_blocks(t, rng):
    n = 256
    x = np.zeros((4, n), np.float32)
    x[1] = 0.375  # constant
    x[2] = -np.abs(rng.standard_normal(n, dtype=np.float32))  # one sign only
    x[3, 7] = 1.0  # a single spike
    y = dequantize(quantize(x, t), t, x.shape)
    assert np.isfinite(y).all()
    assert np.array_equal(y[0], np.zeros(n, np.float32))  # zeros stay exactly zero
    tol = 1.15 * EXPECTED_RMSE[t] * 4  # a lone row is noisier than the average
    for r in (1, 2):
        assert np.sqrt(np.mean((y[r] - x[r]) ** 2)) <= tol * np.sqrt(np.mean(x[r] ** 2))
    assert abs(y[3, 7] - 1.0) < 0.1 and np.abs(np.delete(y[3], 7)).max() < 0.1


def test_quantize_shapes_and_errors(rng):
    x = rng.standard_normal((2, 3, 256), dtype=np.float32)
    raw = quantize(x, T.Q6_K)
    assert raw.shape == (2, 3, row_bytes(T.Q6_K, 256))
    assert np.array_equal(dequantize(raw, T.Q6_K, x.shape), dequantize(
        quantize(x.reshape(6, 256), T.Q6_K), T.Q6_K, (6, 256)).reshape(x.shape))
    with pytest.raises(ValueError, match="multiple"):
        quantize(np.zeros((2, 96), np.float32), T.Q4_K)
    raw64 = quantize(x.astype(np.float64), T.Q8_0)  # other float dtypes are converted
    assert np.array_equal(raw64, quantize(x, T.Q8_0))
    bad = x.reshape(6, 256).copy()
    bad[4, 9] = np.nan
    with pytest.raises(GGUFError, match="blk.9.ffn_up.weight"):
        quantize(bad, T.Q4_K, name="blk.9.ffn_up.weight")


# --------------------------------------------------------------------------------------------
# quantize_file
# --------------------------------------------------------------------------------------------

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, N_VOCAB = 8, 256, 4, 1, 320
HEAD_DIM = N_EMBD // N_HEAD
# use_more_bits(i, 8) of llama-quant.cpp: i < 8/8, i >= 7*8/8, or (i - 1) % 3 == 2
MORE_BITS_LAYERS = {0, 3, 6, 7}


def _write_model(path, rng, *, n_ff=512, tied=False, extra=None):
    """A llama-shaped GGUF with random float weights (std 0.02; token_embd stored as F16)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_uint32("llama.block_count", N_LAYER)
    w.add_uint32("llama.context_length", 128)
    w.add_uint32("llama.embedding_length", N_EMBD)
    w.add_uint32("llama.feed_forward_length", n_ff)
    w.add_uint32("llama.attention.head_count", N_HEAD)
    w.add_uint32("llama.attention.head_count_kv", N_HEAD_KV)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float64("test.f64", 0.1)
    w.add_int8("test.i8", -3)
    w.add_uint64("test.u64", 2**40 + 1)
    w.add_bool("test.flag", True)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(N_VOCAB)])
    w.add_array("tokenizer.ggml.scores", [float(-i) for i in range(N_VOCAB)])
    w.add_array("tokenizer.ggml.token_type", [1] * N_VOCAB)
    w.add_file_type(0)
    w.add_custom_alignment(64)
    weights: dict[str, np.ndarray] = {}

    def add(name, shape, dtype=np.float32):
        x = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
        if len(shape) == 1:
            x = 1.0 + x
        weights[name] = x.astype(dtype).astype(np.float32)
        w.add_tensor(name, x.astype(dtype))

    add("token_embd.weight", (N_VOCAB, N_EMBD), np.float16)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (N_EMBD,))
        add(p + "attn_q.weight", (N_EMBD, N_EMBD))
        add(p + "attn_k.weight", (N_HEAD_KV * HEAD_DIM, N_EMBD))
        add(p + "attn_v.weight", (N_HEAD_KV * HEAD_DIM, N_EMBD))
        add(p + "attn_output.weight", (N_EMBD, N_EMBD))
        add(p + "ffn_norm.weight", (N_EMBD,))
        add(p + "ffn_gate.weight", (n_ff, N_EMBD))
        add(p + "ffn_up.weight", (n_ff, N_EMBD))
        add(p + "ffn_down.weight", (N_EMBD, n_ff))
    add("output_norm.weight", (N_EMBD,))
    if not tied:
        add("output.weight", (N_VOCAB, N_EMBD))
    for name, (raw, t) in (extra or {}).items():  # raw bytes (rows, row bytes) of type t
        w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(int(t)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def _expected_q4_k_m(name: str, n_ff: int, tied: bool) -> GGMLType:
    """llama.cpp's Q4_K_M choices for this model, worked out by hand from llama-quant.cpp."""
    if name.endswith("norm.weight"):
        return T.F32
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return T.Q6_K
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if "attn_v" in name and layer in MORE_BITS_LAYERS:
        return T.Q6_K
    if "ffn_down" in name:
        more = layer in MORE_BITS_LAYERS
        if n_ff % 256:  # rows not whole super-blocks: Q6_K -> Q8_0, Q4_K -> Q5_0
            return T.Q8_0 if more else T.Q5_0
        return T.Q6_K if more else T.Q4_K
    return T.Q4_K


@pytest.fixture
def model(tmp_path, rng):
    path = tmp_path / "model-f32.gguf"
    weights = _write_model(path, rng)
    return path, weights


def _meta_fields(path):
    r = gguf.GGUFReader(str(path))
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        out[k] = (list(f.types), [bytes(np.asarray(p).tobytes()) for p in f.parts[3:]])
    return out


@pytest.mark.parametrize("n_ff, tied", [(512, False), (352, False), (512, True)])
def test_quantize_file_q4_k_m(tmp_path, rng, n_ff, tied):
    src = tmp_path / "in.gguf"
    weights = _write_model(src, rng, n_ff=n_ff, tied=tied)
    dst = tmp_path / "out-q4_k_m.gguf"
    plan = quantize_file(src, dst, "Q4_K_M")
    out = open_gguf(dst)  # readable by fastllm, every type supported
    assert list(out.tensors) == list(weights)
    for name, info in out.tensors.items():
        want = _expected_q4_k_m(name, n_ff, tied)
        assert info.type == want == plan[name], name
        assert info.shape == weights[name].shape
        x = weights[name]
        y = dequantize(info.data, info.type, info.shape, name=name)
        if info.type == T.F32:
            assert np.array_equal(y, x)
        else:
            rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
            assert rel < 1.15 * EXPECTED_RMSE[info.type] * 1.1, name  # a small tensor is noisier
            # the same bytes as quantizing the tensor directly
            assert np.array_equal(np.asarray(info.data).reshape(-1),
                                  quantize(x, info.type).reshape(-1)), name
    assert out.metadata["general.file_type"] == FTYPES["Q4_K_M"][1] == 15
    assert out.metadata["general.quantization_version"] == 2


def test_quantize_file_keeps_metadata(model, tmp_path):
    src, _ = model
    dst = tmp_path / "out.gguf"
    quantize_file(src, dst, "Q8_0")
    a, b = _meta_fields(src), _meta_fields(dst)
    assert set(b) == set(a) | {"general.quantization_version"}
    for k in a:
        if k == "general.file_type":
            continue
        assert a[k] == b[k], k  # same value type and same bytes
    assert open_gguf(dst).metadata["general.file_type"] == 7
    assert open_gguf(dst).metadata["general.alignment"] == 64
    r = gguf.GGUFReader(str(dst))
    assert all(t.data_offset % 64 == 0 for t in r.tensors)


@pytest.mark.parametrize("ftype, default", [("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0),
                                            ("Q6_K", T.Q6_K), ("F16", T.F16),
                                            ("Q4_K", T.Q4_K), ("Q5_K_M", T.Q5_K)])
def test_quantize_file_other_ftypes(model, tmp_path, ftype, default):
    src, weights = model
    dst = tmp_path / f"out-{ftype}.gguf"
    quantize_file(src, dst, ftype)
    out = open_gguf(dst)
    for name, info in out.tensors.items():
        if name.endswith("norm.weight"):
            want = T.F32
        elif name == "output.weight" and ftype not in ("F16", "Q8_0", "Q4_K"):
            want = T.Q6_K  # llama.cpp's output rule; "Q4_K" is pure
        elif (ftype == "Q5_K_M" and ("attn_v" in name or "ffn_down" in name)
              and int(name.split(".")[1]) in MORE_BITS_LAYERS):
            want = T.Q6_K
        else:
            want = default
        assert info.type == want, (ftype, name)
        y = dequantize(info.data, info.type, info.shape)
        x = weights[name]
        if info.type != T.F32:
            rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
            assert rel < 1.15 * EXPECTED_RMSE[info.type] * 1.1, name
    assert out.metadata["general.file_type"] == FTYPES[ftype][1]


def test_quantize_file_requantizes_quantized_source(model, tmp_path):
    src, weights = model
    q8 = tmp_path / "q8.gguf"
    quantize_file(src, q8, "Q8_0")
    q4 = tmp_path / "q4.gguf"
    quantize_file(q8, q4, "Q4_K_M")
    out = open_gguf(q4)
    x = weights["blk.1.attn_q.weight"]
    info = out.tensor("blk.1.attn_q.weight")
    assert info.type == T.Q4_K
    y = dequantize(info.data, info.type, info.shape)
    assert np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)) < 1.15 * EXPECTED_RMSE[T.Q4_K]
    # a tensor already of the target type is copied byte for byte
    same = tmp_path / "q8b.gguf"
    quantize_file(q8, same, "Q8_0")
    assert np.array_equal(np.asarray(open_gguf(same).tensor("blk.2.ffn_up.weight").data),
                          np.asarray(open_gguf(q8).tensor("blk.2.ffn_up.weight").data))


def test_pure_and_plan_types(model):
    src, _ = model
    f = open_gguf(src)
    pure = plan_types(f, "Q4_K_M", pure=True)
    assert {t for n, t in pure.items() if not n.endswith("norm.weight")} == {T.Q4_K}
    mix = plan_types(f, "q4_k_m")  # case-insensitive
    assert mix["output.weight"] == T.Q6_K
    assert [i for i in range(N_LAYER)
            if mix[f"blk.{i}.attn_v.weight"] == T.Q6_K] == sorted(MORE_BITS_LAYERS)


GPT_OSS = "archs/gpt-oss-moe-e6k2.gguf"


def test_quantize_file_mxfp4_moe(tmp_path, data_dir):
    """MXFP4_MOE on llama.cpp's own gpt-oss file (F32, every optional tensor): llama-quant.cpp's
    recipe puts the 3-D expert matrices (ne[2] = 6 experts) in MXFP4 and every other quantizable
    weight (attention, token_embd, output) in Q8_0; norms, the router, biases, sinks and the
    per-expert scales keep their type. The bytes are fastllm's quantizer's, checked against the
    gguf package's above."""
    src = need(data_dir / GPT_OSS, GPT_OSS)
    dst = tmp_path / "gpt-oss-mxfp4.gguf"
    plan = quantize_file(src, dst, "MXFP4_MOE")
    f, out = open_gguf(src), open_gguf(dst)
    assert out.metadata["general.file_type"] == FTYPES["MXFP4_MOE"][1] == 38
    kinds = set()
    for name, info in f.tensors.items():
        if name.endswith("_exps.weight"):
            want = T.MXFP4
        elif name.endswith(".weight") and len(info.shape) == 2 and "ffn_gate_inp" not in name:
            want = T.Q8_0
        else:
            want = info.type
        got = out.tensors[name]
        assert got.type == want == plan[name], name
        assert got.shape == info.shape, name
        if want != info.type:
            kinds.add(want)
            x = np.asarray(info.data).view(np.float32).reshape(info.shape)
            assert np.array_equal(np.asarray(got.data).reshape(-1),
                                  quantize(x, want).reshape(-1)), name
        else:
            assert np.array_equal(np.asarray(got.data), np.asarray(info.data)), name
    assert kinds == {T.MXFP4, T.Q8_0}


def test_unsupported_source_type_names_type_and_tensor(tmp_path, rng):
    # an IQ4_NL tensor (valid GGUF, a type fastllm cannot decode) that Q8_0 must convert
    raw = rng.integers(0, 256, size=(N_EMBD, N_EMBD // 32 * 18), dtype=np.uint8)
    src = tmp_path / "iq.gguf"
    _write_model(src, rng, extra={"blk.0.attn_q2.weight": (raw, T.IQ4_NL)})
    dst = tmp_path / "out.gguf"
    with pytest.raises(UnsupportedError) as e:
        quantize_file(src, dst, "Q8_0")
    assert "IQ4_NL" in str(e.value) and "blk.0.attn_q2.weight" in str(e.value)
    assert not dst.exists() and not (tmp_path / "out.gguf.part").exists()


def test_unknown_ftype(model, tmp_path):
    src, _ = model
    with pytest.raises(UnsupportedError, match="Q9_9"):
        quantize_file(src, tmp_path / "x.gguf", "Q9_9")


# --------------------------------------------------------------------------------------------
# Real files made by llama.cpp's llama-quantize
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_q4_k_m():
    from fastllm.errors import PullError
    from fastllm.pull import pull

    try:
        return pull("gemma3-270m", quiet=True)
    except PullError as e:
        return pytest.fail(str(e)) if IN_CI else need(None, f"gemma3-270m ({e})")


def test_plan_matches_llama_cpp_q4_k_m(gemma3_q4_k_m):
    # Gemma 3 270M as llama-quantize wrote it: tied embeddings, n_embd 640 (not a multiple of
    # 256, so Q4_K -> Q5_0 and Q6_K -> Q8_0 fallbacks), attn_v/ffn_down Q6_K by use_more_bits
    f = open_gguf(gemma3_q4_k_m, check_types=False)
    assert f.metadata["general.file_type"] == FTYPES["Q4_K_M"][1]
    plan = plan_types(f, "Q4_K_M")
    assert {n: t.type for n, t in f.tensors.items()} == plan
    assert set(plan.values()) == {T.F32, T.Q4_K, T.Q5_0, T.Q6_K, T.Q8_0}


def test_plan_matches_llama_cpp_q4_1(smollm2):
    # SmolLM2 135M Q4_1: its tied token_embd gets the output rule (Q6_K), which n_embd 576 turns
    # into Q8_0
    f = open_gguf(smollm2, check_types=False)
    assert f.metadata["general.file_type"] == FTYPES["Q4_1"][1]
    plan = plan_types(f, "Q4_1")
    assert {n: t.type for n, t in f.tensors.items()} == plan
    assert plan["token_embd.weight"] == T.Q8_0


def test_same_type_requantization_reproduces_the_file(smollm2, tmp_path):
    # every tensor keeps its type, so each is copied; the metadata (49k-token vocabulary and
    # merges included) is written back with the same types in the same order: the very same file
    dst = tmp_path / "copy.gguf"
    quantize_file(smollm2, dst, "Q4_1")
    assert dst.read_bytes() == smollm2.read_bytes()
