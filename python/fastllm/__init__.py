"""fastllm: local LLM inference on GGUF files, native Metal on Apple Silicon, WebGPU elsewhere.

    from fastllm import Model
    print(Model.load("model.gguf").generate("Hello", max_tokens=64))
"""

from .errors import (
    ArgumentError,
    BackendError,
    ContextOverflowError,
    FastLLMError,
    GGUFError,
    PullError,
    TemplateError,
    TokenizerError,
    UnsupportedError,
)


def __getattr__(name: str):
    # Model and Tokenizer load on first use: `import fastllm.kargs` and the CLI's --help stay fast
    if name == "Model":
        from .model import Model

        return Model
    if name in ("Engine", "Request"):
        from . import engine

        return getattr(engine, name)
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    if name == "StreamDecoder":
        from .tokenizer import StreamDecoder

        return StreamDecoder
    raise AttributeError(f"module 'fastllm' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dir() and help(fastllm) list the lazy names too (pydoc finds classes through dir())
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BackendError",
    "ContextOverflowError",
    "Engine",
    "FastLLMError",
    "GGUFError",
    "Model",
    "PullError",
    "Request",
    "StreamDecoder",
    "TemplateError",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedError",
    "__version__",
]
