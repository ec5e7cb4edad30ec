"""The RWKV "world" tokenizer (`tokenizer.ggml.model = "rwkv"`): greedy longest match of the
input bytes over a trie of the vocabulary's byte strings, as llama.cpp's llm_tokenizer_rwkv does
(src/llama-vocab.cpp). There are no merges and no scores: at each position the longest token
that the bytes start with wins.

GGUF stores RWKV tokens as text in an escaped form: llama.cpp's converter writes each byte
string as Python's `repr(token)[2:-1]` (conversion/base.py, _set_vocab_rwkv_world), and
llama_unescape_rwkv_token reads `\\t`, `\\n`, `\\r` and `\\xHH` back, and a backslash before any
other character as that character (`\\\\`, `\\'`).

`RwkvTokenizerCore` is the byte-level engine; the public `Tokenizer` (core.py) wraps it
with special-token handling and decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TokenizerError

__all__ = ["RwkvTokenizerCore", "escape_token", "unescape_token"]

# tokenizer.ggml.token_type values (gguf's TokenType) that raw text never matches: control
# tokens (the world vocabulary's "<s>") and unused padding ("[PAD65530]"). llama.cpp puts them in
# the trie too, so the text "<s>" would become BOS there; here special tokens are the public
# Tokenizer's business (encode(..., special=True)).
_CONTROL, _UNUSED = 3, 5
_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D}
_HEX = frozenset("0123456789abcdefABCDEF")


def escape_token(data: bytes) -> str:
    """The GGUF text of a token's bytes, as llama.cpp's converter writes it."""
    return repr(bytes(data))[2:-1]


def unescape_token(text: str) -> bytes:
    """The bytes of a GGUF token text (llama_unescape_rwkv_token). Hex digits may be either
    case (llama.cpp reads lower case, which is what Python's repr writes)."""
    out = bytearray()
    it = iter(text)
    for c in it:
        if c != "\\":
            out += c.encode("utf-8")
            continue
        e = next(it, None)
        if e is None:
            break  # a trailing lone backslash: llama.cpp drops it too
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
        elif e == "x":
            digits = "".join(next(it, "") for _ in range(2))
            if len(digits) != 2 or not all(d in _HEX for d in digits):
                raise TokenizerError(f"bad escape \\x{digits} in RWKV token {text!r}")
            out.append(int(digits, 16))
        else:
            out += e.encode("utf-8")
    return bytes(out)


class RwkvTokenizerCore:
    """Greedy longest-match byte tokenizer over `tokens` (GGUF escaped texts, id = index).

    `token_types` (tokenizer.ggml.token_type) keeps control and unused tokens out of the trie;
    `unk_id` is emitted for a byte that starts no token (llama.cpp emits its unknown id, which
    RWKV vocabularies leave unset); without one such a byte raises TokenizerError."""

    def __init__(self, tokens: Sequence[str], token_types: Sequence[int] | None = None,
                 unk_id: int | None = None):
        n = len(tokens)
        if token_types is not None and len(token_types) != n:
            raise TokenizerError(f"{len(token_types)} token types for {n} RWKV tokens")
        if unk_id is not None and not 0 <= unk_id < n:
            raise TokenizerError(f"unknown token id {unk_id} is not in the vocabulary (0..{n - 1})")
        self.n_vocab = n
        self.unk_id = unk_id
        self._pieces = [unescape_token(t) for t in tokens]
        # trie as parallel lists: children (byte -> node) and the token id ending at a node
        self._next: list[dict[int, int]] = [{}]
        self._id: list[int] = [-1]
        for tid, piece in enumerate(self._pieces):
            if not piece or (token_types is not None and token_types[tid] in (_CONTROL, _UNUSED)):
                continue
            node = 0
            for byte in piece:
                child = self._next[node].get(byte)
                if child is None:
                    child = len(self._id)
                    self._next[node][byte] = child
                    self._next.append({})
                    self._id.append(-1)
                node = child
            self._id[node] = tid  # a duplicate byte string: the later id wins, as in llama.cpp

    @classmethod
    def from_metadata(cls, md: dict[str, Any]) -> RwkvTokenizerCore:
        """From GGUF metadata with tokenizer.ggml.model = "rwkv"."""
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError("tokenizer.ggml.tokens is missing or not a list of strings")
        types = md.get("tokenizer.ggml.token_type")
        unk = md.get("tokenizer.ggml.unknown_token_id")
        return cls(tokens, None if types is None else [int(t) for t in types],
                   None if unk is None else int(unk))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of data: at each position the longest vocabulary entry it starts with."""
        out: list[int] = []
        nxt, ids = self._next, self._id
        pos, n = 0, len(data)
        while pos < n:
            node, best, end, i = 0, -1, pos + 1, pos
            while i < n:
                child = nxt[node].get(data[i])
                if child is None:
                    break
                node, i = child, i + 1
                if ids[node] >= 0:
                    best, end = ids[node], i
            if best < 0:
                if self.unk_id is None:
                    raise TokenizerError(f"byte 0x{data[pos]:02x} at offset {pos} starts no token "
                                         f"of the RWKV vocabulary, which has no unknown token")
                best = self.unk_id
            out.append(best)
            pos = end
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of text's UTF-8 bytes."""
        return self.encode_bytes(text.encode("utf-8"))

    def piece(self, token_id: int) -> bytes:
        """The bytes of a token (its unescaped text)."""
        if not 0 <= token_id < self.n_vocab:
            raise TokenizerError(f"token id {token_id!r} is not in this vocabulary "
                                 f"(0..{self.n_vocab - 1})")
        return self._pieces[token_id]

    def decode(self, ids: Sequence[int]) -> bytes:
        """The bytes of ids, concatenated."""
        return b"".join(self.piece(int(i)) for i in ids)
