"""OpenAI's request and response shapes: a request body checked field by field into the
engine's arguments, and the JSON objects of replies, stream chunks and errors.

Checks are written out by hand rather than generated from a schema library so that each bad
field gives OpenAI's error object (400, `param` naming the field) in one place, and so that a
stream chunk costs one small dict and one json.dumps.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

# OpenAI's limits where the engine has none of its own
MAX_N = 128
MAX_TOP_LOGPROBS = 20
BIAS_RANGE = 100.0

# Fields a client may send that change nothing here (accepted so that existing clients work).
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier"}


class APIError(Exception):
    """An error reply in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(None, f"the request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {_kind(body)}",
                  "invalid_json")
    return body


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


# -- typed field readers: each returns the value (or the default) or raises a 400 naming it ---

def _number(body: dict, name: str, default: float | None, lo: float, hi: float,
            lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"'{name}' must be a number, got {_kind(v)} {json.dumps(v)}",
                  "invalid_type")
    if (v <= lo if lo_open else v < lo) or v > hi:
        lo_s = f"{'>' if lo_open else '>='} {lo:g}"
        rng = lo_s if hi == math.inf else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad(name, f"'{name}' must be {rng}, got {v}", "invalid_value")
    return float(v)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer, got {_kind(v)} {json.dumps(v)}",
                  "invalid_type")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise bad(name, f"'{name}' must be an integer {rng}, got {v}", "invalid_value")
    return v


def _boolean(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be a boolean, got {_kind(v)} {json.dumps(v)}",
                  "invalid_type")
    return v


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s]
    raise bad("stop", f"'stop' must be a string or an array of strings, got {_kind(v)}",
              "invalid_type")


def _logit_bias(body: dict, n_vocab: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("logit_bias", f"'logit_bias' must be an object mapping token ids to biases, "
                                f"got {_kind(v)}", "invalid_type")
    out = {}
    for k, b in v.items():
        try:
            tid = int(k)
        except ValueError:
            raise bad("logit_bias", f"'logit_bias' keys must be token ids, got {k!r}",
                      "invalid_value") from None
        if not 0 <= tid < n_vocab:
            raise bad("logit_bias", f"'logit_bias' token id {tid} is not in the vocabulary "
                                    f"(0..{n_vocab - 1})", "invalid_value")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) \
                or abs(b) > BIAS_RANGE:
            raise bad("logit_bias", f"'logit_bias' values must be numbers in [-100, 100], got "
                                    f"{json.dumps(b)} for token {tid}", "invalid_value")
        out[tid] = float(b)
    return out


def _seed(body: dict) -> int | None:
    v = body.get("seed")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad("seed", f"'seed' must be an integer, got {_kind(v)} {json.dumps(v)}",
                  "invalid_type")
    return v % (1 << 64)  # OpenAI takes any 64-bit integer; NumPy's generators take >= 0


@dataclass
class Params:
    """A checked request: what to run (one prompt per entry of `prompts`, each `n` times) and
    how to reply."""

    prompts: list[Any] = field(default_factory=list)  # text, token ids, or chat messages
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # None: none; else how many alternatives
    echo: bool = False
    tools: list | None = None  # chat: OpenAI's tools, checked (fastllm.tools.check_tools)
    tool_choice: Any = None
    sampling: dict = field(default_factory=dict)  # Engine.submit's other arguments


COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
          "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
          # fastllm's (llama.cpp's) own sampling arguments
          "top_k", "min_p", "repeat_penalty", "repeat_last_n"} | IGNORED
CHAT = COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                 "tool_choice", "functions", "function_call", "response_format"}
COMPLETION = COMMON | {"prompt", "logprobs", "echo", "suffix", "best_of"}
ROLES = ("system", "developer", "user", "assistant", "tool")


def _common(body: dict, allowed: set[str], n_vocab: int) -> Params:
    for k in body:
        if k not in allowed:
            raise bad(k, f"Unrecognized request argument supplied: {k}", "unknown_parameter")
    p = Params()
    p.n = _integer(body, "n", 1, 1, MAX_N)
    p.stream = _boolean(body, "stream", False)
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict) or any(k not in ("include_usage", "continuous_usage_stats",
                                                     "include_obfuscation") for k in so):
            raise bad("stream_options", "'stream_options' must be an object with "
                                        "'include_usage'", "invalid_type")
        p.include_usage = _boolean(so, "include_usage", False)
    p.seed = _seed(body)
    s = p.sampling
    s["temperature"] = _number(body, "temperature", 0.8, 0.0, math.inf)
    s["top_p"] = _number(body, "top_p", 0.95, 0.0, 1.0)
    s["min_p"] = _number(body, "min_p", 0.05, 0.0, 1.0)
    s["top_k"] = _integer(body, "top_k", 40, 0)
    s["repeat_penalty"] = _number(body, "repeat_penalty", 1.0, 0.0, math.inf, lo_open=True)
    s["repeat_last_n"] = _integer(body, "repeat_last_n", 64, 0)
    s["presence_penalty"] = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    s["frequency_penalty"] = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    s["logit_bias"] = _logit_bias(body, n_vocab)
    s["stop"] = _stops(body)
    return p


def _max_tokens(body: dict, names: tuple[str, ...]) -> int | None:
    got = [(k, _integer(body, k, None, 0)) for k in names if body.get(k) is not None]
    return got[0][1] if got else None


