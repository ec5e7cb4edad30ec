"""`fastllm serve` through OpenAI's own Python client: every parameter the server takes,
streamed and not, and the errors a client sees. The server runs stories260K on the reference
backend with 4 slots; the expected outputs are llama.cpp's greedy text (../shared/reference),
NumPy float64 log-probabilities of the model's logits, and the library's own Engine and
Model.chat (checked against llama.cpp elsewhere) for the sampled requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_helpers import Gate, metrics, serving

openai = pytest.importorskip("openai")

from fastllm import Engine, Model

SLOTS, CTX = 4, 512
CHAT = [{"role": "system", "content": "You tell short stories."},
        {"role": "user", "content": "Tell me about a cat."}]


@pytest.fixture(scope="module")
def ref(data_dir) -> dict:
    return json.loads((data_dir / "reference" / "stories260K.json").read_text())


@pytest.fixture(scope="module")
def served(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=SLOTS, n_ctx=CTX)
    gate = Gate(m)
    with Engine(m) as eng, serving(eng) as base:
        yield base, gate


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def lib(stories260k):
    """The library's engine on a model of its own: what a request gives without the server."""
    with Engine(Model.load(stories260k, backend="reference", n_seq=1, n_ctx=CTX)) as eng:
        yield eng


def lib_text(lib, prompt, **kw) -> str:
    return lib.submit(prompt, **kw).text()


def test_models(client):
    listed = client.models.list().data
    assert [m.id for m in listed] == ["stories260K"]
    assert client.models.retrieve("stories260K").id == "stories260K"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_greedy_completion_is_llamacpps(client, ref):
    """From BOS alone (an empty prompt, or the token id), 199 greedy tokens: llama.cpp's text."""
    want = ref["llamacpp_0.3.36_greedy_text"]
    for prompt in ("", [1]):
        r = client.completions.create(model="stories260K", prompt=prompt, max_tokens=199,
                                      temperature=0)
        assert r.choices[0].text == want
        assert r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (1, 199)
        assert r.usage.total_tokens == 200
    # the model may be named, left out or empty
    r = client.completions.create(model="", prompt="", max_tokens=20, temperature=0)
    assert want.startswith(r.choices[0].text)


