"""Tool calls: OpenAI's `tools` and `tool_choice` for Model.chat and the server.

The model's chat template renders the tools (its own words, its own format); the reply's tool
calls are parsed back into OpenAI's `tool_calls` in the format the template asks for, chosen by
reading the template (formats.tool_format):

- "hermes": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2.5 and 3, Hermes,
  Granite 4)
- "qwen_xml": Qwen3.5's `<tool_call><function=NAME><parameter=P>value</parameter></function>
  </tool_call>`
- "llama3": a JSON object `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or not
  (Llama 3.1, 3.2)
- "mistral": `[TOOL_CALLS]` then a JSON array of calls (Mistral Nemo), or `[TOOL_CALLS]NAME
  [ARGS]{...}` per call (Mistral Small 3.2)
- "gemma4": `<|tool_call>call:NAME{key:value,...}<tool_call|>`, Gemma 4's own argument syntax
  (keys bare, strings between `<|"|>` tokens, numbers, booleans, nested {} and [])
- "harmony": gpt-oss's channels. A reply is a run of messages, each `<|channel|>NAME
  [to=functions.F] [<|constrain|>json]<|message|>BODY` ended by `<|end|>`, `<|call|>` or
  `<|return|>`: a message to `functions.F` is a call (its body the JSON arguments), the
  `analysis` channel is the model's reasoning (`reasoning_content`, not content), the rest
  (`final`, `commentary` without a recipient) is content.
- "generic": a template that does not render tools. The tools and the answer's shape (a JSON
  object `{"tool_calls": [{"name": ..., "arguments": {...}}]}`, or plain text) go into a system
  message of fastllm's own, and earlier calls and results into the conversation as text.

`tool_choice` "auto" (the default) lets the model choose and parses what it wrote; "none" leaves
the tools out; "required" or {"type": "function", "function": {"name": ...}} is enforced by a
grammar (fastllm.constrain, grammar.tool_grammar) in the template's format, whose arguments
follow the function's JSON schema, so even a small model returns one valid call.

formats.py: which format, the tools and the conversation checked and prepared for the template;
grammar.py: the grammar of a forced call; parse.py: the calls read back from the reply as its
tokens arrive (harmony.py for gpt-oss's channels, gemma4.py for Gemma 4's argument syntax).
"""

from .formats import FORMATS, call_id, check_tools, prepare_messages, tool_format
from .grammar import strict_schema, tool_grammar
from .harmony import HarmonyParser
from .parse import ToolParser, parse_calls


def tool_parser(tok, fmt: str, tools: list[dict] | None = None) -> ToolParser | HarmonyParser:
    """The streaming parser of a format: a ToolParser, or for "harmony" a HarmonyParser (both
    have feed, finish, calls, content and message)."""
    if fmt == "harmony":
        return HarmonyParser(tok, tools)
    return ToolParser(tok, fmt, tools)


__all__ = ["FORMATS", "HarmonyParser", "ToolParser", "call_id", "check_tools", "parse_calls",
           "prepare_messages", "strict_schema", "tool_format", "tool_grammar", "tool_parser"]