def chat_params(body: dict, n_vocab: int) -> Params:
    """A /v1/chat/completions body, checked; prompts holds the one conversation."""
    p = _common(body, CHAT, n_vocab)
    p.max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    if _boolean(body, "logprobs", False):
        p.logprobs = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true", "invalid_value")
    from .. import tools as T
    from ..errors import ArgumentError

    if body.get("functions") or body.get("function_call") not in (None, "none", "auto"):
        raise bad("functions", "the deprecated 'functions' and 'function_call' are not "
                               "supported: use 'tools' and 'tool_choice'",
                  "unsupported_parameter")
    if body.get("tools"):
        try:
            p.tools, _ = T.check_tools(body["tools"], body.get("tool_choice"))
        except ArgumentError as e:
            name = "tool_choice" if "tool_choice" in str(e) else "tools"
            raise bad(name, str(e), "invalid_value") from None
        p.tool_choice = body.get("tool_choice")
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise bad("tool_choice", "'tool_choice' needs 'tools'", "invalid_value")
    schema = response_format(body.get("response_format"))
    if schema is not None:
        p.sampling["json_schema"] = schema
    p.prompts = [messages(body.get("messages"))]
    return p


def response_format(rf: Any) -> dict | None:
    """OpenAI's response_format as the JSON schema the output must follow (None: free text):
    {"type": "json_object"} any JSON object; {"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}} its schema (strict: objects closed to other properties)."""
    from ..tools import strict_schema

    if rf is None or rf == {"type": "text"}:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise bad("response_format", "'response_format.json_schema' must be an object "
                      "with 'name' and 'schema'", "invalid_type")
        schema = js.get("schema", {})
        return strict_schema(schema) if js.get("strict") else schema
    raise bad("response_format", "'response_format.type' must be 'text', 'json_object' or "
                                 f"'json_schema', got {json.dumps(kind)}", "invalid_value")


def messages(v: Any) -> list[dict]:
    """The conversation as the chat template takes it: roles checked, text parts joined."""
    if not isinstance(v, list) or not v:
        raise bad("messages", "'messages' must be a non-empty array of messages",
                  "invalid_type" if not isinstance(v, list) else "invalid_value")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"'{where}' must be an object, got {_kind(m)}", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}, got "
                                       f"{json.dumps(role)}", "invalid_value")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" \
                        or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}]", "only text content parts "
                              "({\"type\": \"text\", \"text\": ...}) are supported",
                              "unsupported_parameter")
                texts.append(part["text"])
            content = "\n".join(texts)
        elif content is None and role == "assistant":
            content = ""
        elif not isinstance(content, str):
            raise bad(f"{where}.content", f"'{where}.content' must be a string or an array of "
                                          f"text parts, got {_kind(content)}", "invalid_type")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        # tool calls and their results go back to the template (fastllm.tools)
        if role == "assistant" and isinstance(m.get("tool_calls"), list):
            msg["tool_calls"] = m["tool_calls"]
        if role == "tool" and isinstance(m.get("tool_call_id"), str):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def completion_params(body: dict, n_vocab: int) -> Params:
    """A /v1/completions body, checked; prompts holds each prompt (text or token ids)."""
    p = _common(body, COMPLETION, n_vocab)
    p.max_tokens = _max_tokens(body, ("max_tokens",))
    if body.get("max_tokens") is None:
        p.max_tokens = 16  # OpenAI's default for completions
    p.logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    p.echo = _boolean(body, "echo", False)
    if p.echo and p.logprobs is not None:
        raise bad("echo", "'echo' with 'logprobs' (the prompt's log-probabilities) is not "
                          "supported", "unsupported_parameter")
    if body.get("suffix") not in (None, ""):
        raise bad("suffix", "'suffix' (insertion) is not supported", "unsupported_parameter")
    if _integer(body, "best_of", 1, 1, MAX_N) != 1:
        raise bad("best_of", "'best_of' other than 1 is not supported", "unsupported_parameter")
    p.prompts = prompts(body.get("prompt"), n_vocab)
    return p


def prompts(v: Any, n_vocab: int) -> list[str | list[int]]:
    """OpenAI's four prompt forms: a string, token ids, or an array of either."""
    def ids(x: list, where: str) -> list[int]:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in x):
            raise bad(where, f"'{where}' must hold token ids (integers)", "invalid_type")
        for t in x:
            if not 0 <= t < n_vocab:
                raise bad(where, f"'{where}' has token id {t}, not in the vocabulary "
                                 f"(0..{n_vocab - 1})", "invalid_value")
        if not x:
            raise bad(where, f"'{where}' is an empty array of token ids", "invalid_value")
        return list(x)

    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(x, str) for x in v):
            return list(v)
        if all(isinstance(x, list) for x in v):
            return [ids(x, f"prompt[{i}]") for i, x in enumerate(v)]
        return [ids(v, "prompt")]
    raise bad("prompt", f"'prompt' must be a string, an array of strings, an array of token "
                        f"ids or an array of such arrays, got {_kind(v)}",
              "invalid_type" if not isinstance(v, list) else "invalid_value")


# -- replies ----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


# "incomplete": a constrained output (response_format, a forced tool call) cut short
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop",
          "incomplete": "length"}


def usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def sse(obj: Any) -> bytes:
    """One server-sent event carrying obj as JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() \
        + b"\n\n"


DONE = b"data: [DONE]\n\n"
