"""gpt-oss's replies in the harmony format: a run of messages, each a header (`<|channel|>NAME`,
an optional recipient `to=functions.F`, an optional `<|constrain|>json`), `<|message|>`, a body,
and an end (`<|end|>`, `<|call|>`, `<|return|>`, or the next `<|start|>`). The prompt ends with
`<|start|>assistant`, so the reply starts inside the first message's header. A message to
`functions.F` is a tool call (its body the JSON arguments); the `analysis` channel is the
model's reasoning; everything else (`final`, `commentary` to no one) is the reply's content,
given out as it arrives."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Any

from .parse import _call, _held, _json_prefix

MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>",
           "<|return|>")
_ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")


class HarmonyParser:
    """ToolParser's interface (feed, finish, calls, content, message) for harmony replies, and
    the reasoning: events ("content", text), ("reasoning", text), ("tool_call", index, call)."""

    def __init__(self, tok: Any, tools: list[dict] | None = None):
        self.tok, self.tools = tok, tools or []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._shown = {tid: m for m in MARKERS if (tid := tok.token_id(m)) is not None}
        self.text = ""
        self._seg = 0  # where the current message starts in text
        self._given = 0  # how much of the current message's body has gone out
        self._calls: list[dict] = []
        self.content = ""
        self.reasoning = ""

    def feed(self, ids: Sequence[int]) -> list[tuple]:
        for t in ids:
            shown = self._shown.get(int(t))
            self.text += shown if shown is not None else self._utf8.decode(
                self.tok.token_to_piece(int(t)))
        return self._advance(final=False)

    def finish(self) -> list[tuple]:
        self.text += self._utf8.decode(b"", final=True)
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[tuple]:
        ev: list[tuple] = []
        while True:
            msg = self.text[self._seg:]
            head_end = msg.find("<|message|>")
            if head_end < 0:
                # at the end, text that is no header (no channel, no start): the model's own
                # words outside the format; a header cut short says nothing
                if final and msg.strip() and "<|channel|>" not in msg and "<|start|>" not in msg:
                    self._emit(ev, "content", msg.strip())
                    self._seg = len(self.text)
                break
            header, start = msg[:head_end], head_end + len("<|message|>")
            ends = [(msg.find(e, start), e) for e in _ENDS]
            end, marker = min(((i, e) for i, e in ends if i >= 0), default=(-1, ""))
            to = re.search(r"to=([^\s<]+)", header)
            ch = re.search(r"<\|channel\|>\s*([A-Za-z_]+)", header)
            channel = ch.group(1) if ch else ""
            done = end >= 0 or final
            body = msg[start:end] if end >= 0 else msg[start:]
            if to and to.group(1).startswith("functions."):
                if done:
                    self._call(ev, to.group(1)[len("functions."):], body)
            else:
                kind = "reasoning" if channel == "analysis" else "content"
                upto = len(body) if done else len(body) - _held(body, _ENDS)
                self._emit(ev, kind, body[self._given:upto])
                self._given = max(self._given, upto)
            if not done:
                break
            self._seg += (end + (0 if marker == "<|start|>" else len(marker))) if end >= 0 \
                else len(msg)
            if marker == "<|start|>":
                self._seg += len("<|start|>")
            self._given = 0
            if end < 0:
                break
        return ev

    def _emit(self, ev: list, kind: str, text: str) -> None:
        if not text:
            return
        if kind == "content":
            self.content += text
        else:
            self.reasoning += text
        ev.append((kind, text))

    def _call(self, ev: list, name: str, body: str) -> None:
        got = _json_prefix(body)
        c = _call(name, got[0] if got else body.strip(), "harmony")
        if c:
            ev.append(("tool_call", len(self._calls), c))
            self._calls.append(c)

    @property
    def calls(self) -> list[dict]:
        return list(self._calls)

    def message(self) -> dict:
        """The whole reply as OpenAI's assistant message (after finish()), with the analysis
        channel as `reasoning_content` where there was one."""
        out = {"role": "assistant", "content": self.content or None, "tool_calls": self.calls}
        if self.reasoning:
            out["reasoning_content"] = self.reasoning
        return out
