"""Models whose vocabulary fastllm cannot turn into a tokenizer: they run on token ids.

llama.cpp loads such files too: its vocabulary type "none" (`tokenizer.ggml.model` "none" or
"no_vocab") and the placeholder "test" vocabulary of its own model saver (the random models of
../shared/archs) evaluate token ids and have no text. `for_model` gives the usual Tokenizer where
fastllm builds one, and an IdsOnlyTokenizer for every other tokenizer model: loading, logits and
generation from ids work; turning text into ids or ids into text is a TokenizerError that names
the tokenizer model and the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TokenizerError
from .core import Tokenizer

# the tokenizer models core.Tokenizer builds (SPM, BPE, RWKV); any other value of
# tokenizer.ggml.model gives a model of token ids only
BUILT = ("llama", "gpt2", "rwkv")


def for_model(md: dict[str, Any], source: str = "") -> Tokenizer | IdsOnlyTokenizer:
    """The tokenizer of a model file: a Tokenizer (whose metadata errors are raised as ever),
    or, for a tokenizer model fastllm does not build, an IdsOnlyTokenizer."""
    model = md.get("tokenizer.ggml.model")
    if isinstance(model, str) and model not in BUILT:
        return IdsOnlyTokenizer(md, source)
    return Tokenizer.from_metadata(md, source)


class IdsOnlyTokenizer:
    """What Model needs of a tokenizer when there is none: the vocabulary's size and its end of
    generation ids; every text operation raises naming the tokenizer model."""

    def __init__(self, md: dict[str, Any], source: str = ""):
        self.model: str = md["tokenizer.ggml.model"]
        self.source = source
        tokens = md.get("tokenizer.ggml.tokens")
        # llama.cpp's type "none" takes its size from vocab_size; others list their tokens
        self.n_vocab = len(tokens) if tokens is not None else 0
        self.pre = None
        self.bos_id: int | None = None
        self.eos_id: int | None = None
        self.add_bos = self.add_eos = False
        # end of generation: the ids the metadata names, where they are ids of the vocabulary
        eog = (md.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom"))
        self.eog_ids: frozenset[int] = frozenset(
            int(t) for t in eog if isinstance(t, int) and not isinstance(t, bool)
            and 0 <= t < max(self.n_vocab, 1))

    def _fail(self, what: str) -> TokenizerError:
        where = self.source or "<metadata>"
        return TokenizerError(f"{where}: tokenizer.ggml.model {self.model!r} has no tokenizer in "
                              f"fastllm (it builds {', '.join(map(repr, BUILT))}), so it cannot "
                              f"{what}: use token ids")

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        raise self._fail("turn text into tokens")

    def decode(self, ids: Sequence[int]) -> str:
        raise self._fail("turn tokens into text")

    def token_to_piece(self, token_id: int) -> bytes:
        raise self._fail("turn tokens into text")

    def token_text(self, token_id: int) -> str:
        raise self._fail("spell a token")

    def token_id(self, text: str) -> int | None:
        raise self._fail("look up a token's text")

    def is_control(self, token_id: int) -> bool:
        return False

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def __repr__(self) -> str:
        return f"IdsOnlyTokenizer(model={self.model!r}, n_vocab={self.n_vocab}, " \
               f"source={self.source!r})"
