"""Every file of ../shared/archs as llama.cpp reads it.

The files are tiny random-weight models written by llama.cpp's own model saver, which sets every
metadata key to llama.cpp's default and writes every optional tensor llama.cpp's graph for the
architecture can use (biases, per-tensor `.scale` multipliers, `output.bias`, `rope_freqs`, ...)
with random values; `llamacpp_logits.json` holds llama.cpp's logits for 40 tokens and its greedy
continuation (archs/README.md). A key read differently or a tensor left out changes the logits
by far more than the bounds below (test_each_tensor_kind_matters shows it, kind by kind).

The bounds. llama.cpp (CPU, F32 weights) keeps its KV cache in f16 (its flash attention also
rounds Q and accumulates in f16) and the JSON holds its logits to 5 decimals; fastllm's
reference backend computes in float32. Largest difference: one f16 ulp (2^-11) of the largest
logit plus the printing's 1e-5; WebGPU (shader-f16: prefill attention holds Q, K and V tiles in
f16) and the Metal kernels (f16 KV cache) round three values where llama.cpp rounds two or
three, so three ulps. Over all 40 x 128 logits the RMS difference must stay within 1e-5 on
every backend: the printing alone is 1e-5 / sqrt(12) = 2.9e-6 RMS, llama.cpp's f16 rounding
about as much again. Measured (every file, every backend): max 1.3e-5 to 5.2e-5, RMS 3.3e-6 to
5.9e-6, for logits up to 0.74.

What these random models resolve: leaving out attn_v/attn_output/ffn_down biases and scales,
ffn_up.scale or output.bias moves the logits by 1e-3 to 0.6 (far past any bound); q/k biases and
scales and rope_freqs by 1.7e-5 to 7e-5 RMS on llama/qwen2/qwen3 (past the RMS bound); a few
(llama's ffn_gate/ffn_up biases, gemma3's q scale) by less than llama.cpp's own rounding, since
these weights leave attention nearly uniform and the gate small. That every tensor is used at
all is checked structurally at load (Architecture.check_tensors) and below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fastllm import Model
from fastllm.errors import TokenizerError, UnsupportedError
from fastllm.gguf import open_gguf
from fastllm.models import ARCHITECTURES
from fastllm.models.base import read_scalar
from fastllm.models.llama import ATTN, FFN

# the files of supported architectures that fastllm runs
DENSE = ["llama-dense", "qwen2-dense", "qwen3-dense", "gemma3-dense", "phi3-dense",
         "smollm3-dense", "granite-dense", "mistral3-dense"]
MOE = ["qwen3moe-moe", "qwen3moe-moe-e6k2", "llama-moe", "granite-moe", "mistral3-moe",
       "gpt-oss-moe", "gpt-oss-moe-e6k2"]
RUN = DENSE + MOE
# files checked against llama.cpp by a module of their own
ELSEWHERE = {"qwen35-dense": "test_qwen35.py", "qwen35moe-moe": "test_qwen35.py",
             "qwen35moe-moe-e6k2": "test_qwen35.py"}
F16_ULP = 2.0**-11
BACKENDS = ["reference", "webgpu", "metal-emu"]



def make_backend(kind: str):
    """A backend object (or name): "webgpu" skips without an adapter, "metal-emu" (the Metal
    backend with its kernels run by the MSL emulator) without clang-16 on Linux."""
    if kind == "webgpu":
        from fastllm.errors import BackendError

        try:
            from fastllm.backends.webgpu import WebGPUBackend

            return WebGPUBackend()
        except (ImportError, BackendError) as e:
            pytest.skip(f"no WebGPU adapter: {e}")
    if kind == "metal-emu":
        sys.path.insert(0, str(Path(__file__).resolve().parent / "metal"))
        from metal_env import make_runtime

        from fastllm.backends.metal import MetalBackend

        return MetalBackend(runtime=make_runtime("emu"), self_check=False)
    return kind


RMS_BOUND = 1e-5


def bound(backend: str, want: np.ndarray) -> float:
    """The largest |fastllm - llama.cpp| a logit may show (the module docstring says why)."""
    ulps = 1 if backend == "reference" else 3
    return ulps * F16_ULP * float(np.abs(want).max()) + 1e-5


def greedy_steps_to_compare(margins: list[float], tol: float) -> int:
    """How many of llama.cpp's greedy steps must agree: up to the first whose top-2 margin is
    within twice the logit bound (a tie there may fall either way, and every later step follows
    from it)."""
    for i, m in enumerate(margins):
        if m <= 2 * tol:
            return i
    return len(margins)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", RUN)
def test_logits_and_greedy_match_llamacpp(archs, archs_logits, name, backend):
    r = archs_logits[name + ".gguf"]
    want = np.asarray(r["logits"], np.float32)
    tol = bound(backend, want)
    m = Model.load(archs / f"{name}.gguf", backend=make_backend(backend))
    got = m.logits(r["tokens"])
    err = np.abs(got - want).max(axis=1)
    assert err.max() <= tol, f"worst position {err.argmax()}: {err.max():.3g} > {tol:.3g}"
    rms = float(np.sqrt(np.mean(np.square(got - want))))
    assert rms <= RMS_BOUND, f"RMS difference {rms:.3g}"
    n = greedy_steps_to_compare(r["greedy_margins"], tol)
    assert n >= 4, "llama.cpp's margins leave too few steps to compare"
    greedy = list(m.generate_tokens(r["tokens"], temperature=0, max_tokens=n))
    assert greedy == r["greedy"][:n]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", RUN)
def test_two_chunks_give_the_same_logits(archs, archs_logits, name, backend):
    """The 40 tokens in runs of 24 and 16 (gemma3: the second run crosses its 32-position window
    over a ring cache of window + batch rows) give the logits of one run of 40."""
    ids = archs_logits[name + ".gguf"]["tokens"]
    whole = Model.load(archs / f"{name}.gguf", backend=make_backend(backend)).logits(ids)
    m = Model.load(archs / f"{name}.gguf", backend=make_backend(backend), n_batch=24)
    chunked = m.logits(ids)
    if name.startswith("gemma3"):
        assert min(m.kv_spec.sizes) == 32 + 24 < m.n_ctx
    # the same arithmetic over other row counts: float32 reassociation in numpy's products on
    # the reference (measured 4.2e-7); the GPU kernels' tiles round the same values alike
    # (measured 0 to 1.3e-7)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2e-6)


def scales_of(m: Model, kinds) -> dict[str, float]:
    return {f"blk.{i}.{k}.scale": read_scalar(m.file, f"blk.{i}.{k}.scale")
            for i in range(m.config.n_layer) for k in kinds}


def rerun(m: Model, ids) -> np.ndarray:
    m._programs.clear()  # record the graph again with the changed tensors
    return m.logits(ids)


def test_a_tensor_the_graph_forgets_fails_the_load(archs, monkeypatch):
    """The tensor lists cannot drift from the forward pass: an architecture whose graph stops
    reading tensors it lists (here llama's FFN biases and scales) fails at load naming them."""
    from fastllm.models.llama import Llama

    monkeypatch.setattr(Llama, "ffn_block", lambda self, g, x, i: g.matmul(
        g.swiglu(g.matmul(x, self.w[f"blk.{i}.ffn_gate.weight"]),
                 g.matmul(x, self.w[f"blk.{i}.ffn_up.weight"])),
        self.w[f"blk.{i}.ffn_down.weight"]))
    with pytest.raises(UnsupportedError, match=r"does not use: blk\.N\.ffn_down\.bias, "
                                               r"blk\.N\.ffn_down\.scale"):
        Model.load(archs / "llama-dense.gguf", backend="reference")


@pytest.mark.parametrize("name", ["qwen2-dense", "gemma3-dense"])
def test_ffn_scales_llamacpp_leaves_out(archs, archs_logits, name):
    """qwen2's and gemma3's graphs in llama.cpp pass no FFN scales to build_ffn although its
    loader reads them: applying them moves the logits far from llama.cpp's, so leaving them out
    (the architectures' ignored lists) is what llama.cpp does."""
    r = archs_logits[name + ".gguf"]
    want = np.asarray(r["logits"], np.float32)
    m = Model.load(archs / f"{name}.gguf", backend="reference")
    assert np.abs(m.logits(r["tokens"]) - want).max() <= bound("reference", want)
    m.net.SCALED = ATTN + FFN
    m.config.scalars.update(scales_of(m, FFN))
    assert np.abs(rerun(m, r["tokens"]) - want).max() > 0.01


def test_every_file_is_accounted_for(archs):
    """Each file in archs/ is one this module checks: a supported architecture's file is run
    (here or in the module ELSEWHERE names), any other architecture's fails naming the
    architecture."""
    for p in sorted(archs.glob("*.gguf")):
        arch = open_gguf(p).architecture
        if arch in ARCHITECTURES:
            assert p.stem in RUN or p.stem in ELSEWHERE, f"{p.name}: add it to RUN or ELSEWHERE"
        else:
            with pytest.raises(UnsupportedError, match=f"unsupported architecture '{arch}'"):
                Model.load(p, backend="reference")


def test_placeholder_vocabulary_runs_on_ids(archs, archs_logits):
    """tokenizer.ggml.model "test" (llama.cpp's saver): ids work, text is a clear error."""
    r = archs_logits["llama-dense.gguf"]
    m = Model.load(archs / "llama-dense.gguf", backend="reference")
    assert m.n_vocab == r["n_vocab"] == 128
    for call in (lambda: m.tokenize("hello"), lambda: m.detokenize([1, 2]),
                 lambda: m.generate("hello", max_tokens=1),
                 lambda: m.generate(r["tokens"], max_tokens=2, temperature=0)):
        with pytest.raises(TokenizerError, match="tokenizer.ggml.model 'test'") as e:
            call()
        assert "llama-dense.gguf" in str(e.value)


def copy_with_keys(src: Path, dst: Path, keys: dict) -> Path:
    """src with metadata keys set: {key: (value, GGUFValueType)}."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for k, f in r.fields.items():
        v = f.contents()
        # the gguf writer cannot write empty arrays (the saver's empty merges and labels)
        if k.startswith("GGUF.") or k == "general.architecture" or k in keys or v == []:
            continue
        w.add_key_value(k, v, f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for k, (v, t) in keys.items():
        w.add_key_value(k, v, t)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_shape=tuple(reversed(t.shape.tolist())))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_gemma3_window_layers_by_pattern():
    """llama.cpp's load_swa_pattern: per-layer flags, or a period n (layer il slides when
    il % n < n - 1; 0: every layer; 1: none); 6 when the key is absent."""
    from fastllm.errors import GGUFError
    from fastllm.models.gemma3 import swa_layers

    key = "gemma3.attention.sliding_window_pattern"
    assert swa_layers({}, "gemma3", 8, "") == (True,) * 5 + (False, True, True)
    assert swa_layers({key: 2}, "gemma3", 4, "") == (True, False, True, False)
    assert swa_layers({key: 0}, "gemma3", 3, "") == (True,) * 3
    assert swa_layers({key: 1}, "gemma3", 3, "") == (False,) * 3
    assert swa_layers({key: np.array([1, 0])}, "gemma3", 2, "") == (True, False)
    with pytest.raises(GGUFError, match=f"g.gguf: {key} has 1 values for 2 layers"):
        swa_layers({key: np.array([1])}, "gemma3", 2, "g.gguf")


def test_gemma3_rope_scaling_only_on_global_layers(archs, archs_logits, tmp_path):
    """A linear rope factor changes the logits when a layer is global and not at all when every
    layer slides (llama.cpp scales only the global layers' frequencies)."""
    import gguf

    ids = archs_logits["gemma3-dense.gguf"]["tokens"]
    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    factor = {"gemma3.rope.scaling.factor": (4.0, f32)}
    out = {}
    for pattern in (0, 1):
        pat = {"gemma3.attention.sliding_window_pattern": (pattern, u32)}
        for scaled in (False, True):
            p = copy_with_keys(archs / "gemma3-dense.gguf", tmp_path / f"g{pattern}{scaled}.gguf",
                               pat | (factor if scaled else {}))
            out[pattern, scaled] = Model.load(p, backend="reference").logits(ids)
    np.testing.assert_array_equal(out[0, True], out[0, False])
    # rope moves these logits little (near-uniform attention: 2e-5), but the same program on
    # the same data is exact, so any difference is the factor at work
    assert np.abs(out[1, True] - out[1, False]).max() > 5e-6


@pytest.mark.parametrize("backend", ["reference", "webgpu"])
def test_gemma3_final_logit_softcapping(archs, archs_logits, tmp_path, backend):
    """final_logit_softcapping c: logits c * tanh(logits / c), as llama.cpp's gemma3 graph."""
    import gguf

    ids = archs_logits["gemma3-dense.gguf"]["tokens"][:12]
    plain = Model.load(archs / "gemma3-dense.gguf", backend=make_backend(backend)).logits(ids)
    p = copy_with_keys(archs / "gemma3-dense.gguf", tmp_path / "cap.gguf",
                       {"gemma3.final_logit_softcapping": (0.3, gguf.GGUFValueType.FLOAT32)})
    capped = Model.load(p, backend=make_backend(backend)).logits(ids)
    np.testing.assert_allclose(capped, 0.3 * np.tanh(plain / 0.3), rtol=0, atol=2e-6)
    assert np.abs(capped - plain).max() > 0.05  # the cap bites on these logits (up to 0.7)


def test_moe_scales_and_routing_matter(archs, archs_logits, monkeypatch):
    """The e6k2 file (6 experts, 2 chosen per row): leaving out any per-expert `.scale`
    (llama.cpp multiplies each chosen expert's product by its own), the normalization of the
    chosen weights (qwen3moe's graph asks for it), or choosing one expert instead of two moves
    the logits away from llama.cpp's by more than the bounds."""
    from fastllm.models import moe
    from fastllm.models.moe import Routing

    r = archs_logits["qwen3moe-moe-e6k2.gguf"]
    want = np.asarray(r["logits"], np.float32)
    m = Model.load(archs / "qwen3moe-moe-e6k2.gguf", backend="reference")

    def off() -> float:  # how far past the RMS bound the changed model lands
        got = rerun(m, r["tokens"])
        return float(np.sqrt(np.mean(np.square(got - want)))) / RMS_BOUND

    assert off() <= 1.0
    plain = moe.expert_product
    for kind in ("up", "gate", "down"):
        def unscaled(net, g, x, name, ids, kind=kind):
            if name.endswith(f"ffn_{kind}_exps"):
                return g.matmul_id(x, net.w[name + ".weight"], ids)
            return plain(net, g, x, name, ids)

        monkeypatch.setattr(moe, "expert_product", unscaled)
        assert off() > 10, kind
    monkeypatch.setattr(moe, "expert_product", plain)
    monkeypatch.setattr(m.net, "ROUTING", Routing(gating="softmax", norm=False))
    assert off() > 1.0
    monkeypatch.setattr(m.net, "ROUTING", Routing(gating="softmax", norm=True))
    m.config.n_expert_used = 1
    assert off() > 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_moe_rows_step_equals_one_at_a_time(archs, archs_logits, backend):
    """Batched decoding (one row per sequence, each row choosing its own experts) of the e6k2
    file: a step of two sequences gives each the logits of decoding it alone."""
    ids = archs_logits["qwen3moe-moe-e6k2.gguf"]["tokens"]
    path = archs / "qwen3moe-moe-e6k2.gguf"
    many = Model.load(path, backend=make_backend(backend), n_seq=2, n_ctx=64)
    alone = Model.load(path, backend="reference", n_ctx=64)
    prompts = [ids[:7], ids[10:14]]
    for s, p in enumerate(prompts):
        many.prefill(p, slot=s)
    for step in range(3):
        toks = [ids[20 + step], ids[30 + step]]
        order = [0, 1] if step != 1 else [1, 0]
        got = many.decode_rows([toks[s] for s in order], order)
        for row, s in enumerate(order):
            prompts[s] = prompts[s] + [toks[s]]
            want = alone.logits(prompts[s])[-1]
            assert np.isfinite(got[row]).all()
            # the reference against itself: the same products over other row counts (float32
            # reassociation); a GPU backend rounds as in test_logits_and_greedy_match_llamacpp
            tol = 2e-6 if backend == "reference" else 3 * F16_ULP * float(np.abs(want).max())
            np.testing.assert_allclose(got[row], want, rtol=0, atol=tol)


def test_granite_moe_scales_llamacpp_leaves_out(archs, archs_logits):
    """granite-moe: llama.cpp's granite graph applies neither the experts' per-expert `.scale`
    nor the shared expert's `.scale` (its loader reads both), and adds the shared expert to the
    experts' sum: applying the scales, or leaving the shared expert out, moves the logits far
    from llama.cpp's."""
    r = archs_logits["granite-moe.gguf"]
    want = np.asarray(r["logits"], np.float32)
    m = Model.load(archs / "granite-moe.gguf", backend="reference")
    assert np.abs(m.logits(r["tokens"]) - want).max() <= bound("reference", want)
    m.net.EXPERT_SCALED = True
    assert np.abs(rerun(m, r["tokens"]) - want).max() > 0.01
    m.net.EXPERT_SCALED = False
    m.net.SCALED = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")
    m.config.scalars.update(scales_of(m, m.net.SCALED))
    assert np.abs(rerun(m, r["tokens"]) - want).max() > 0.01
    m.net.SCALED = ATTN  # granite's own
    assert np.abs(rerun(m, r["tokens"]) - want).max() <= bound("reference", want)
    m.config.n_ff_shexp = 0
    assert np.abs(rerun(m, r["tokens"]) - want).max() > 0.01


def test_expert_count_of_a_dense_architecture_changes_nothing(archs, archs_logits, tmp_path):
    """qwen3's graph in llama.cpp has no MoE layers: an expert_count in a qwen3 file is read
    (and checked) but the layers stay dense, with the same logits."""
    import gguf

    ids = archs_logits["qwen3-dense.gguf"]["tokens"][:8]
    u32 = gguf.GGUFValueType.UINT32
    p = copy_with_keys(archs / "qwen3-dense.gguf", tmp_path / "q.gguf",
                       {"qwen3.expert_count": (4, u32), "qwen3.expert_used_count": (2, u32)})
    m = Model.load(p, backend="reference")
    assert m.config.n_expert == 4 and not m.net.moe(m.config)
    np.testing.assert_array_equal(
        m.logits(ids), Model.load(archs / "qwen3-dense.gguf", backend="reference").logits(ids))
