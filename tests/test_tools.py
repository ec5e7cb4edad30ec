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
from fastllm.tools import check_tools, parse_calls, tool_format, tool_parser

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
# tools at all
FORMATS = {
    "Qwen-Qwen2.5-7B-Instruct": "hermes", "Qwen-Qwen3-0.6B": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "ibm-granite-granite-4.0": "hermes", "Qwen3.5-4B": "qwen_xml",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3", "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "google-gemma-4-31B-it": "gemma4", "openai-gpt-oss-120b": "harmony",
    "microsoft-Phi-3.5-mini-instruct": "generic", "HuggingFaceTB-SmolLM3-3B": "generic",
}
# a vocabulary that tokenizes each template's text (the markers as plain text where the
# vocabulary has no such token; Llama 3's has <|python_tag|>)
VOCAB = {"llama3": "llama-bpe", "hermes": "qwen2", "qwen_xml": "qwen2", "mistral": "llama-spm",
         "gemma4": "qwen2", "harmony": "qwen2"}
# what ends the rendered reply: the end-of-generation token the model writes there
EOS = {"llama3": "<|eot_id|>", "hermes": "<|im_end|>", "qwen_xml": "<|im_end|>",
       "mistral": "</s>", "gemma4": "<|tool_response>", "harmony": "<|call|>"}


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
    two = fmt not in ("llama3", "harmony")  # these templates take one call at a time
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
    cut = full.rfind("<|", 0, common)  # not inside a marker the two renderings begin alike
    if cut >= 0 and ">" not in full[cut:common]:
        common = cut
    reply = full[common:].rstrip()
    reply = reply.removesuffix(EOS[fmt])
    assert "get_weather" in reply, reply
    tok = Tokenizer.load(data_dir / "vocab" / f"ggml-vocab-{VOCAB[fmt]}.gguf")
    ids = tok.encode(reply, add_bos=False, special=True)
    p = tool_parser(tok, fmt, TOOLS)
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
    if fmt == "harmony":  # its calls are messages, read by HarmonyParser alone
        return
    # the same text parsed whole
    _, whole = parse_calls(tok.decode(ids) if fmt != "llama3" else reply, fmt, TOOLS)
    assert [json.loads(c["function"]["arguments"]) for c in whole] == \
        [c["function"]["arguments"] for c in calls]


def test_content_before_a_call_streams_first():
    """Hermes: the text before <tool_call> comes out as content as it arrives (held back only
    while it could be the start of the marker); text without a call is all content."""
    from fastllm.tools.parse import _held

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
                                  "mistralai-Mistral-Nemo-Instruct-2407",
                                  "google-gemma-4-31B-it", "openai-gpt-oss-120b", None])
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


def _feed_each(p, tok, text: str) -> list[tuple]:
    events = []
    for i in tok.encode(text, add_bos=False, special=True):
        events += p.feed([i])
    return events + p.finish()


def test_harmony_channels(data_dir):
    """gpt-oss: the analysis channel is reasoning, not content; the final channel's text
    streams as content before its message ends; a commentary message to functions.NAME after
    the analysis is a call whose body is its JSON arguments."""
    from fastllm.tokenizer import Tokenizer

    tok = Tokenizer.load(data_dir / "vocab" / "ggml-vocab-qwen2.gguf")
    p = tool_parser(tok, "harmony", TOOLS)
    ev = _feed_each(p, tok, "<|channel|>analysis<|message|>User wants weather.<|end|>"
                    "<|start|>assistant<|channel|>final<|message|>It is sunny")
    assert [e for e in ev if e[0] == "reasoning"] and p.reasoning == "User wants weather."
    assert p.content == "It is sunny" and not p.calls
    assert ev.index(next(e for e in ev if e[0] == "content")) < len(ev)
    p = tool_parser(tok, "harmony", TOOLS)
    ev = _feed_each(p, tok, '<|channel|>analysis<|message|>Need the tool.<|end|><|start|>'
                    'assistant<|channel|>commentary to=functions.get_weather <|constrain|>json'
                    '<|message|>{"city": "Oslo", "days": 2}')
    msg = p.message()
    assert msg["content"] is None and msg["reasoning_content"] == "Need the tool."
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather"]
    assert _valid(msg["tool_calls"][0]) == {"city": "Oslo", "days": 2}


def test_gemma4_arguments_and_thinking():
    """Gemma 4's argument syntax read back (nested objects, arrays, quoted strings with commas
    and braces, numbers, booleans, None); its thinking block is not content."""
    from fastllm.tools.gemma4 import read_call

    q = '<|"|>'
    name, args = read_call(f"call:plan{{days:[1,2.5,-3e2],opts:{{deep:true,note:{q}a, {{b}}:c{q},"
                           f"x:None}},title:{q}Trip{q}}}")
    assert name == "plan" and args == {"days": [1, 2.5, -300.0], "title": "Trip",
                                       "opts": {"deep": True, "note": "a, {b}:c", "x": None}}
    assert read_call("call:plan{days:[1,") is None and read_call("plain text") is None
    content, calls = parse_calls("<|channel>thought\nhmm<channel|>Sure.<|tool_call>call:add"
                                 "{a:1,b:2}<tool_call|>", "gemma4", TOOLS)
    assert content == "Sure." and json.loads(calls[0]["function"]["arguments"]) == \
        {"a": 1, "b": 2}


def test_gemma4_grammar_follows_the_schema(stories, data_dir):
    """A forced Gemma 4 call under a schema with an array (min/max items), a nested object, an
    optional key and bounds: sampled with several seeds, every call reads back and validates."""
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]},
                 "minItems": 1, "maxItems": 3},
        "where": {"type": "object", "properties": {"lat": {"type": "integer", "minimum": -90,
                                                           "maximum": 90}},
                  "required": ["lat"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["tags", "where"]}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    m = stories
    m._chat = ChatTemplate(_template(data_dir, "google-gemma-4-31B-it"), "<s>", "</s>")
    try:
        for seed in range(4):
            r = m.chat([{"role": "user", "content": "go"}], tools=[tool], tool_choice="required",
                       max_tokens=150, temperature=1.0, seed=seed)
            assert len(r["tool_calls"]) == 1, r
            jsonschema.validate(json.loads(r["tool_calls"][0]["function"]["arguments"]), schema)
    finally:
        m._chat = None


def test_chat_without_tools_on_harmony_gives_the_final_channel(stories, data_dir):
    """Model.chat with gpt-oss's template and no tools: the reply is the final channel's text,
    without the analysis (here a grammar makes stories260K write both channels); streamed
    pieces add up to the same text."""
    m = stories
    m._chat = ChatTemplate(_template(data_dir, "openai-gpt-oss-120b"), "<s>", "</s>")
    g = ('start: "<|channel|>analysis<|message|>" /[a-z]{3,8}/ "<|end|><|start|>assistant'
         '<|channel|>final<|message|>" FINAL\nFINAL: /[a-z]{3,8}/\n')
    try:
        msgs = [{"role": "user", "content": "Hi"}]
        text = m.chat(msgs, grammar=g, max_tokens=250, temperature=0.9, seed=1)
        raw = m.generate(m.chat_prompt(msgs), grammar=g, max_tokens=250, temperature=0.9, seed=1)
        assert raw.endswith(text) and "analysis" in raw and text.isalpha(), (raw, text)
        assert "".join(m.chat(msgs, grammar=g, max_tokens=250, temperature=0.9, seed=1,
                              stream=True)) == text
    finally:
        m._chat = None
