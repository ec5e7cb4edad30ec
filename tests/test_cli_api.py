"""The Python API as a new user meets it: max_tokens=0, why a generation stopped, bad sampling
arguments, the load progress bar, and Model.logits on a vocabulary whose logits outgrow one
storage binding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fastllm import ArgumentError, Model
from tinymodels import write_tiny_model

# greedy on the device loop, the sampled chain on the device loop, the host's token-by-token loop
# (a repetition penalty at temperature 0 is neither of the device loops)
MODES = {"greedy": {"temperature": 0},
         "sampled": {"temperature": 0.8, "seed": 3},
         "host": {"temperature": 0, "repeat_penalty": 1.1}}


@pytest.fixture(scope="module")
def ref(data_dir) -> dict:
    return json.loads((data_dir / "reference" / "stories260K.json").read_text())


@pytest.fixture(scope="module")
def stories(stories260k):
    with Model.load(stories260k, backend="reference") as m:
        yield m


def test_max_tokens_zero_generates_nothing(stories):
    bos = [stories.tokenizer.bos_id]
    assert stories.generate(bos, max_tokens=0) == ""
    gen = stories.generate_tokens(bos, max_tokens=0)
    assert list(gen) == [] and gen.finish_reason == "length" and gen.n_tokens == 0
    text = stories.generate("Once", max_tokens=0, stream=True)
    assert list(text) == [] and text.finish_reason == "length"
    # the prompt was still evaluated (a cached prefix for the next call)
    assert stories.cached_tokens() == stories.prompt_ids("Once")


@pytest.mark.parametrize("mode", MODES)
def test_finish_reasons(stories, mode):
    kw = MODES[mode]
    bos = [stories.tokenizer.bos_id]
    gen = stories.generate_tokens(bos, max_tokens=7, **kw)
    assert gen.finish_reason is None
    ids = list(gen)
    assert len(ids) == gen.n_tokens == 7 and gen.finish_reason == "length"
    assert gen.n_prompt == 1

    # cancelled: closed before its end
    gen = stories.generate_tokens(bos, max_tokens=50, **kw)
    next(gen)
    gen.close()
    assert gen.finish_reason == "cancelled" and gen.n_tokens == 1

    # stop: the first token is an end-of-generation token
    first = ids[0]
    eog = stories.tokenizer.eog_ids
    try:
        stories.tokenizer.eog_ids = frozenset(eog | {first})
        gen = stories.generate_tokens(bos, max_tokens=50, **{**kw, "seed": kw.get("seed")})
        assert list(gen) == [] and gen.finish_reason == "stop" and gen.n_tokens == 0
        text = stories.generate(bos, max_tokens=50, stream=True, **kw)
        assert "".join(text) == "" and text.finish_reason == "stop" and text.stop_string is None
    finally:
        stories.tokenizer.eog_ids = eog


@pytest.mark.parametrize("mode", MODES)
def test_context_full_counts_every_token(stories260k, mode):
    with Model.load(stories260k, backend="reference", n_ctx=24) as m:
        gen = m.generate_tokens([m.tokenizer.bos_id], max_tokens=None, **MODES[mode])
        ids = list(gen)
        assert gen.finish_reason == "context"
        assert len(ids) == gen.n_tokens == 23  # BOS + 23 fill the 24 positions


def test_stop_string(stories, ref):
    text = stories.generate([stories.tokenizer.bos_id], max_tokens=64, temperature=0,
                            stop=["zebra", "Lily"], stream=True)
    got = "".join(text)
    assert text.finish_reason == "stop" and text.stop_string == "Lily"
    assert got.lstrip() == ref["llamacpp_0.3.36_greedy_text"].split("Lily")[0].lstrip()
    # the tokens counted are the ones generated, up to the one that completed the stop string
    ids = ref["llamacpp_0.3.36_greedy_ids"]
    assert text.n_tokens == min(k for k in range(1, 64) if "Lily" in stories.detokenize(ids[:k]))


@pytest.mark.parametrize("kw, name", [
    ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"min_p": 5}, "min_p"), ({"min_p": -1}, "min_p"),
    ({"top_k": -1}, "top_k"), ({"top_k": 2.0}, "top_k"), ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"seed": -1}, "seed"), ({"seed": "1"}, "seed"), ({"stop": 5}, "stop"),
])
def test_bad_sampling_argument(stories, kw, name):
    """Each bad argument is an ArgumentError (a FastLLMError and a ValueError) naming it, raised
    when the call is made, before the prompt is evaluated."""
    stories.reset()
    with pytest.raises(ArgumentError, match=rf"^{name}="):
        stories.generate("Once", **kw)
    with pytest.raises(ValueError):
        stories.generate_tokens("Once", **kw) if name != "stop" else stories.generate(
            "Once", stream=True, **kw)
    assert stories.cached_tokens() == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_load_progress_bar(stories260k, monkeypatch):
    """A bar over the weights' bytes on a terminal once loading takes over progress.DELAY_S
    (0 here, so that any load shows it); none with quiet=True or when stderr is not a terminal."""
    from fastllm import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    for stream, quiet, shown in ((_Terminal(), False, True), (_Terminal(), True, False),
                                 (io.StringIO(), False, False)):
        monkeypatch.setattr("sys.stderr", stream)
        Model.load(stories260k, backend="reference", quiet=quiet).close()
        out = stream.getvalue()
        assert ("stories260K.gguf: " in out and "B/s" in out) == shown, (quiet, out)
        if not shown:
            assert out == ""


@pytest.fixture(scope="module")
def webgpu_ok():
    from fastllm.errors import BackendError

    try:
        from fastllm.backends.webgpu import WebGPUBackend

        WebGPUBackend().close()
    except (ImportError, BackendError) as e:
        pytest.skip(f"no WebGPU adapter: {e}")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logits_split_to_fit_the_binding(webgpu_ok, arch, tmp_path):
    """Model.logits asks no binding for more than the device allows: with a binding of 80 KiB
    the 100 rows of logits (1,132 bytes each for the tiny vocabulary of 283) run as several
    batches, as Gemma 3's 262,144-value rows must on lavapipe's 128 MiB, and equal the
    reference backend's logits."""
    from fastllm.backends.webgpu import WebGPUBackend

    p = write_tiny_model(tmp_path / f"{arch}.gguf", arch)
    ids = list(np.random.default_rng(0).integers(3, 283, 100))
    with Model.load(p, backend="reference", n_ctx=128) as m:
        want = m.logits(ids)
    with Model.load(p, backend=WebGPUBackend(max_binding=80 * 1024), n_ctx=128) as m:
        assert m._run_rows(True) < len(ids) <= m.n_batch
        got = m.logits(ids)
        last = m.prefill(ids)  # one logits row: n_batch rows a run
    # the tiled prefill kernels hold tiles in f16 (observed ~1e-2 with logits of magnitude ~70)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() / 10
    assert np.abs(last - want[-1]).max() < 0.05 * np.abs(want).max() / 10


def test_dir_lists_the_lazy_names():
    import fastllm

    assert {"Model", "Tokenizer", "ArgumentError"} <= set(dir(fastllm))
    assert Path(fastllm.__file__).name == "__init__.py"
