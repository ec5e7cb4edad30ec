"""Dequantizers of fastllm.quants against the `gguf` package's, on fresh random blocks."""

from __future__ import annotations

import sys

import gguf
import numpy as np
import pytest

from fastllm.errors import UnsupportedError
from fastllm.quants import (
    GGML_BLOCK,
    SUPPORTED_TYPES,
    GGMLType,
    dequantize,
    dequantize_rows,
    quantize,
    random_blocks,
    row_bytes,
)
from fastllm.quants.encode import _F16_FIELDS

QUANT_TYPES = [t for t in SUPPORTED_TYPES if GGML_BLOCK[t][0] > 1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()  # fresh data every run


def _gguf_dequantize(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    ref = gguf.quants.dequantize(raw.reshape(-1, raw.shape[-1]), gguf.GGMLQuantizationType(int(t)))
    return np.asarray(ref, np.float32).reshape(shape)


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 256), (5, 512), (3, 2304), (2, 3, 768)])
def test_dequantize_equals_gguf(t, shape, rng):
    # Bit-exact, not merely close: both follow ggml's dequantize_row_* operation for operation in
    # float32 (e.g. Q4_K is (d*sc)*q - dmin*m), and NumPy never contracts a*b+c into an FMA, so
    # no value can differ by even one ulp.
    n_rows = int(np.prod(shape[:-1]))
    raw = random_blocks(t, n_rows, shape[-1], rng)
    ours = dequantize(raw, t, shape)
    ref = _gguf_dequantize(raw, t, shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.isfinite(ours).all()
    assert np.array_equal(ours, ref)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))  # signs of zeros too


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_equals_gguf_large(t, rng):
    # more blocks than one internal chunk (2**20 elements), so the chunked path is covered
    n_rows, n_cols = 1100, 1024
    raw = random_blocks(t, n_rows, n_cols, rng)
    assert np.array_equal(dequantize(raw, t, (n_rows, n_cols)),
                          _gguf_dequantize(raw, t, (n_rows, n_cols)))


@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_dequantize_extreme_bytes(t, fill, rng):
    # every quant/sub-scale byte 0x00 or 0xFF (smallest/largest nibbles, all high bits set,
    # 6-bit scales 0 or 63, int8 scales -1), keeping the random finite f16 scales
    raw = random_blocks(t, 4, 512, rng).reshape(-1, GGML_BLOCK[t][1])
    blocks = np.full_like(raw, fill)
    for off, *_ in _F16_FIELDS[t]:
        blocks[:, off:off + 2] = raw[:, off:off + 2]
    blocks = blocks.reshape(4, -1)
    assert np.array_equal(dequantize(blocks, t, (4, 512)), _gguf_dequantize(blocks, t, (4, 512)))


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_dequantize_rows_equals_full(t, rng):
    n_rows, n_cols = 37, 512
    raw = random_blocks(t, n_rows, n_cols, rng)
    full = dequantize(raw, t, (n_rows, n_cols))
    rows = rng.integers(0, n_rows, size=20)
    rows[0] = rows[1]  # a repeated token
    got = dequantize_rows(raw, t, n_cols, rows)
    assert got.shape == (20, n_cols)
    assert np.array_equal(got, full[rows])
    # a flat view of the raw bytes (as a memmap slice arrives) works the same
    assert np.array_equal(dequantize_rows(raw.reshape(-1), t, n_cols, rows[:3]), full[rows[:3]])
    assert dequantize_rows(raw, t, n_cols, np.array([], np.int64)).shape == (0, n_cols)


def test_dequantize_rows_out_of_range(rng):
    raw = random_blocks(GGMLType.Q8_0, 4, 64, rng)
    with pytest.raises(IndexError, match="row 4"):
        dequantize_rows(raw, GGMLType.Q8_0, 64, [0, 4])
    with pytest.raises(IndexError, match="row -1"):
        dequantize_rows(raw, GGMLType.Q8_0, 64, [-1])


