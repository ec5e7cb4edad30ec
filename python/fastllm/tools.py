"""Tool calls: OpenAI's `tools` and `tool_choice` for Model.chat and the server.

The model's chat template renders the tools (its own words, its own format); the reply's tool
calls are parsed back into OpenAI's `tool_calls` in the format the template asks for, chosen by
reading the template (tool_format):

- "hermes": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2.5 and 3, Hermes,
  Granite 4)
- "qwen_xml": Qwen3.5's `<tool_call><function=NAME><parameter=P>value</parameter></function>
  </tool_call>`
- "llama3": a JSON object `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or not
  (Llama 3.1, 3.2)
- "mistral": `[TOOL_CALLS]` then a JSON array of calls (Mistral Nemo), or `[TOOL_CALLS]NAME
  [ARGS]{...}` per call (Mistral Small 3.2)
- "generic": a template that does not render tools. The tools and the answer's shape (a JSON
  object `{"tool_calls": [{"name": ..., "arguments": {...}}]}`, or plain text) go into a system
  message of fastllm's own, and earlier calls and results into the conversation as text.

`tool_choice` "auto" (the default) lets the model choose and parses what it wrote; "none" leaves
the tools out; "required" or {"type": "function", "function": {"name": ...}} is enforced by a
grammar (fastllm.constrain) in the template's format, whose arguments follow the function's
JSON schema, so even a small model returns one valid call.
"""

from __future__ import annotations

import codecs
import json
import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

from .errors import ArgumentError

FORMATS = ("hermes", "qwen_xml", "llama3", "mistral", "generic")
# the JSON options of a call inside a grammar (as fastllm.constrain.JSON_DEFAULTS)
_XG = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def tool_format(template: str | None) -> str:
    """The tool-call format a chat template's source asks for (module docstring)."""
    t = template or ""
    if not re.search(r"\btools\b", t):
        return "generic"
    if "<function=" in t and "<parameter=" in t:
        return "qwen_xml"
    if "<tool_call>" in t:
        return "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if '"parameters"' in t and ("<|start_header_id|>" in t or "<|python_tag|>" in t):
        return "llama3"
    return "generic"


# -- arguments --------------------------------------------------------------------------------
def check_tools(tools: Any, tool_choice: Any = None) -> tuple[list[dict], str | None]:
    """(tools, the function a call must name: None for any) from OpenAI's `tools` and
    `tool_choice`, checked; ArgumentError names the bad entry. tools come back as OpenAI's
    {"type": "function", "function": {"name", "description", "parameters"}}."""
    if not isinstance(tools, (list, tuple)) or not tools:
        raise ArgumentError("tools must be a non-empty list of {\"type\": \"function\", "
                            "\"function\": {\"name\": ..., \"parameters\": {...}}}")
    out, names = [], set()
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" \
                or not isinstance(f, dict):
            raise ArgumentError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                f"{{...}}}}")
        name = f.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ArgumentError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', "
                                f"'.' or '-', got {name!r}")
        if name in names:
            raise ArgumentError(f"tools[{i}]: a second function named {name!r}")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ArgumentError(f"tools[{i}].function.parameters must be a JSON schema object")
        names.add(name)
        # templates read every tool's description (Hermes 3's fails without one)
        desc = f.get("description")
        fn = {"name": name, "description": desc if isinstance(desc, str) else "",
              "parameters": params}
        out.append({"type": "function", "function": fn})
    forced: str | None = None
    if tool_choice in (None, "auto", "none"):
        pass
    elif tool_choice == "required":
        forced = ""
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
        forced = tool_choice["function"].get("name")
        if forced not in names:
            raise ArgumentError(f"tool_choice names function {forced!r}, which is not in tools "
                                f"({', '.join(sorted(names))})")
    else:
        raise ArgumentError(f"tool_choice must be \"auto\", \"none\", \"required\" or "
                            f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got "
                            f"{tool_choice!r}")
    return out, forced


