"""Tool calls (fastllm.tools): the format each real chat template of ../shared/templates asks
for, its calls rendered by the template itself and parsed back token by token, forced calls
(tool_choice "required" or a named function) from stories260K under each format's grammar
whose arguments validate against the function's schema (the jsonschema package), and tool
results going back in."""

from __future__ import annotations

import json

import jsonschema
import pytest

from fastllm.chat import ChatTemplate
from fastllm.errors import ArgumentError
from fastllm.tools import ToolParser, check_tools, parse_calls, tool_format

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": -100, "maximum": 100},
        "b": {"type": "integer", "minimum": -100, "maximum": 100}}, "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# each template's format, as ../shared/templates/README.md names it; SmolLM3's file there has no
# tools at all, Gemma 4's and gpt-oss's own formats are not parsed (fastllm's generic prompt)
FORMATS = {
    "Qwen-Qwen2.5-7B-Instruct": "hermes", "Qwen-Qwen3-0.6B": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "ibm-granite-granite-4.0": "hermes", "Qwen3.5-4B": "qwen_xml",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3", "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "microsoft-Phi-3.5-mini-instruct": "generic", "HuggingFaceTB-SmolLM3-3B": "generic",
}
# a vocabulary that tokenizes each template's text (the markers as plain text where the
# vocabulary has no such token; Llama 3's has <|python_tag|>)
VOCAB = {"llama3": "llama-bpe", "hermes": "qwen2", "qwen_xml": "qwen2", "mistral": "llama-spm"}
EOS = {"llama3": "<|eot_id|>", "hermes": "<|im_end|>", "qwen_xml": "<|im_end|>",
       "mistral": "</s>"}


def _template(data_dir, name: str) -> str:
    return (data_dir / "templates" / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_from_template(data_dir, name):
    assert tool_format(_template(data_dir, name)) == FORMATS[name]


def _calls(fmt: str, two: bool) -> list[dict]:
    ids = ["a1B2c3D4e", "f5G6h7I8j"] if fmt == "mistral" else ["call_1", "call_2"]
    calls = [{"id": ids[0], "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Zürich <Nord>", "days": 3}}}]
    if two:
        calls.append({"id": ids[1], "type": "function", "function": {
            "name": "add", "arguments": {"a": -4, "b": 17}}})
    return calls


@pytest.mark.parametrize("name", [n for n, f in sorted(FORMATS.items()) if f != "generic"])
def test_calls_the_template_writes_parse_back(data_dir, name):
    """The template renders an assistant message with tool calls (its own format); that text,
    tokenized and fed to ToolParser one token at a time, gives the calls back: names, and
    arguments equal as JSON."""
    from fastllm.tokenizer import Tokenizer

    fmt = FORMATS[name]
    two = fmt != "llama3"  # Llama 3.x templates take one call at a time
    t = ChatTemplate(_template(data_dir, name), "<s>", EOS[fmt])
    user = [{"role": "user", "content": "Weather in Zürich, and 4 + 13?"}]
    calls = _calls(fmt, two)
    tools = check_tools(TOOLS)[0]
    head = t.render(user, add_generation_prompt=True, tools=tools)
    full = t.render(user + [{"role": "assistant", "content": "", "tool_calls": calls}],
                    add_generation_prompt=False, tools=tools)
    common = 0
    while common < min(len(head), len(full)) and head[common] == full[common]:
        common += 1
    reply = full[common:].rstrip()
    reply = reply.removesuffix(EOS[fmt])
    assert "get_weather" in reply, reply
    tok = Tokenizer.load(data_dir / "vocab" / f"ggml-vocab-{VOCAB[fmt]}.gguf")
    ids = tok.encode(reply, add_bos=False, special=True)
    p = ToolParser(tok, fmt, TOOLS)
    events = []
    for i in ids:
        events += p.feed([i])
    events += p.finish()
    got = [e[2] for e in events if e[0] == "tool_call"]
    assert [e[1] for e in events if e[0] == "tool_call"] == list(range(len(calls)))
    assert [c["function"]["name"] for c in got] == [c["function"]["name"] for c in calls]
    assert [json.loads(c["function"]["arguments"]) for c in got] == \
        [c["function"]["arguments"] for c in calls]
    assert all(c["type"] == "function" and c["id"] for c in got)
    assert "get_weather" not in p.content and "<tool_call>" not in p.content
    # the same text parsed whole
    _, whole = parse_calls(tok.decode(ids) if fmt != "llama3" else reply, fmt, TOOLS)
    assert [json.loads(c["function"]["arguments"]) for c in whole] == \
        [c["function"]["arguments"] for c in calls]


