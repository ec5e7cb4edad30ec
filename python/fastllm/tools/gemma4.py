"""Gemma 4's tool calls: `<|tool_call>call:NAME{key:value,...}<tool_call|>`, in the argument
syntax its chat template writes (format_argument): object keys bare, strings between `<|"|>`
tokens, numbers and booleans as written, `{...}` objects and `[...]` arrays; keys in sorted
order (the template's dictsort). read_call parses one call's text; call_grammar is the Lark
grammar of a forced call whose arguments follow the function's schema."""

from __future__ import annotations

import json
import re
from typing import Any

from .formats import lit as _lit
from .formats import special_ref

QUOTE = '<|"|>'
OPEN, CLOSE = "<|tool_call>", "<tool_call|>"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORDS = {"true": True, "false": False, "null": None, "None": None}


class _Reader:
    """A recursive-descent reader of one argument value; ValueError where it is not one."""

    def __init__(self, text: str):
        self.s, self.i = text, 0

    def value(self) -> Any:
        s, i = self.s, self.i
        if s.startswith(QUOTE, i):
            end = s.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise ValueError("an unclosed string")
            self.i = end + len(QUOTE)
            return s[i + len(QUOTE):end]
        if s.startswith("{", i):
            self.i += 1
            out: dict[str, Any] = {}
            while not self._take("}"):
                if out and not self._take(","):
                    raise ValueError(f"',' or '}}' expected at {self.i}")
                key = self.key()  # before the value (an assignment reads its right side first)
                out[key] = self.value()
            return out
        if s.startswith("[", i):
            self.i += 1
            items: list[Any] = []
            while not self._take("]"):
                if items and not self._take(","):
                    raise ValueError(f"',' or ']' expected at {self.i}")
                items.append(self.value())
            return items
        m = _NUMBER.match(s, i)
        if m:
            self.i = m.end()
            return json.loads(m.group())
        for word, v in _WORDS.items():
            if s.startswith(word, i):
                self.i += len(word)
                return v
        raise ValueError(f"a value expected at {i}: {s[i:i + 20]!r}")

    def key(self) -> str:
        if self.s.startswith(QUOTE, self.i):
            k = self.value()
        else:
            end = self.s.find(":", self.i)
            if end < 0:
                raise ValueError("':' expected after a key")
            k, self.i = self.s[self.i:end].strip(), end
        if not self._take(":"):
            raise ValueError(f"':' expected at {self.i}")
        return k

    def _take(self, c: str) -> bool:
        if self.i < len(self.s) and self.s[self.i] == c:
            self.i += 1
            return True
        if self.i >= len(self.s):
            raise ValueError("the text ends inside a value")
        return False


def read_call(body: str) -> tuple[str, Any] | None:
    """(name, arguments) of one call's body `call:NAME{...}` (between the markers), or None
    when it is not one."""
    m = re.match(r"\s*call:([^{\s]+)\s*(?=\{)", body)
    if not m:
        return None
    r = _Reader(body)
    r.i = m.end()
    try:
        args = r.value()
    except ValueError:
        return None
    return m.group(1), args


# -- the grammar of a forced call ---------------------------------------------------------------
class _Rules:
    """Lark rules for values of JSON schemas in Gemma 4's syntax; numbers and booleans go
    through llguidance's %json (so bounds hold), strings between the quote tokens."""

    def __init__(self, quote: str):
        self.q = quote
        self.rules: list[str] = []

    def rule(self, body: str) -> str:
        name = f"v{len(self.rules)}"
        self.rules.append(f"{name}: {body}")
        return name

    def value(self, schema: Any) -> str:
        s = schema if isinstance(schema, dict) else {}
        t = s.get("type")
        if "enum" in s and all(isinstance(v, str) for v in s["enum"]):
            return self.rule(f"{self.q} ({' | '.join(_lit(v) for v in s['enum'])}) {self.q}")
        if t in ("integer", "number", "boolean"):
            keep = {k: v for k, v in s.items() if k in (
                "type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum")}
            return self.rule("%json " + json.dumps(keep))
        if t == "object" or "properties" in s:
            return self.obj(s)
        if t == "array":
            item = self.value(s.get("items") or {"type": "string"})
            lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
            more = [f'"," {item}'] * max(lo - 1, 0)
            if hi is None:
                more.append(f'("," {item})*')
            else:
                more += [f'("," {item})?'] * (int(hi) - max(lo, 1))
            inner = " ".join([item, *more])
            if lo == 0:
                inner = f"({inner})?" if hi is None or int(hi) > 0 else ""
            return self.rule(f'"[" {inner} "]"')
        return self.rule(f"{self.q} /[^<]*/ {self.q}")

    def obj(self, s: dict) -> str:
        props = s.get("properties") or {}
        req = [k for k in sorted(props) if k in set(s.get("required") or [])]
        opt = [k for k in sorted(props) if k not in req]
        kv = {k: f'"{k}:" {self.value(props[k])}' for k in sorted(props)}
        # the required keys first, then each optional one or not: an order the template may not
        # write (it sorts all keys), which read_call takes all the same
        body = ' "," '.join(kv[k] for k in req)
        if req:
            body += "".join(f' ("," {kv[k]})?' for k in opt)
        elif opt:
            body = f"({kv[opt[0]]}" + "".join(f' ("," {kv[k]})?' for k in opt[1:]) + ")?"
        return self.rule(f'"{{" {body} "}}"')


def call_grammar(tools: list[dict], name: str | None, tok: Any = None) -> str:
    """The Lark grammar of one call of any of tools (or the named function)."""
    r = _Rules(special_ref(tok, QUOTE))
    alts = []
    for t in tools:
        f = t["function"]
        if name and f["name"] != name:
            continue
        alts.append(f'"call:{f["name"]}" {r.obj(f["parameters"])}')
    open_, close = special_ref(tok, OPEN), special_ref(tok, CLOSE)
    return "\n".join([f"start: {open_} call {close}", f"call: {' | '.join(alts)}", *r.rules]) \
        + "\n"