def call_id(fmt: str) -> str:
    """A new call id: Mistral's templates take 9 letters and digits, the others OpenAI's
    "call_..." shape."""
    if fmt == "mistral":
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def _args_object(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


GENERIC_PROMPT = (
    "You can call these functions (JSON schemas of their arguments):\n{tools}\n\n"
    "To call one or more of them, reply with only this JSON object:\n"
    '{{"tool_calls": [{{"name": "<function name>", "arguments": {{<its arguments>}}}}]}}\n'
    "Otherwise reply to the user in plain text.")


def prepare_messages(messages: Sequence[dict], tools: list[dict] | None, fmt: str) -> list[dict]:
    """The conversation as the template takes it: earlier calls' arguments as objects (the
    templates iterate or tojson them), and, for a template that does not render tools
    ("generic"), the tools in a system message and calls and results as text."""
    out = []
    names = {c.get("id"): (c.get("function") or {}).get("name") for m in messages
             for c in (m.get("tool_calls") or []) if isinstance(c, dict)}
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                c = dict(c)
                fn = dict(c.get("function") or {})
                fn["arguments"] = _args_object(fn.get("arguments", {}))
                c["function"] = fn
                calls.append(c)
            m["tool_calls"] = calls
            if fmt == "generic":
                body = [{"name": c["function"].get("name"), "arguments": c["function"]
                         ["arguments"]} for c in calls]
                m = {"role": "assistant", "content": json.dumps({"tool_calls": body})}
        if m.get("content") is None:
            m["content"] = ""
        if fmt == "generic" and m.get("role") == "tool":
            who = m.get("name") or names.get(m.get("tool_call_id")) or "the function"
            m = {"role": "user", "content": f"Result of {who}: {m.get('content', '')}"}
        out.append(m)
    if fmt == "generic" and tools:
        listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        text = GENERIC_PROMPT.format(tools=listing)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


# -- the grammar of a forced call --------------------------------------------------------------
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


def _lit(text: str) -> str:
    return json.dumps(text)


def _special_ref(tok: Any, text: str) -> str:
    """A Lark reference to the token spelled `text` when the vocabulary has it as a special
    token (matched by id, as the model writes it), else the text itself."""
    from .constrain import _special

    tid = tok.token_id(text) if tok is not None else None
    if tid is not None and _special(tok, tid, tok.token_to_piece(tid)):
        return f"<[{tid}]>"
    return _lit(text)


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


# -- parsing the reply --------------------------------------------------------------------------
_MARKERS = {"hermes": ("<tool_call>",), "qwen_xml": ("<tool_call>",),
            "llama3": ("<|python_tag|>", "{"), "mistral": ("[TOOL_CALLS]",),
            "generic": ("{",)}
# special tokens rendered as their text in the parser's view of the reply (others render as
# nothing, as in the reply's text)
_SHOWN = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")


def _call(name: Any, args: Any, fmt: str, cid: Any = None) -> dict | None:
    if not isinstance(name, str) or not name:
        return None
    args = _args_object(args if args is not None else {})
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": cid if isinstance(cid, str) and cid else call_id(fmt), "type": "function",
            "function": {"name": name, "arguments": text}}


def _json_prefix(text: str) -> tuple[Any, int] | None:
    """The JSON value at the start of text (after whitespace) and where it ends."""
    s = text.lstrip()
    try:
        v, end = json.JSONDecoder().raw_decode(s)
    except ValueError:
        return None
    return v, end + len(text) - len(s)


def _from_object(v: Any, fmt: str) -> list[dict] | None:
    """The calls of a parsed JSON object (or list of objects), None if it holds none."""
    if isinstance(v, list):
        calls = [_from_object(x, fmt) for x in v]
        if calls and all(calls):
            return [c for cs in calls for c in cs]
        return None
    if not isinstance(v, dict):
        return None
    if fmt == "generic" and isinstance(v.get("tool_calls"), list):
        return _from_object(v["tool_calls"], fmt)
    if fmt == "generic" and isinstance(v.get("tool_call"), dict):
        return _from_object(v["tool_call"], fmt)
    f = v.get("function") if isinstance(v.get("function"), dict) else v
    args = f.get("arguments", f.get("parameters"))
    c = _call(f.get("name"), args, fmt, v.get("id"))
    return [c] if c else None


