"""Structured output and tool calls through `fastllm serve` with OpenAI's own Python client:
response_format (json_object, json_schema with strict) validated by the jsonschema package, a
forced tool call whose arguments validate against the function's schema, its result sent
back as a role "tool" message, and the call streamed as tool_call deltas (the client's own
accumulation gives the same call). stories260K on the reference backend (ChatML: fastllm's
generic tool format)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from serve_helpers import serving

openai = pytest.importorskip("openai")

from fastllm import Engine, Model

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": -50, "maximum": 50},
        "b": {"type": "integer", "minimum": -50, "maximum": 50}}, "required": ["a", "b"]}}}
NOTE = {"type": "function", "function": {
    "name": "note", "parameters": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": 20}}, "required": ["text"]}}}
ASK = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def client(stories260k):
    m = Model.load(stories260k, backend="reference", n_seq=2, n_ctx=2048, quiet=True)
    with Engine(m) as eng, serving(eng) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def test_response_format(client):
    schema = {"type": "object", "properties": {
        "animal": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "minimum": 1,
                                                    "maximum": 20}},
        "required": ["animal", "age"]}
    r = client.chat.completions.create(
        model="stories260K", messages=ASK, max_tokens=80, temperature=0.7, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "pet", "schema": schema, "strict": True}})
    out = json.loads(r.choices[0].message.content)
    jsonschema.validate(out, schema)
    assert set(out) == {"animal", "age"}  # strict: no other keys
    assert r.choices[0].finish_reason == "stop"
    # any object: stories260K may write one key until max_tokens ("length": cut short)
    r = client.chat.completions.create(model="stories260K", messages=ASK, max_tokens=40,
                                       temperature=0, response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    assert r.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="stories260K", messages=ASK,
                                       response_format={"type": "yaml"})
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(
            model="stories260K", messages=ASK,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "no-such-type"}}})


def test_forced_tool_call_round_trip(client):
    r = client.chat.completions.create(
        model="stories260K", messages=ASK, tools=[ADD, NOTE], max_tokens=100, temperature=0,
        tool_choice={"type": "function", "function": {"name": "add"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "add" and call.id
    jsonschema.validate(json.loads(call.function.arguments), ADD["function"]["parameters"])
    msgs = ASK + [choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    r2 = client.chat.completions.create(model="stories260K", messages=msgs, tools=[ADD, NOTE],
                                        max_tokens=12, temperature=0)
    assert r2.choices[0].message.role == "assistant"
    r3 = client.chat.completions.create(model="stories260K", messages=ASK, tools=[ADD, NOTE],
                                        tool_choice="required", max_tokens=100, temperature=0.9,
                                        seed=2)
    (call,) = r3.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments),
                        {"add": ADD, "note": NOTE}[call.function.name]["function"]
                        ["parameters"])


def test_streamed_tool_call_deltas(client):
    kw = {"model": "stories260K", "messages": ASK, "tools": [ADD, NOTE], "max_tokens": 100,
          "temperature": 0.8, "seed": 9, "tool_choice": "required"}
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kw):
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = tc.id or c["id"]
            if tc.function and tc.function.name:
                c["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == whole.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


def test_bad_tools(client):
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model="stories260K", messages=ASK, tools=[ADD],
                                       tool_choice={"type": "function",
                                                    "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="stories260K", messages=ASK,
                                       tools=[{"type": "function", "function": {}}])


@pytest.mark.parametrize("template", ["openai-gpt-oss-120b", "google-gemma-4-31B-it"])
def test_forced_call_in_a_templates_own_format(stories260k, data_dir, template):
    """gpt-oss's harmony channels and Gemma 4's argument syntax through the server: the model's
    template in place of stories260K's, a forced call (streamed and not) whose arguments
    validate, and its result sent back as a role "tool" message, which the template renders."""
    from fastllm.chat import ChatTemplate

    m = Model.load(stories260k, backend="reference", n_ctx=2048, quiet=True)
    m._chat = ChatTemplate((data_dir / "templates" / f"{template}.jinja").read_text(), "<s>",
                           "</s>")
    with Engine(m) as eng, serving(eng) as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        kw = {"model": "stories260K", "messages": ASK, "tools": [ADD, NOTE], "max_tokens": 100,
              "temperature": 0.7, "seed": 3,
              "tool_choice": {"type": "function", "function": {"name": "add"}}}
        r = c.chat.completions.create(**kw)
        (call,) = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "add"
        jsonschema.validate(json.loads(call.function.arguments), ADD["function"]["parameters"])
        streamed = "".join(tc.function.arguments or "" for chunk in c.chat.completions.create(
            stream=True, **kw) for tc in chunk.choices[0].delta.tool_calls or [])
        assert json.loads(streamed) == json.loads(call.function.arguments)
        msgs = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "5"}]
        r2 = c.chat.completions.create(model="stories260K", messages=msgs, tools=[ADD, NOTE],
                                       max_tokens=8, temperature=0)
        assert r2.choices[0].message.role == "assistant"
