"""The grammar of a forced call (tool_choice "required" or a named function): one call in the
template's format, its arguments valid under the function's JSON schema, in llguidance's Lark
syntax (fastllm.constrain compiles it)."""

from __future__ import annotations

import json
from typing import Any

from . import gemma4
from .formats import lit as _lit
from .formats import special_ref as _special_ref

# the JSON options of a call inside a grammar (as fastllm.constrain.JSON_DEFAULTS)
_XG = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def strict_schema(schema: Any) -> Any:
    """schema with every object that does not say otherwise closed to other properties
    (OpenAI's strict mode), so that a forced call holds only the function's arguments."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) if k in ("items", "anyOf", "oneOf", "allOf", "prefixItems")
           else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {k: strict_schema(v) for k, v in schema[key].items()}
    if (schema.get("type") == "object" or "properties" in schema) \
            and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _call_schema(tools: list[dict], name: str | None, args_key: str = "arguments") -> dict:
    """The JSON schema of one call object {"name": NAME, args_key: ARGS} of any tool (or the
    named one)."""
    alts = []
    for t in tools:
        f = t["function"]
        if name and f["name"] != name:
            continue
        alts.append({"type": "object", "properties": {"name": {"const": f["name"]},
                                                      args_key: strict_schema(f["parameters"])},
                     "required": ["name", args_key], "additionalProperties": False})
    return {**(alts[0] if len(alts) == 1 else {"anyOf": alts}), "x-guidance": _XG}


def _xml_value(schema: dict) -> str:
    """A Lark expression for one Qwen3.5 <parameter=...> value of this schema."""
    t = schema.get("type")
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return "(" + " | ".join(_lit(v) for v in schema["enum"]) + ")"
    if t == "string":
        return "/[^<]+/"
    if t in ("integer", "number", "boolean", "object", "array") or "anyOf" in schema:
        return "%json " + json.dumps({**strict_schema(schema), "x-guidance": _XG})
    return "/[^<]+/"


def tool_grammar(fmt: str, tools: list[dict], name: str | None, tok: Any = None) -> str:
    """A Lark grammar (llguidance's) for one call of any of tools (or of the named function)
    in format fmt, its arguments valid under the function's schema."""
    if fmt == "qwen_xml":
        funcs = []
        for t in tools:
            f = t["function"]
            if name and f["name"] != name:
                continue
            props = f["parameters"].get("properties") or {}
            req = set(f["parameters"].get("required") or [])
            parts = []
            for p, s in props.items():
                one = f'"<parameter={p}>\\n" {_xml_value(s if isinstance(s, dict) else {})} ' \
                      f'"\\n</parameter>\\n"'
                parts.append(one if p in req else f"({one})?")
            body = " ".join(parts) if parts else '""'
            funcs.append(f'"<function={f["name"]}>\\n" {body} "</function>"')
        open_, close = _special_ref(tok, "<tool_call>"), _special_ref(tok, "</tool_call>")
        return (f"start: {open_} \"\\n\" call \"\\n\" {close}\n"
                f"call: {' | '.join(funcs)}\n")
    if fmt == "harmony":
        # gpt-oss writes its call as a commentary message to functions.NAME with a JSON body;
        # <|call|> after it ends generation (an end-of-generation token)
        ch, con, msg = (_special_ref(tok, s) for s in ("<|channel|>", "<|constrain|>",
                                                        "<|message|>"))
        alts = []
        for t in tools:
            f = t["function"]
            if not name or f["name"] == name:
                args = json.dumps({**strict_schema(f["parameters"]), "x-guidance": _XG})
                alts.append(f'"commentary to=functions.{f["name"]} " {con} "json" {msg} '
                            f'%json {args}')
        return f"start: {ch} call\ncall: {' | '.join(alts)}\n"
    if fmt == "gemma4":
        return gemma4.call_grammar(tools, name, tok)
    if fmt == "llama3":
        return "start: %json " + json.dumps(_call_schema(tools, name, "parameters")) + "\n"
    if fmt == "mistral":
        schema = {"type": "array", "items": _call_schema(tools, name), "minItems": 1,
                  "maxItems": 1, "x-guidance": _XG}
        return f"start: {_special_ref(tok, '[TOOL_CALLS]')} %json {json.dumps(schema)}\n"
    if fmt == "generic":
        schema = {"type": "object", "properties": {"tool_calls": {
            "type": "array", "items": _call_schema(tools, name), "minItems": 1,
            "maxItems": 1}}, "required": ["tool_calls"], "additionalProperties": False,
            "x-guidance": _XG}
        return "start: %json " + json.dumps(schema) + "\n"
    open_, close = _special_ref(tok, "<tool_call>"), _special_ref(tok, "</tool_call>")
    return (f"start: {open_} \"\\n\" %json {json.dumps(_call_schema(tools, name))} \"\\n\" "
            f"{close}\n")
