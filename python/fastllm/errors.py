"""The one exception hierarchy of fastllm: every error a user can cause is a FastLLMError."""

from __future__ import annotations


class FastLLMError(Exception):
    """Base class of every error fastllm raises on purpose."""


class GGUFError(FastLLMError, ValueError):
    """A model file that cannot be read: missing, truncated, malformed, or inconsistent."""


class UnsupportedError(FastLLMError, NotImplementedError):
    """A valid file that asks for something fastllm does not implement (type, architecture)."""


class TokenizerError(FastLLMError, ValueError):
    """Tokenizer metadata that is missing or malformed."""


class ArgumentError(FastLLMError, ValueError):
    """An argument outside its range (a sampling setting, max_tokens, n_ctx), named with it."""


class ContextOverflowError(FastLLMError, ValueError):
    """More tokens than the context (n_ctx) holds."""


class BackendError(FastLLMError, RuntimeError):
    """A backend that cannot be used: no GPU adapter, missing metallib, device lost, out of memory."""


class TemplateError(FastLLMError, ValueError):
    """A chat template that fails to render or tries something the sandbox forbids."""


class PullError(FastLLMError, RuntimeError):
    """A model that cannot be fetched or fails its checksum."""
