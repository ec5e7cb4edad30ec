"""Which tool-call format a chat template asks for, and OpenAI's `tools`, `tool_choice` and
conversation checked and prepared for the template (the package docstring lists the formats)."""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError

FORMATS = ("hermes", "qwen_xml", "llama3", "mistral", "gemma4", "harmony", "generic")


def tool_format(template: str | None) -> str:
    """The tool-call format a chat template's source asks for (the package docstring)."""
    t = template or ""
    if not re.search(r"\btools\b", t):
        return "generic"
    if "<|channel|>" in t and "to=" in t and "functions." in t:
        return "harmony"
    if "<|tool_call>" in t and "<tool_call|>" in t:
        return "gemma4"
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


def lit(text: str) -> str:
    return json.dumps(text)


def special_ref(tok: Any, text: str) -> str:
    """A Lark reference to the token spelled `text` when the vocabulary has it as a special
    token (matched by id, as the model writes it), else the text itself."""
    from ..constrain import _special

    tid = tok.token_id(text) if tok is not None else None
    if tid is not None and _special(tok, tid, tok.token_to_piece(tid)):
        return f"<[{tid}]>"
    return lit(text)