def _xml_calls(block: str, tools: list[dict], fmt: str) -> list[dict]:
    out = []
    for m in re.finditer(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", block, re.DOTALL):
        name, body = m.group(1).strip(), m.group(2)
        schema = next((t["function"]["parameters"] for t in tools
                       if t["function"]["name"] == name), {})
        props = schema.get("properties") or {}
        args = {}
        for p in re.finditer(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", body, re.DOTALL):
            key, raw = p.group(1).strip(), p.group(2)
            ptype = (props.get(key) or {}).get("type")
            args[key] = raw
            if ptype != "string":
                try:
                    args[key] = json.loads(raw)
                except ValueError:
                    pass
        c = _call(name, args, fmt)
        if c:
            out.append(c)
    return out


def parse_calls(text: str, fmt: str, tools: list[dict] | None = None
                ) -> tuple[str, list[dict]]:
    """(content, tool calls) of a whole reply whose tool-call markers are in `text` (see
    ToolParser): calls in OpenAI's shape with arguments as JSON text; text that does not parse
    as a call stays content."""
    tools = tools or []
    if fmt in ("hermes", "qwen_xml"):
        calls, content, pos = [], [], 0
        for m in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.DOTALL):
            body = m.group(1)
            got = (_xml_calls(body, tools, fmt) if "<function=" in body else
                   _from_object(_json_prefix(body)[0], fmt) if _json_prefix(body) else None)
            if got:
                calls += got
                content.append(text[pos:m.start()])
                pos = m.end()
        content.append(text[pos:])
        return "".join(content).strip(), calls
    s = text.strip()
    if fmt == "mistral" and "[TOOL_CALLS]" in s:
        head, _, rest = s.partition("[TOOL_CALLS]")
        if "[ARGS]" in rest:  # NAME[CALL_ID]id[ARGS]{...}, repeated
            calls = []
            for part in ("[TOOL_CALLS]" + rest).split("[TOOL_CALLS]")[1:]:
                name, _, args = part.partition("[ARGS]")
                name, _, cid = name.partition("[CALL_ID]")
                got = _json_prefix(args)
                c = _call(name.strip(), got[0] if got else args.strip(), fmt, cid.strip())
                if c:
                    calls.append(c)
            return head.strip(), calls
        got = _json_prefix(rest)
        calls = _from_object(got[0], fmt) if got else None
        return (head.strip(), calls) if calls else (s, [])
    if fmt == "llama3" and s.startswith("<|python_tag|>"):
        s = s[len("<|python_tag|>"):]
    if fmt in ("llama3", "generic") and s.startswith("{"):
        calls, rest = [], s
        while rest:
            got = _json_prefix(rest)
            found = _from_object(got[0], fmt) if got else None
            if not found:
                break
            calls += found
            rest = rest[got[1]:].lstrip().lstrip(";").lstrip()
        if calls and not rest:
            return "", calls
        if fmt == "generic" and not calls:
            got = _json_prefix(s)
            if got and isinstance(got[0], dict) and isinstance(got[0].get("response"), str):
                return got[0]["response"], []
    return text.strip(), []


class ToolParser:
    """A reply's tool calls as its tokens come: feed(token ids) returns events as soon as they
    are known, ("content", text) and ("tool_call", index, call); finish() the rest. Text that
    may start a call is held back until it is known; a call is given whole once it is complete
    (or at the end)."""

    def __init__(self, tok: Any, fmt: str, tools: list[dict] | None = None):
        self.tok, self.fmt, self.tools = tok, fmt, tools or []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._shown = {}
        for text in _SHOWN:
            tid = tok.token_id(text)
            if tid is not None:
                self._shown[tid] = text
        self.text = ""  # the reply so far, markers shown
        self._out = 0  # content given out up to here
        self._calls: list[dict] = []
        self._in_calls = False  # past the first marker: the rest is parsed at the end
        self.content = ""

    def _piece(self, tid: int) -> str:
        shown = self._shown.get(tid)
        if shown is not None:
            return shown
        return self._utf8.decode(self.tok.token_to_piece(tid))

    def feed(self, ids: Sequence[int]) -> list[tuple]:
        for t in ids:
            self.text += self._piece(int(t))
        return self._advance(final=False)

    def finish(self) -> list[tuple]:
        self.text += self._utf8.decode(b"", final=True)
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[tuple]:
        ev: list[tuple] = []
        markers = _MARKERS[self.fmt]
        if not self._in_calls:
            if self.fmt in ("hermes", "qwen_xml"):
                at = self.text.find(markers[0], self._out)
                if at >= 0:
                    self._in_calls = True
                    self._emit(ev, self.text[self._out:at])
                    self._out = at
                elif not final:
                    keep = _held(self.text[self._out:], markers)
                    self._emit(ev, self.text[self._out:len(self.text) - keep])
                    self._out = len(self.text) - keep
            else:  # these formats start the reply with their marker
                s = self.text.lstrip()
                if any(s.startswith(m) for m in markers):
                    self._in_calls = True
                elif s and not any(m.startswith(s) for m in markers):
                    self._emit(ev, self.text[self._out:])
                    self._out = len(self.text)
        if self._in_calls and self.fmt in ("hermes", "qwen_xml"):
            # every complete <tool_call>...</tool_call> block goes out as it closes
            while True:
                end = self.text.find("</tool_call>", self._out)
                if end < 0:
                    break
                stop = end + len("</tool_call>")
                content, calls = parse_calls(self.text[self._out:stop], self.fmt, self.tools)
                self._emit(ev, content)
                self._give(ev, calls)
                self._out = stop
        if final:
            rest = self.text[self._out:]
            self._out = len(self.text)
            if self._in_calls:
                content, calls = parse_calls(rest, self.fmt, self.tools)
                self._emit(ev, content if not self.content or not content else "\n" + content)
                self._give(ev, calls)
            else:
                self._emit(ev, rest)
        return ev

    def _emit(self, ev: list, text: str) -> None:
        if self._in_calls:
            text = text.strip()
        if text:
            self.content += text
            ev.append(("content", text))

    def _give(self, ev: list, calls: list[dict]) -> None:
        for c in calls:
            ev.append(("tool_call", len(self._calls), c))
            self._calls.append(c)

    @property
    def calls(self) -> list[dict]:
        return list(self._calls)

    def message(self) -> dict:
        """The whole reply as OpenAI's assistant message (after finish())."""
        return {"role": "assistant", "content": self.content or None, "tool_calls": self.calls}


def _held(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of text that could begin a marker."""
    best = 0
    for mk in markers:
        for k in range(min(len(mk) - 1, len(text)), best, -1):
            if text.endswith(mk[:k]):
                best = k
                break
    return best


__all__ = ["FORMATS", "ToolParser", "call_id", "check_tools", "parse_calls", "prepare_messages",
           "strict_schema", "tool_format", "tool_grammar"]
