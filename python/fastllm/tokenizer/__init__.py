"""Tokenizers built from GGUF metadata that give the same token ids as llama.cpp, and a
streaming detokenizer.

core.py: `Tokenizer` and `StreamDecoder`; spm.py, bpe.py (with pre.py's pre-tokenizers and
unicode.py's tables) and rwkv.py: the three vocabulary kinds; vocab.py: what llama.cpp decides
from the metadata (special tokens, control tokens, end of generation, token rendering).
"""

from .core import StreamDecoder, Tokenizer

__all__ = ["StreamDecoder", "Tokenizer"]
