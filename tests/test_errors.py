"""Each bad input gets its own test: one clear exception, a subclass of FastLLMError, naming the
file, tensor or key at fault."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from fastllm import (
    ContextOverflowError,
    FastLLMError,
    GGUFError,
    Model,
    Tokenizer,
    TokenizerError,
    UnsupportedError,
)
from tinymodels import write_tiny_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "llama.gguf", "llama")


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="no such file") as e:
        Model.load(tmp_path / "nope.gguf", backend="reference")
    assert "nope.gguf" in str(e.value)


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        Model.load(p, backend="reference")
    with pytest.raises(FastLLMError):
        Tokenizer.load(p)


@pytest.mark.parametrize("keep", [0.01, 0.3, 0.999])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFError, match="cut.gguf"):
        Model.load(p, backend="reference")


def test_tensor_data_past_end(good, tmp_path):
    """Header intact, data region short: the tensor whose data runs off the end is named."""
    data = good.read_bytes()
    p = tmp_path / "short.gguf"
    p.write_bytes(data[:-64])
    with pytest.raises(GGUFError, match=r"tensor '.*' data ends .* past the end"):
        Model.load(p, backend="reference")


def test_unsupported_tensor_type(tmp_path):
    p = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    raw = np.zeros((4, 66), np.uint8)  # 4 rows of one IQ2_XXS block (256 values, 66 bytes)
    w.add_tensor("blk.0.attn_q.weight", raw, raw_shape=raw.shape,
                 raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError, match=r"unsupported tensor type IQ2_XXS in tensor "
                                               r"'blk.0.attn_q.weight'"):
        Model.load(p, backend="reference")


def test_unknown_architecture(tmp_path):
    p = tmp_path / "arch.gguf"
    w = gguf.GGUFWriter(str(p), "mamba9")
    w.add_tensor("x.weight", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError, match=r"unsupported architecture 'mamba9'.*llama"):
        Model.load(p, backend="reference")


def _rewrite(src, dst, change) -> None:
    """Copy GGUF src to dst with its metadata; change(name, data) gives each tensor's new data,
    or None to leave the tensor out."""
    from gguf import GGUFReader

    r = GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        w.add_key_value(k, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        data = change(t.name, np.array(t.data))
        if data is not None:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_missing_tensor_named(good, tmp_path):
    p = tmp_path / "missing.gguf"
    _rewrite(good, p, lambda name, d: None if name == "blk.1.ffn_up.weight" else d)
    with pytest.raises(GGUFError, match="missing tensor 'blk.1.ffn_up.weight'"):
        Model.load(p, backend="reference")


def test_block_count_past_the_tensors(good, tmp_path):
    """A block_count of 2^31 (the fuzzer's: listing its tensors took all memory): a clear error
    naming the key, before anything is allocated for the layers."""
    from gguf import GGUFReader

    r = GGUFReader(str(good))
    f = r.fields["llama.block_count"]
    data = bytearray(good.read_bytes())
    off = int(f.parts[f.data[0]].ctypes.data - r.data.ctypes.data)
    data[off:off + 4] = (1 << 31).to_bytes(4, "little")
    p = tmp_path / "layers.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"layers.gguf: metadata key 'llama.block_count' says "
                                        r"2147483648 layers"):
        Model.load(p, backend="reference")


def test_tensor_shape_disagreeing_with_metadata(good, tmp_path):
    """attn_k with fewer rows than head_count_kv * head_dim: a clear error at load, naming the
    file (the fuzzer found this one as an AssertionError at the first token)."""
    p = tmp_path / "shape.gguf"
    _rewrite(good, p, lambda name, d: d[:8] if name == "blk.0.attn_k.weight" else d)
    with pytest.raises(GGUFError, match=r"shape.gguf: inconsistent model"):
        Model.load(p, backend="reference")


@pytest.mark.parametrize("name", ["blk.0.ffn_up.weight", "blk.1.attn_v.weight"])
def test_projection_rows_disagreeing_with_their_partner(good, tmp_path, name):
    """ffn_up with fewer rows than ffn_gate (their product is element-wise), attn_v with fewer
    than attn_k (one cache row holds both): a clear error at load, not a numpy broadcast
    ValueError at the first token (the fuzzer found the first)."""
    p = tmp_path / "rows.gguf"
    _rewrite(good, p, lambda n, d: d[: len(d) // 2] if n == name else d)
    with pytest.raises(GGUFError, match=r"rows.gguf: inconsistent model") as e:
        Model.load(p, backend="reference")
    assert name in str(e.value)


def test_failed_load_closes_its_backend(good, tmp_path):
    """A failure after the weights went to the backend (here: the cache does not fit) closes the
    backend: nothing stays allocated for a model that never loaded. Tensors that disagree with
    each other fail earlier, before a single weight is loaded."""
    from fastllm.backends.reference import ReferenceBackend
    from fastllm.errors import BackendError

    class Counting(ReferenceBackend):
        loaded = closed = 0

        def load_weight(self, info):
            self.loaded += 1
            return super().load_weight(info)

        def init_kv(self, spec):
            raise BackendError("out of memory for the cache")

        def close(self):
            self.closed += 1
            super().close()

    be = Counting()
    with pytest.raises(BackendError, match="out of memory"):
        Model.load(good, backend=be)
    assert be.loaded > 0 and be.closed == 1

    p = tmp_path / "rows.gguf"
    _rewrite(good, p, lambda n, d: d[: len(d) // 2] if n == "blk.1.ffn_up.weight" else d)
    be = Counting()
    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight"):
        Model.load(p, backend=be)
    assert be.loaded == 0


def test_norm_weight_of_the_wrong_length(good, tmp_path):
    """A norm weight whose length is not the row's: a clear error at load naming the tensor (the
    fuzzer found this one as a numpy broadcast ValueError at the first token)."""
    p = tmp_path / "norm.gguf"
    _rewrite(good, p, lambda name, d: np.concatenate([d, d]) if name == "blk.1.attn_norm.weight"
             else d)
    with pytest.raises(GGUFError, match=r"norm.gguf: inconsistent model.*blk.1.attn_norm.weight"):
        Model.load(p, backend="reference")


def test_prompt_longer_than_context(good):
    m = Model.load(good, backend="reference", n_ctx=8)
    with pytest.raises(ContextOverflowError, match="do not fit the context of 8"):
        m.generate(list(range(3, 20)), max_tokens=1)
    with pytest.raises(ContextOverflowError):
        m.logits(list(range(3, 20)))
    # the failed call left the model usable
    assert m.logits([1, 5, 6]).shape == (3, m.n_vocab)


def test_bad_token_id_and_arguments(good):
    m = Model.load(good, backend="reference", n_ctx=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits([1, 10**6])
    with pytest.raises(ValueError, match="temperature"):
        m.generate("a", temperature=-1)
    with pytest.raises(FastLLMError, match="unknown backend"):
        Model.load(good, backend="cuda")


def test_split_model_files(good, tmp_path):
    """A model split llama.cpp-style (*-0000K-of-0000N.gguf) loads from its first part, with the
    tensors of every part; a missing part is named."""
    from fastllm.gguf import open_gguf

    src = open_gguf(good)
    names = list(src.tensors)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    for i, part in enumerate(halves):
        w = gguf.GGUFWriter(str(tmp_path / f"m-{i + 1:05d}-of-00002.gguf"), "llama")
        if i == 0:
            for k, v in src.metadata.items():
                if k == "general.architecture":
                    continue
                vt, sub = src.value_types[k]
                w.add_key_value(k, v.tolist() if isinstance(v, np.ndarray) else v,
                                gguf.GGUFValueType(vt),
                                sub_type=None if sub is None else gguf.GGUFValueType(sub))
        for n in part:
            t = src.tensors[n]
            w.add_tensor(n, np.frombuffer(t.data, np.float32).reshape(t.shape))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    first = tmp_path / "m-00001-of-00002.gguf"
    split = Model.load(first, backend="reference", n_ctx=16)
    whole = Model.load(good, backend="reference", n_ctx=16)
    np.testing.assert_array_equal(split.logits([1, 5, 9]), whole.logits([1, 5, 9]))
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(GGUFError, match="missing part .*m-00002-of-00002.gguf"):
        Model.load(first, backend="reference")


def test_default_backend_on_a_cpu_only_machine(good, monkeypatch):
    """backend=None never picks a CPU WebGPU adapter (lavapipe): it falls back to the reference
    backend with exactly one warning that says why."""
    import warnings

    from fastllm.backends import webgpu

    monkeypatch.setattr(webgpu, "hardware_adapter_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = Model.load(good, n_ctx=8)
    assert m.backend.name == "reference"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "reference backend" in msgs[0] and "CPU adapter" in msgs[0]


def _copy_with(src, dst, keys=(), tensors=()) -> None:
    """Copy the tiny llama src to dst with metadata keys set ((key, value, GGUFValueType)) and
    tensors added ((name, array))."""
    from gguf import GGUFReader

    keys = {k: (v, t) for k, v, t in keys}
    r = GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in keys:
            continue
        w.add_key_value(k, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for k, (v, t) in keys.items():
        w.add_key_value(k, v, t)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    for name, data in tensors:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tensor_the_architecture_does_not_use(good, tmp_path):
    """A tensor llama's graph has no place for (here a gate on the attention output, which other
    architectures have): an UnsupportedError naming it and the architecture, not logits computed
    without it."""
    p = tmp_path / "extra.gguf"
    _copy_with(good, p, tensors=[("blk.1.attn_gate.weight", np.ones((64, 64), np.float32))])
    with pytest.raises(UnsupportedError, match=r"extra.gguf: 1 tensor\(s\) that fastllm's llama "
                                               r"does not use: blk.N.attn_gate.weight, e.g. "
                                               r"'blk.1.attn_gate.weight'"):
        Model.load(p, backend="reference")


def test_scale_tensor_of_more_than_one_value(good, tmp_path):
    p = tmp_path / "scale.gguf"
    _copy_with(good, p, tensors=[("blk.0.attn_q.scale", np.ones(2, np.float32))])
    with pytest.raises(GGUFError, match=r"scale.gguf: tensor 'blk.0.attn_q.scale' has shape "
                                        r"\(2,\), expected \(1,\)"):
        Model.load(p, backend="reference")


F32, STR, BOOL, U32 = (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING,
                       gguf.GGUFValueType.BOOL, gguf.GGUFValueType.UINT32)


@pytest.mark.parametrize("keys, match", [
    ([("llama.rope.scaling.type", "yarn", STR), ("llama.rope.scaling.factor", 4.0, F32)],
     r"llama.rope.scaling.type 'yarn' \(factor 4.0\) is not supported"),
    ([("llama.rope.scaling.type", "longrope", STR), ("llama.rope.scaling.factor", 2.0, F32)],
     r"llama.rope.scaling.type 'longrope'"),
    ([("llama.attention.causal", False, BOOL)], r"llama.attention.causal is false"),
    ([("llama.attention.value_length", 8, U32)], r"llama.attention.value_length differs"),
])
def test_keys_fastllm_does_not_implement(good, tmp_path, keys, match):
    """Keys llama.cpp reads and fastllm cannot honour: an UnsupportedError naming the key."""
    p = tmp_path / "keys.gguf"
    _copy_with(good, p, keys=keys)
    with pytest.raises(UnsupportedError, match=match) as e:
        Model.load(p, backend="reference")
    assert "keys.gguf" in str(e.value)


def test_rope_dimension_count_below_head_size_in_llama(good, tmp_path):
    """llama.cpp refuses a llama file whose rope.dimension_count is not the head size."""
    p = tmp_path / "rot.gguf"
    _copy_with(good, p, keys=[("llama.rope.dimension_count", 8, U32)])
    with pytest.raises(GGUFError, match=r"rot.gguf: llama.rope.dimension_count 8 differs from the "
                                        r"head size 16"):
        Model.load(p, backend="reference")


@pytest.mark.parametrize("model", ["none", "no_vocab", "t5"])
def test_tokenizer_fastllm_does_not_build(good, tmp_path, model):
    """A tokenizer model without a tokenizer in fastllm (llama.cpp's vocabulary type "none", or
    one it does not implement): the model runs on ids, text is a TokenizerError naming it."""
    p = tmp_path / "vocab.gguf"
    _copy_with(good, p, keys=[("tokenizer.ggml.model", model, STR)])
    m = Model.load(p, backend="reference")
    assert m.logits([1, 5, 6]).shape == (3, m.n_vocab)
    assert len(list(m.generate_tokens([1, 5], max_tokens=3, temperature=0))) == 3
    with pytest.raises(TokenizerError, match=rf"vocab.gguf: tokenizer.ggml.model '{model}' has "
                                             rf"no tokenizer in fastllm"):
        m.tokenize("hi")
    with pytest.raises(TokenizerError, match=f"'{model}'"):
        m.generate([1, 5], max_tokens=2, temperature=0)