def test_dequantize_checks_sizes(rng):
    raw = random_blocks(GGMLType.Q4_K, 2, 256, rng)
    with pytest.raises(ValueError, match="bytes"):
        dequantize(raw[:, :-1], GGMLType.Q4_K, (2, 256))
    with pytest.raises(ValueError, match="multiple"):
        dequantize(raw, GGMLType.Q4_K, (4, 128))


def test_dequantize_f32_is_a_writable_copy(rng):
    x = rng.standard_normal((3, 8), dtype=np.float32)
    raw = x.view(np.uint8)
    y = dequantize(raw, GGMLType.F32, (3, 8))
    y[:] = 0
    assert np.array_equal(raw.view(np.float32), x)


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_random_blocks_are_valid(t, rng):
    raw = random_blocks(t, 6, 768, rng)
    assert raw.dtype == np.uint8 and raw.shape == (6, row_bytes(t, 768))
    x = dequantize(raw, t, (6, 768))
    assert np.isfinite(x).all()
    assert 0.05 < float(x.std()) < 10  # "moderate": values of order one
    assert not np.array_equal(raw, random_blocks(t, 6, 768, rng))  # fresh each call


@pytest.mark.parametrize("t", [GGMLType.IQ2_XXS, GGMLType.IQ4_NL, GGMLType.Q8_1, GGMLType.TQ2_0,
                               GGMLType.IQ1_M, GGMLType.I32],
                         ids=lambda t: t.name)
def test_unsupported_type_names_type_and_tensor(t):
    blk, bsz = GGML_BLOCK[t]
    raw = np.zeros(4 * bsz, np.uint8)
    with pytest.raises(UnsupportedError) as e:
        dequantize(raw, t, (1, 4 * blk), name="blk.3.attn_q.weight")
    assert t.name in str(e.value) and "blk.3.attn_q.weight" in str(e.value)
    with pytest.raises(UnsupportedError) as e:
        dequantize_rows(raw, t, 4 * blk, [0], name="token_embd.weight")
    assert t.name in str(e.value) and "token_embd.weight" in str(e.value)
    with pytest.raises(UnsupportedError) as e:
        quantize(np.zeros((1, 4 * blk), np.float32), t, name="output.weight")
    assert t.name in str(e.value) and "output.weight" in str(e.value)


def _python_calls(fn) -> int:
    """How many Python-level function calls (Python and built-in) fn() makes."""
    n = 0

    def count(frame, event, arg):
        nonlocal n
        n += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


@pytest.mark.parametrize("t, shape", [
    *((t, (64, 1 << 16)) for t in QUANT_TYPES),  # 4 Mi values: several dequantization steps
    (GGMLType.Q8_0, (49152, 576)),  # a SmolLM-size embedding table
    (GGMLType.Q4_K, (2048, 8192)),
], ids=lambda v: v.name if isinstance(v, GGMLType) else "x".join(map(str, v)))
def test_dequantize_is_vectorized(t, shape, rng):
    """Vectorized means the Python work does not grow with the number of blocks: the tensor is
    decoded in steps of _DQ_CHUNK_ELEMS values, each step making the calls one row's decoding
    makes. A per-block loop would make at least one call per block (hundreds of thousands
    here). Counted, not timed: a busy machine changes the time, not the count."""
    from fastllm.quants.decode import _DQ_CHUNK_ELEMS

    blk = GGML_BLOCK[t][0]
    one_row = random_blocks(t, 1, blk, rng)
    per_step = _python_calls(lambda: dequantize(one_row, t, (1, blk)))
    raw = random_blocks(t, *shape, rng)
    n_blocks = shape[0] * shape[1] // blk
    steps = -(-shape[0] * shape[1] // _DQ_CHUNK_ELEMS)
    out = []
    calls = _python_calls(lambda: out.append(dequantize(raw, t, shape)))
    # (the bound is far below one call per block, so a per-block loop could not pass)
    assert calls <= (steps + 1) * per_step < n_blocks // 10, (calls, steps, per_step)
    assert out[0].shape == shape
    # the stepped decoding decodes every step: its last rows equal a decoding of those rows alone
    tail = raw.reshape(shape[0], -1)[-1:]
    np.testing.assert_array_equal(out[0][-1:], dequantize(tail, t, (1, shape[1])))