def test_content_before_a_call_streams_first():
    """Hermes: the text before <tool_call> comes out as content as it arrives (held back only
    while it could be the start of the marker); text without a call is all content."""
    from fastllm.tools import _held

    assert _held("Let me check <tool_", ("<tool_call>",)) == len("<tool_")
    content, calls = parse_calls('Sure.\n<tool_call>\n{"name": "add", "arguments": '
                                 '{"a": 1, "b": 2}}\n</tool_call>', "hermes", TOOLS)
    assert content == "Sure." and json.loads(calls[0]["function"]["arguments"]) == \
        {"a": 1, "b": 2}
    assert parse_calls("No tools needed.", "hermes") == ("No tools needed.", [])
    assert parse_calls('{"broken": ', "llama3") == ('{"broken":', [])
    c, calls = parse_calls('{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}',
                           "generic")
    assert c == "" and calls[0]["function"]["name"] == "add"


def test_bad_tools():
    with pytest.raises(ArgumentError, match=r"tools\[0\]"):
        check_tools([{"type": "retrieval"}])
    with pytest.raises(ArgumentError, match="name"):
        check_tools([{"type": "function", "function": {"name": "bad name"}}])
    with pytest.raises(ArgumentError, match="not in tools"):
        check_tools(TOOLS, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ArgumentError, match="tool_choice"):
        check_tools(TOOLS, "sometimes")
    with pytest.raises(ArgumentError, match="second function"):
        check_tools([ADD, ADD])


@pytest.fixture(scope="module")
def stories(stories260k):
    from fastllm import Model

    m = Model.load(stories260k, backend="reference", quiet=True)
    yield m
    m.close()


def _valid(call: dict) -> dict:
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, SCHEMAS[call["function"]["name"]])
    return args


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "Qwen3.5-4B",
                                  "meta-llama-Llama-3.2-3B-Instruct",
                                  "mistralai-Mistral-Nemo-Instruct-2407", None])
def test_forced_call_from_a_small_model(stories, data_dir, name):
    """stories260K (which never writes a tool call) with a real template in its place (None:
    its own ChatML, the generic format): tool_choice "required" and a named function give one
    call whose arguments validate, greedy and sampled; the streamed deltas add up to it."""
    m = stories
    m._chat = None if name is None else ChatTemplate(_template(data_dir, name), "<s>", "</s>")
    msgs = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
    try:
        r = m.chat(msgs, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0)
        assert r["role"] == "assistant" and len(r["tool_calls"]) == 1, r
        _valid(r["tool_calls"][0])
        named = {"type": "function", "function": {"name": "add"}}
        r = m.chat(msgs, tools=TOOLS, tool_choice=named, max_tokens=120, temperature=0.8,
                   seed=5)
        assert [c["function"]["name"] for c in r["tool_calls"]] == ["add"], r
        _valid(r["tool_calls"][0])
        deltas = list(m.chat(msgs, tools=TOOLS, tool_choice=named, max_tokens=120,
                             temperature=0.8, seed=5, stream=True))
        calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert [c["index"] for c in calls] == [0]
        assert calls[0]["function"] == r["tool_calls"][0]["function"]
    finally:
        m._chat = None


def test_tool_result_round_trip(stories):
    """A forced call, its result as a role "tool" message, and the next turn: the rendered
    prompt holds the call and the result, and the reply (auto) is an assistant message."""
    m = stories
    msgs = [{"role": "user", "content": "Add 2 and 3."}]
    r = m.chat(msgs, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0)
    call = r["tool_calls"][0]
    msgs += [r, {"role": "tool", "tool_call_id": call["id"], "content": "5"}]
    from fastllm.tools import prepare_messages

    text = m.detokenize(m.chat_prompt(prepare_messages(msgs, TOOLS, "generic")))
    assert call["function"]["name"] in text and f"Result of {call['function']['name']}: 5" in text
    r2 = m.chat(msgs, tools=TOOLS, max_tokens=16, temperature=0)
    assert r2["role"] == "assistant" and isinstance(r2["tool_calls"], list)
    assert isinstance(m.chat(msgs, tools=TOOLS, tool_choice="none", max_tokens=8,
                             temperature=0)["content"], str)
