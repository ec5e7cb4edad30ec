"""The calls of a reply read back in its template's format: parse_calls for a whole reply,
ToolParser as its tokens arrive (content given out as soon as it cannot be the start of a call,
each call once it is complete). gpt-oss's channels have a parser of their own (harmony.py)."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from typing import Any

from . import gemma4
from .formats import _args_object, call_id

_MARKERS = {"hermes": ("<tool_call>",), "qwen_xml": ("<tool_call>",),
            "gemma4": (gemma4.OPEN,), "llama3": ("<|python_tag|>", "{"),
            "mistral": ("[TOOL_CALLS]",), "generic": ("{",)}
# the formats whose calls are blocks between an opening and a closing marker, anywhere in the
# reply (content before, between and after them)
_BLOCKS = {"hermes": ("<tool_call>", "</tool_call>"), "qwen_xml": ("<tool_call>", "</tool_call>"),
           "gemma4": (gemma4.OPEN, gemma4.CLOSE)}
# special tokens rendered as their text in the parser's view of the reply (others render as
# nothing, as in the reply's text)
_SHOWN = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]",
          gemma4.OPEN, gemma4.CLOSE, gemma4.QUOTE, "<|channel>", "<channel|>")


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


def _block_calls(body: str, fmt: str, tools: list[dict]) -> list[dict] | None:
    """The calls of one block between a format's markers (_BLOCKS), None if it holds none."""
    if fmt == "gemma4":
        got = gemma4.read_call(body)
        c = _call(got[0], got[1], fmt) if got else None
        return [c] if c else None
    if "<function=" in body:
        return _xml_calls(body, tools, fmt)
    got = _json_prefix(body)
    return _from_object(got[0], fmt) if got else None


def parse_calls(text: str, fmt: str, tools: list[dict] | None = None
                ) -> tuple[str, list[dict]]:
    """(content, tool calls) of a whole reply whose tool-call markers are in `text` (see
    ToolParser): calls in OpenAI's shape with arguments as JSON text; text that does not parse
    as a call stays content."""
    tools = tools or []
    if fmt in _BLOCKS:
        open_, close = _BLOCKS[fmt]
        calls, content, pos = [], [], 0
        for m in re.finditer(re.escape(open_) + r"(.*?)(?:" + re.escape(close) + r"|$)", text,
                             re.DOTALL):
            got = _block_calls(m.group(1), fmt, tools)
            if got:
                calls += got
                content.append(text[pos:m.start()])
                pos = m.end()
        content.append(text[pos:])
        out = "".join(content)
        if fmt == "gemma4":  # the model's thinking (<|channel>...<channel|>) is not content
            out = re.sub(r"<\|channel>.*?(?:<channel\|>|$)", "", out, flags=re.DOTALL)
        return out.strip(), calls
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
            if self.fmt in _BLOCKS:
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
        if self._in_calls and self.fmt in _BLOCKS:
            # every complete block (<tool_call>...</tool_call>) goes out as it closes
            close = _BLOCKS[self.fmt][1]
            while True:
                end = self.text.find(close, self._out)
                if end < 0:
                    break
                stop = end + len(close)
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
