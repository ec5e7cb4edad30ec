"""Tool calls on the chat endpoint: the prompt with the tools rendered by the model's template
(and, for tool_choice "required" or a named function, the grammar that forces a call), and the
reply with the calls parsed out of each choice (fastllm.tools): OpenAI's `tool_calls` in the
message, or streamed as deltas (each call's id, type and name, then its arguments), with
finish_reason "tool_calls"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .. import tools as T
from . import protocol as P
from .replies import Reply, engine_error


def chat_prompt(m: Any, msgs: list[dict], p: P.Params) -> list[int]:
    """The token ids of a conversation with p.tools; a forced call's grammar goes into
    p.sampling as the requests' constraint. Runs on a worker thread (the template, the
    grammar's checks)."""
    from ..constrain import compile_constraint

    _, forced = T.check_tools(p.tools, p.tool_choice)
    use = p.tool_choice != "none"
    fmt = T.tool_format(m.chat_template().source)
    extra: dict[str, Any] = {"tools": p.tools} if use and fmt != "generic" else {}
    if forced is not None:
        if p.sampling.get("json_schema") is not None:
            raise P.bad("response_format", "a response_format schema and a tool_choice that "
                        "forces a call cannot go together", "invalid_value")
        extra["enable_thinking"] = False
        p.sampling["constraint"] = compile_constraint(
            m.tokenizer, m.n_vocab, grammar=T.tool_grammar(fmt, p.tools, forced or None,
                                                           m.tokenizer))
    return m.chat_prompt(T.prepare_messages(msgs, p.tools if use else None, fmt), **extra)


class ToolReply(Reply):
    """A chat Reply whose choices' calls are parsed from their tokens (module docstring)."""

    def __init__(self, *args, tokenizer: Any, template: str, tool_choice: Any = None, **kw):
        super().__init__(*args, **kw)
        fmt = T.tool_format(template)
        # tool_choice "none": every token is text, except gpt-oss's channels (its reasoning is
        # not content with or without tools)
        self.fmt = fmt if tool_choice != "none" or fmt == "harmony" else None
        tools = (self.p.tools or []) if tool_choice != "none" else []
        self.parsers = {c.index: T.tool_parser(tokenizer, self.fmt or "generic", tools)
                        for c in self.choices}
        self.fed = {c.index: 0 for c in self.choices}

    def _events_of(self, c: Any, final: bool) -> list[tuple]:
        """The parser's events for c's tokens since the last call."""
        ids = c.req.token_ids
        new = ids[self.fed[c.index]:]
        self.fed[c.index] += len(new)
        if self.fmt is None:  # tool_choice "none": every token is text
            text = "".join(self.parsers[c.index].tok.token_to_piece(int(t)).decode(
                "utf-8", "replace") for t in new) if new else ""
            return [("content", text)] if text else []
        ev = self.parsers[c.index].feed(new)
        return ev + (self.parsers[c.index].finish() if final else [])

    def _delta_chunk(self, c: Any, delta: dict, finish: str | None = None) -> bytes:
        out = self._chunk(c, None, finish)
        out["choices"][0]["delta"] = delta
        return P.sse(out)

    def _finish(self, c: Any) -> str:
        if self.parsers[c.index].calls and c.req.finish_reason == "stop":
            return "tool_calls"
        return P.FINISH[c.req.finish_reason]

    async def events(self) -> AsyncIterator[bytes]:
        for c in self.choices:
            yield P.sse(self._chunk(c, None, role=True))
        try:
            async for c, text in self.pieces():
                for e in self._events_of(c, text is None):
                    if e[0] == "content":
                        c.text += e[1]
                        yield self._delta_chunk(c, {"content": e[1]})
                        continue
                    if e[0] == "reasoning":
                        yield self._delta_chunk(c, {"reasoning_content": e[1]})
                        continue
                    _, index, call = e
                    yield self._delta_chunk(c, {"tool_calls": [{
                        "index": index, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}]})
                    yield self._delta_chunk(c, {"tool_calls": [{
                        "index": index, "function": {"arguments": call["function"]
                                                     ["arguments"]}}]})
                if text is None:
                    yield self._delta_chunk(c, {}, self._finish(c))
        except Exception as e:  # noqa: BLE001 (the engine's failure, told in the stream)
            yield P.sse(engine_error(e).body())
            yield P.DONE
            return
        if self.p.include_usage:
            out = self._chunk(self.choices[0], None)
            out["choices"] = []
            out["usage"] = self.usage()
            yield P.sse(out)
        yield P.DONE

    def body(self) -> dict:
        out = super().body()
        for c, choice in zip(self.choices, out["choices"]):
            self.fed[c.index] = 0
            text = "".join(e[1] for e in self._events_of(c, True) if e[0] == "content")
            calls = self.parsers[c.index].calls
            msg = {"role": "assistant", "content": text or (None if calls else ""),
                   "refusal": None}
            if calls:
                msg["tool_calls"] = calls
            reasoning = getattr(self.parsers[c.index], "reasoning", "")
            if reasoning:
                msg["reasoning_content"] = reasoning
            choice["message"] = msg
            choice["finish_reason"] = self._finish(c)
        return out


__all__ = ["ToolReply", "chat_prompt"]