def test_streamed_completion_equals_whole(client, ref):
    want = ref["llamacpp_0.3.36_greedy_text"]
    stream = client.completions.create(model="stories260K", prompt="", max_tokens=199,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 199
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_logprobs_are_numpys(client, stories260k, ref):
    """Each token's log-probability and top alternatives against float64 log-softmax of the
    reference backend's logits at that position."""
    r = client.completions.create(model="stories260K", prompt="", max_tokens=12, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    m = Model.load(stories260k, backend="reference", n_ctx=CTX)
    ids = [1] + ref["llamacpp_0.3.36_greedy_ids"][:12]
    logits = m.logits(ids).astype(np.float64)  # [13, vocab]
    for i in range(12):
        row = logits[i] - logits[i].max()
        ls = row - np.log(np.exp(row).sum())
        assert lp.token_logprobs[i] == pytest.approx(ls[ids[i + 1]], abs=1e-4)
        top = np.argsort(-ls)[:3]
        want = {m.detokenize([int(t)]): ls[t] for t in top}
        assert set(lp.top_logprobs[i]) == set(want)
        for tok, v in lp.top_logprobs[i].items():
            assert v == pytest.approx(want[tok], abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_chat_equals_library(client, stories260k):
    """A chat reply, streamed and not, is Model.chat's greedy reply; usage counts the
    template's prompt."""
    m = Model.load(stories260k, backend="reference", n_ctx=CTX)
    want = m.chat(CHAT, max_tokens=40, temperature=0)
    r = client.chat.completions.create(model="stories260K", messages=CHAT, max_tokens=40,
                                       temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(m.chat_prompt(CHAT))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    chunks = list(client.chat.completions.create(model="stories260K", messages=CHAT,
                                                 max_tokens=40, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert {c.id for c in chunks} == {chunks[0].id}


def test_max_tokens_and_max_completion_tokens(client):
    for kw in ({"max_tokens": 7}, {"max_completion_tokens": 7}):
        r = client.chat.completions.create(model="stories260K", messages=CHAT, temperature=0,
                                           **kw)
        assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="stories260K", messages=CHAT, max_tokens=10,
                                       temperature=0, logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == 10
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 4
        assert t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs))  # greedy
        assert bytes(t.bytes).decode() == t.token
    # streamed: the same tokens, spread over the chunks
    chunks = list(client.chat.completions.create(model="stories260K", messages=CHAT,
                                                 max_tokens=10, temperature=0, logprobs=True,
                                                 top_logprobs=4, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_stop_strings(client):
    full = client.completions.create(model="stories260K", prompt="Once upon a time",
                                     max_tokens=40, temperature=0).choices[0].text
    cut = full.index(" ", 12)
    stop = full[cut:cut + 4]
    for stream in (False, True):
        r = client.completions.create(model="stories260K", prompt="Once upon a time",
                                      max_tokens=40, temperature=0, stop=[stop, "zzzz"],
                                      stream=stream)
        if stream:
            chunks = list(r)
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == full[:full.index(stop)]
        assert reason == "stop"


def test_seed_and_n(client, lib):
    """n choices of a seeded request are the requests with seeds seed, seed+1, ... alone."""
    kw = {"prompt": "The dog", "max_tokens": 24, "temperature": 1.0, "seed": 1234}
    r = client.completions.create(model="stories260K", n=3, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert len(set(texts)) == 3  # three seeds, three stories (24 tokens at temperature 1)
    alone = [lib.submit("The dog", max_tokens=24, temperature=1.0, seed=1234 + j)
             for j in range(3)]
    assert texts == [a.text() for a in alone]
    assert r.usage.completion_tokens == sum(len(a.token_ids) for a in alone)
    again = client.completions.create(model="stories260K", n=1, **kw)
    assert again.choices[0].text == texts[0]
    assert r.usage.prompt_tokens == again.usage.prompt_tokens  # a prompt counts once
    # streamed, the choices interleave; each index's text is the same
    chunks = list(client.completions.create(model="stories260K", n=3, stream=True, **kw))
    by = {i: "".join(c.choices[0].text for c in chunks if c.choices[0].index == i)
          for i in range(3)}
    assert [by[i] for i in range(3)] == texts
    chat = client.chat.completions.create(model="stories260K", messages=CHAT, n=2,
                                          max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == chat.choices[1].message.content


@pytest.mark.parametrize("extra", [
    {"presence_penalty": 1.5},
    {"frequency_penalty": 1.2},
    {"top_p": 0.5},
    {"extra_body": {"top_k": 3}},
    {"extra_body": {"min_p": 0.3}},
    {"extra_body": {"repeat_penalty": 1.5, "repeat_last_n": 16}},
])
def test_sampling_arguments_reach_the_engine(client, lib, extra):
    """Each sampling argument gives the library engine's text for the same seed (and the
    arguments change the text: the check could fail)."""
    body = dict(extra.get("extra_body", {}))
    body.update({k: v for k, v in extra.items() if k != "extra_body"})
    r = client.completions.create(model="stories260K", prompt="Lily", max_tokens=30,
                                  temperature=0.9, seed=7, **extra)
    want = lib_text(lib, "Lily", max_tokens=30, temperature=0.9, seed=7, **body)
    assert r.choices[0].text == want
    plain = lib_text(lib, "Lily", max_tokens=30, temperature=0.9, seed=7)
    assert want != plain


def test_logit_bias(client, stories260k, ref):
    m = Model.load(stories260k, backend="reference", n_ctx=CTX)
    first = ref["llamacpp_0.3.36_greedy_ids"][0]  # greedy's first token after BOS
    banned = client.completions.create(model="stories260K", prompt="", max_tokens=5,
                                       temperature=0, logprobs=0,
                                       logit_bias={str(first): -100}).choices[0]
    assert banned.logprobs.tokens[0] != m.detokenize([first])
    assert not banned.text.startswith(m.detokenize([first]))
    forced = client.completions.create(model="stories260K", prompt="", max_tokens=6,
                                       temperature=0, logit_bias={"300": 100})
    assert forced.choices[0].text == m.detokenize([300] * 6)


def test_multi_turn_reuses_the_cache(client):
    """Turn 2 (turn 1's prompt, its reply and a new message) finds turn 1 in a slot's cache."""
    convo = [{"role": "user", "content": "Tell me about a frog."}]
    r1 = client.chat.completions.create(model="stories260K", messages=convo, max_tokens=16,
                                        temperature=0)
    convo += [{"role": "assistant", "content": r1.choices[0].message.content},
              {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model="stories260K", messages=convo, max_tokens=16,
                                        temperature=0)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens
    assert r2.usage.prompt_tokens > r2.usage.prompt_tokens_details.cached_tokens


def test_completion_forms(client):
    """A batch of prompts gives one choice per prompt, in order; echo puts the prompt first;
    text parts and the developer role are accepted in chat."""
    one = [client.completions.create(model="stories260K", prompt=p, max_tokens=8,
                                     temperature=0).choices[0].text for p in ("A cat", "A dog")]
    both = client.completions.create(model="stories260K", prompt=["A cat", "A dog"],
                                     max_tokens=8, temperature=0)
    assert [c.text for c in both.choices] == one
    echo = client.completions.create(model="stories260K", prompt="A cat", max_tokens=8,
                                     temperature=0, echo=True)
    assert echo.choices[0].text == "A cat" + one[0]
    parts = [{"role": "developer", "content": "You tell short stories."},
             {"role": "user", "content": [{"type": "text", "text": "Tell me about a cat."}]}]
    a = client.chat.completions.create(model="stories260K", messages=parts, max_tokens=8,
                                       temperature=0)
    b = client.chat.completions.create(model="stories260K", messages=CHAT, max_tokens=8,
                                       temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize("kw, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 2}, "top_p"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 10**9}, "max_tokens"),
    ({"seed": "x"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"extra_body": {"top_k": -1}}, "top_k"),
    ({"extra_body": {"min_p": 1.5}}, "min_p"),
    ({"extra_body": {"repeat_penalty": 0}}, "repeat_penalty"),
    ({"extra_body": {"temperature": "hot"}}, "temperature"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"tools": [{"type": "function", "function": {"name": "not a name"}}]}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nosuchtype"}}}}, "response_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
])
def test_bad_parameters_are_400(client, kw, param):
    args = {"model": "stories260K", "messages": CHAT, "max_tokens": 4, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400
    assert e.value.param == param, e.value.body
    assert e.value.type == "invalid_request_error"
    assert e.value.message


def test_context_overflow_and_unknown_model(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories260K", prompt=[1] + [300] * CTX, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="stories260K", prompt="Hi", max_tokens=CTX)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    # without max_tokens, a chat reply may run to the full context
    r = client.chat.completions.create(model="stories260K", messages=CHAT, temperature=0,
                                       logit_bias={"2": -100})  # no end of generation
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == CTX
    for call in (lambda: client.completions.create(model="llama-3", prompt="x", max_tokens=1),
                 lambda: client.chat.completions.create(model="llama-3", messages=CHAT)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.code == "model_not_found" and e.value.param == "model"


def test_metrics_count_what_was_served(served, client):
    base, _ = served
    before = metrics(base)
    r = client.completions.create(model="stories260K", prompt="A cat", max_tokens=9,
                                  temperature=0)
    after = metrics(base)
    assert after["fastllm_generated_tokens_total"] - before["fastllm_generated_tokens_total"] \
        == r.usage.completion_tokens == 9
    assert after["fastllm_prompt_tokens_total"] - before["fastllm_prompt_tokens_total"] \
        == r.usage.prompt_tokens
    key = 'fastllm_requests_total{endpoint="text",outcome="length"}'
    assert after[key] - before.get(key, 0) == 1
    assert after["fastllm_slots_total"] == SLOTS
    assert after["fastllm_tokens_per_second"] > 0
