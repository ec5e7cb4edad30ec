"""Chat templates from GGUF metadata (`tokenizer.chat_template`), rendered with jinja2.

Templates come from model files, so they are treated as untrusted code: they run in jinja2's
ImmutableSandboxedEnvironment, and before anything runs the template is parsed and refused if it
names an attribute or key starting with "_" (the way out of a sandbox goes through `__class__`,
`__globals__`, `__subclasses__`, ...) or tries to load other templates (include, import,
extends). Attribute names built at run time are caught by the sandbox and refused as well.

The rendering context is the one Hugging Face's apply_chat_template gives: `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, the helpers `raise_exception` and
`strftime_now`, a `tojson` that keeps non-ASCII text as it is, `trim_blocks`/`lstrip_blocks` and
the loop controls. Extra keyword arguments of render() (tools, documents, enable_thinking, ...)
are passed on. As in llama.cpp, when the tokenizer adds BOS (EOS) by itself, a BOS (EOS) text the
template writes at the start (end) is removed, so that encoding the result with
`tok.encode(text, add_bos=True, special=True)` gives exactly one of each.

Without a template in the file, ChatML is used (llama.cpp's fallback too):
`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .errors import TemplateError

__all__ = ["CHATML", "ChatTemplate"]

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_MAX_REPEAT = 1 << 24  # longest string or list a template may build with `*`
_MAX_EXPONENT = 4096


def _tojson(value: Any, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators else None, sort_keys=sort_keys)


def _raise_exception(message: str = "") -> None:
    raise TemplateError(f"chat template refused the input: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env():
    """The sandboxed environment; built on first use so that importing fastllm stays light."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: marks the assistant's part for training
        masks in Hugging Face; renders its body unchanged."""

        tags = frozenset(["generation"])

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj, attribute):
            # refuse at once instead of handing back an Undefined that renders as ""
            raise SecurityError(f"access to attribute {attribute!r} of "
                                f"{type(obj).__name__!r} object is unsafe")

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and (
                            len(seq) * times > _MAX_REPEAT):
                        raise SecurityError("template builds a sequence that is too long")
                return left * right
            if isinstance(right, int) and abs(right) > _MAX_EXPONENT:
                raise SecurityError("template computes a power that is too large")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation],
                  undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env, SecurityError


_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        _ENV = _make_env()
    return _ENV


def _check_static(tree) -> None:
    """Refuse templates that reach for private attributes or other templates."""
    from jinja2 import nodes

    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateError(f"chat template line {node.lineno}: loading other templates "
                            f"({type(node).__name__.lower()}) is not allowed")
    for node in tree.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            raise TemplateError(f"chat template line {node.lineno}: access to attribute "
                                f"{node.attr!r} is not allowed")
    for node in tree.find_all(nodes.Getitem):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and (
                node.arg.value.startswith("_")):
            raise TemplateError(f"chat template line {node.lineno}: access to key "
                                f"{node.arg.value!r} is not allowed")
    for node in tree.find_all(nodes.Filter):
        if node.name == "attr" and any(
                isinstance(a, nodes.Const) and isinstance(a.value, str) and a.value.startswith("_")
                for a in node.args):
            raise TemplateError(f"chat template line {node.lineno}: access to attribute "
                                f"{node.args[0].value!r} is not allowed")


class ChatTemplate:
    """A compiled, checked chat template."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 strip_bos: bool = False, strip_eos: bool = False, name: str = ""):
        if not isinstance(source, str):
            raise TemplateError(f"chat template must be a string, not {type(source).__name__}")
        import jinja2

        env, self._security_error = _env()
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._strip_bos = strip_bos and bool(bos_token)
        self._strip_eos = strip_eos and bool(eos_token)
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template{self._where()} has a syntax error at line "
                                f"{e.lineno}: {e.message}") from None
        _check_static(tree)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template{self._where()} does not compile: {e}") from None

    def _where(self) -> str:
        return f" of {self.name}" if self.name else ""

    @classmethod
    def from_metadata(cls, md: dict[str, Any], tok=None) -> ChatTemplate:
        """The file's `tokenizer.chat_template`, or ChatML when it has none. With a tokenizer,
        bos_token/eos_token are its BOS/EOS texts."""
        source = md.get("tokenizer.chat_template")
        if source is None:
            source = CHATML
        bos = eos = ""
        strip_bos = strip_eos = False
        if tok is not None:
            if tok.bos_id is not None:
                bos = tok.token_text(tok.bos_id)
            if tok.eos_id is not None:
                eos = tok.token_text(tok.eos_id)
            strip_bos, strip_eos = tok.add_bos, tok.add_eos
        name = getattr(tok, "source", "") or str(md.get("general.name", ""))
        return cls(source, bos, eos, strip_bos, strip_eos, name=name)

    @property
    def is_chatml_fallback(self) -> bool:
        return self.source == CHATML

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The prompt text for `messages` (dicts with "role" and "content")."""
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) for m in messages):
            raise TemplateError("messages must be a list of dicts with 'role' and 'content'")
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **extra,
                   "messages": list(messages), "add_generation_prompt": add_generation_prompt}
        try:
            text = self._template.render(context)
        except TemplateError:
            raise
        except self._security_error as e:
            raise TemplateError(f"chat template{self._where()} tried something unsafe: "
                                f"{e}") from None
        except Exception as e:  # noqa: BLE001 - whatever the template's own code raised
            raise TemplateError(f"chat template{self._where()} failed to render: "
                                f"{type(e).__name__}: {e}") from None
        if self._strip_bos and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        if self._strip_eos and text.endswith(self.eos_token):
            text = text[:-len(self.eos_token)]
        return text
