"""Model.generate and Model.chat with a constraint (json_schema, regex, grammar) or with tools:
both run one request through a fastllm.Engine, whose decode steps apply the constraint's token
mask where the sampling runs (fastllm.constrain), and whose token ids the tool-call parser reads
(fastllm.tools)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ArgumentError
from .generate import Generation


class RequestGeneration(Generation):
    """A Generation over an engine request's text pieces: finish_reason as the request's
    ("incomplete" too: a constraint's output cut short by max_tokens or the context)."""

    def __init__(self, body, req):
        super().__init__(body, len(req.prompt_ids))
        self.request = req

    @property
    def n_tokens(self) -> int:
        return self.request.usage.completion_tokens


def _run(model: Any, prompt: Any, constraint: Any, kw: dict):
    """(engine, request): one request submitted to a new engine over model."""
    from .engine import Engine

    eng = Engine(model)
    try:
        return eng, eng.submit(prompt, constraint=constraint, **kw)
    except BaseException:
        eng.close()
        raise


def _sampling(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop) -> dict:
    return {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "min_p": min_p, "repeat_penalty": repeat_penalty, "seed": seed,
            "stop": stop}


def generate(model: Any, prompt: Any, constraint: Any, stream: bool, **kw):
    """Model.generate with a compiled constraint: the text, or a Generation of its pieces."""
    eng, req = _run(model, prompt, constraint, kw)

    def body():
        try:
            yield from req
            return req.finish_reason
        finally:
            req.cancel()
            eng.close()

    gen = RequestGeneration(body(), req)
    return gen if stream else "".join(gen)


def chat(model: Any, messages: Sequence[dict], tools: Any, tool_choice: Any, stream: bool,
         constraint: Any, **kw):
    """Model.chat with tools: OpenAI's assistant message ({"role": "assistant", "content",
    "tool_calls"}, and "reasoning_content" where the model's reasoning is a channel of its own:
    gpt-oss), or with stream=True an iterator of OpenAI's deltas ({"content": text},
    {"reasoning_content": text} or {"tool_calls": [{"index", "id", "type", "function":
    {"name", "arguments"}}]})."""
    from .constrain import compile_constraint
    from .tools import check_tools, prepare_messages, tool_format, tool_grammar, tool_parser

    tools, forced = check_tools(tools, tool_choice)
    if constraint is not None and forced is not None:
        raise ArgumentError("tool_choice that forces a call and a json_schema, regex or "
                            "grammar cannot go together: give one of them")
    use = tool_choice != "none"
    fmt = tool_format(model.chat_template().source)
    extra: dict[str, Any] = {"tools": tools} if use and fmt != "generic" else {}
    if forced is not None:
        extra["enable_thinking"] = False  # the call comes at once (Qwen 3, SmolLM3 think first)
        constraint = compile_constraint(model.tokenizer, model.n_vocab,
                                        grammar=tool_grammar(fmt, tools, forced or None,
                                                             model.tokenizer))
    ids = model.chat_prompt(prepare_messages(messages, tools if use else None, fmt), **extra)
    eng, req = _run(model, ids, constraint, kw)
    parser = tool_parser(model.tokenizer, fmt, tools if use else [])
    # gpt-oss's channels are parsed with or without tools: its reasoning is not content
    use = use or fmt == "harmony"

    def deltas() -> Iterator[dict]:
        try:
            if use:
                yield from _as_deltas(_events(req, parser.feed, parser.finish))
            else:
                yield from _as_deltas(_events(req, lambda ids: _plain(parser, ids),
                                              lambda: _plain(parser, None)))
        finally:
            req.cancel()
            eng.close()

    it = deltas()
    if stream:
        return it
    for _ in it:
        pass
    return parser.message()


def channel_chat(model: Any, messages: Sequence[dict], stream: bool, constraint: Any, **kw):
    """Model.chat without tools on a template whose replies are channels (gpt-oss's harmony):
    the text of the reply's content, or a Generation of its pieces; the reasoning is left out
    (Model.chat with tools gives it as reasoning_content)."""
    from .tools import tool_parser

    eng, req = _run(model, model.chat_prompt(messages), constraint, kw)
    parser = tool_parser(model.tokenizer, "harmony")

    def body():
        try:
            events = _events(req, parser.feed, parser.finish)
            yield from (e[1] for e in events if e[0] == "content")
            return req.finish_reason
        finally:
            req.cancel()
            eng.close()

    gen = RequestGeneration(body(), req)
    return gen if stream else "".join(gen)


def _events(req: Any, feed, finish) -> Iterator[tuple]:
    """A parser's events over a request's token ids as they arrive (feed(ids), then finish())."""
    n = 0
    for _ in req:  # wakes as tokens arrive; the parser reads the ids
        got = req.token_ids[n:]
        n += len(got)
        yield from feed(got)
    yield from feed(req.token_ids[n:])
    yield from finish()


def _plain(parser: Any, ids) -> list[tuple]:
    """tool_choice "none": every token is content."""
    if ids is None:
        text = parser._utf8.decode(b"", final=True)
    else:
        text = "".join(parser._utf8.decode(parser.tok.token_to_piece(int(t))) for t in ids)
    if text:
        parser.content += text
        return [("content", text)]
    return []


def _as_deltas(events: list[tuple]) -> Iterator[dict]:
    for e in events:
        if e[0] == "content":
            yield {"content": e[1]}
        elif e[0] == "reasoning":
            yield {"reasoning_content": e[1]}
        else:
            _, index, call = e
            yield {"tool_calls": [{"index": index, **call}]}


__all__ = ["RequestGeneration", "channel_chat", "chat", "generate"]
