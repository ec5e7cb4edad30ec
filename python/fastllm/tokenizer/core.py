"""Tokenizers built from GGUF metadata that give the same token ids as llama.cpp, and a
streaming detokenizer.

Three vocabulary kinds are supported: SentencePiece-style (`tokenizer.ggml.model = "llama"`,
spm.py), byte-level BPE (`"gpt2"`, bpe.py with the pre-tokenizers of
pre.py) and RWKV's greedy byte matcher (`"rwkv"`, rwkv.py). What llama.cpp
decides from the metadata (vocab.py) is decided the same way here: default special
tokens, which tokens are control tokens, which end generation, where special tokens are cut out
of the text, and how each token is rendered back to bytes.

Decoding renders each token's piece and concatenates them; it keeps the leading space of an SPM
text (" Once") and, unlike llama.cpp's `detokenize`, applies no clean-up of spaces before
punctuation, so that streamed pieces always add up to the decoded text.
"""

from __future__ import annotations

import codecs
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import GGUFError, TokenizerError
from .bpe import BPE, byte_decode
from .pre import PRE_TOKENIZERS
from .rwkv import RwkvTokenizerCore
from .spm import SPACE, SPM
from .vocab import (
    BYTE,
    C_SPACES,
    CONTROL,
    LSTRIP,
    NORMAL,
    OLD_FIM_KEYS,
    RSTRIP,
    SPECIAL_ID_KEYS,
    TYPE_ATTR,
    UNDEFINED,
    UNKNOWN,
    USER_DEFINED,
    eog_ids,
    find_markers,
    is_int,
    read_numbers,
    read_tokens,
    set_strip_flags,
)

__all__ = ["StreamDecoder", "Tokenizer"]


class Tokenizer:
    """A GGUF vocabulary: `encode` text to ids and `decode` ids to text as llama.cpp does."""

    def __init__(self, md: dict[str, Any], source: str = ""):
        self.source = source
        where = source or "<metadata>"

        def fail(key: str, what: str) -> TokenizerError:
            return TokenizerError(f"{where}: {key} {what}")

        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise fail("tokenizer.ggml.model", "is missing")
        if model not in ("llama", "gpt2", "rwkv"):
            raise fail("tokenizer.ggml.model", f"is {model!r}, which is not supported "
                                               "(supported: 'llama', 'gpt2', 'rwkv')")
        self.model: str = model

        tokens = read_tokens(md, fail)
        n = len(tokens)
        self.n_vocab = n
        self._tokens = tokens
        ids: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in ids:
                raise fail("tokenizer.ggml.tokens", f"lists {t!r} twice (ids {ids[t]} and {i})")
            ids[t] = i
        self._ids = ids

        scores = read_numbers(md, "tokenizer.ggml.scores", n, np.float32, fail)
        types = read_numbers(md, "tokenizer.ggml.token_type", n, np.int64, fail)
        if types is None:
            attrs = [NORMAL] * n
        else:
            attrs = [TYPE_ATTR.get(t, UNDEFINED) for t in types.tolist()]
        self._attrs = attrs

        # defaults by vocabulary kind, then the pre-tokenizer's, then the metadata's
        pre = None
        if model == "llama":
            special = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                       "tokenizer.ggml.unknown_token_id": 0}
            add_bos, add_space_prefix = True, True
        elif model == "rwkv":
            special = {}
            add_bos, add_space_prefix = False, False
        else:
            special = {"tokenizer.ggml.bos_token_id": 11, "tokenizer.ggml.eos_token_id": 11}
            add_bos, add_space_prefix = False, False
            pre_name = md.get("tokenizer.ggml.pre")
            if pre_name is None:
                pre_name = "default"
                warnings.warn(f"{where}: tokenizer.ggml.pre is missing; using the 'default' "
                              "pre-tokenizer (tokenization may differ from the model's)",
                              stacklevel=3)
            pre = PRE_TOKENIZERS.get(pre_name)
            if pre is None:
                warnings.warn(f"{where}: tokenizer.ggml.pre {pre_name!r} is not supported; using "
                              "the 'default' pre-tokenizer instead (tokenization may differ "
                              "from the model's)", stacklevel=3)
                pre = PRE_TOKENIZERS["default"]
            add_bos = pre.add_bos
            if pre.no_bos:
                special.pop("tokenizer.ggml.bos_token_id")
        self.pre = pre.name if pre else None

        for key, tid in list(special.items()):
            if tid >= n:
                del special[key]
        for key in SPECIAL_ID_KEYS + list(OLD_FIM_KEYS):
            v = md.get(key)
            if v is None:
                continue
            key = OLD_FIM_KEYS.get(key, key)
            if is_int(v) and 0 <= int(v) < n:
                special[key] = int(v)
            elif key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
                raise fail(key, f"is {v!r}, not a token id of this vocabulary (0..{n - 1})")
            elif not (is_int(v) and int(v) in (-1, 0xFFFFFFFF)):  # "none" in some converters
                warnings.warn(f"{where}: ignoring {key} = {v!r} (not a token id of this "
                              "vocabulary)", stacklevel=3)

        flags = {}
        for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
            v = md.get("tokenizer.ggml." + key)
            if v is not None:
                if not isinstance(v, (bool, np.bool_, int, np.integer)):
                    raise fail("tokenizer.ggml." + key, f"is {v!r}, not a boolean")
                flags[key] = bool(v)
        add_bos = flags.get("add_bos_token", add_bos)
        add_eos = flags.get("add_eos_token", False)
        self.add_space_prefix: bool = flags.get("add_space_prefix", add_space_prefix)

        find_markers(tokens, ids, attrs, special)
        self.eog_ids: frozenset[int] = eog_ids(tokens, ids, attrs, special)

        self.bos_id: int | None = special.get("tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = special.get("tokenizer.ggml.eos_token_id")
        self.eot_id: int | None = special.get("tokenizer.ggml.eot_token_id")
        self.unk_id: int | None = special.get("tokenizer.ggml.unknown_token_id")
        self.pad_id: int | None = special.get("tokenizer.ggml.padding_token_id")
        self.add_bos: bool = add_bos and self.bos_id is not None
        self.add_eos: bool = add_eos and self.eos_id is not None

        # tokens cut out of the text before the model's own algorithm runs, longest first
        specials = [i for i, a in enumerate(attrs) if a & (CONTROL | USER_DEFINED | UNKNOWN)]
        specials.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        set_strip_flags(md, ids, attrs, specials)
        self._specials = [(tokens[i], i, attrs[i]) for i in specials]

        self._spm: SPM | None = None
        self._bpe: BPE | None = None
        self._rwkv: RwkvTokenizerCore | None = None
        if model == "llama":
            score_list = scores.tolist() if scores is not None else [0.0] * n
            self._spm = SPM(tokens, ids, score_list, self.unk_id)
            self._encode_text = self._spm.encode
        elif model == "rwkv":
            rwkv = RwkvTokenizerCore(tokens, None if types is None else types.tolist(),
                                     self.unk_id)
            self._rwkv = rwkv
            self._encode_text = lambda text, out: out.extend(rwkv.encode(text))
        else:
            merges = md.get("tokenizer.ggml.merges")
            if merges is None:
                raise fail("tokenizer.ggml.merges", "is missing (BPE vocabularies need it)")
            if not isinstance(merges, Sequence) or isinstance(merges, (str, bytes)) or not all(
                    isinstance(m, str) for m in merges):
                raise fail("tokenizer.ggml.merges", "must be an array of strings")
            self._bpe = BPE(ids, list(merges), pre)  # type: ignore[arg-type]
            self._encode_text = self._bpe.encode
        self._pieces: list[bytes | None] = [None] * n

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Tokenizer of a GGUF file (a full model or a vocab-only file)."""
        from ..gguf import open_gguf

        try:
            gguf = open_gguf(path, check_types=False)
        except GGUFError as e:
            # an unreadable tokenizer key is a tokenizer problem for the caller
            if "'tokenizer." in str(e):
                raise TokenizerError(str(e)) from e
            raise
        return cls.from_metadata(gguf.metadata, str(path))

    @classmethod
    def from_metadata(cls, md: dict[str, Any], source: str = "") -> Tokenizer:
        """Tokenizer from GGUF metadata; `source` (the file) is named in error messages."""
        return cls(md, source)

    # ----------------------------------------------------------------------------------------
    # encoding

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: add the BOS/EOS tokens the metadata asks for (llama.cpp's add_special).
        special: match control tokens written in the text (user-defined tokens always match).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        out: list[int] = []
        if add_bos and self.add_bos:
            out.append(self.bos_id)  # type: ignore[arg-type]
        fragments = self._partition(text, special) if text else []
        if self._spm is not None:
            prev_special = True  # the text and whatever follows a special token get the prefix
            for f in fragments:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    f = " " + f
                self._spm.encode(f.replace(" ", SPACE), out)
                prev_special = False
        else:
            encode_text = self._encode_text
            for f in fragments:
                if isinstance(f, int):
                    out.append(f)
                else:
                    encode_text(f, out)
        if add_bos and self.add_eos:
            out.append(self.eos_id)  # type: ignore[arg-type]
        return out

    def _partition(self, text: str, special: bool) -> list[str | int]:
        """The text as plain stretches and special-token ids: each special token in turn, longest
        first, is cut out of every stretch left so far (llama.cpp's order)."""
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        # Vocabularies list hundreds of "[PAD123]"-like tokens: one search for a shared prefix
        # rules out a whole family at once.
        prefix_found: dict[str, bool] = {}
        for tok_text, tid, attr in self._specials:
            if not special and attr & (CONTROL | UNKNOWN):
                continue
            prefix = tok_text[:4]
            found = prefix_found.get(prefix)
            if found is None:
                found = prefix_found[prefix] = prefix in text
            if not found or (len(tok_text) > 4 and tok_text not in text):
                continue
            n = len(tok_text)
            new: list[tuple[int, int] | int] = []
            for f in frags:
                if isinstance(f, int):
                    new.append(f)
                    continue
                pos, end = f
                while True:
                    at = text.find(tok_text, pos, end)
                    if at < 0:
                        break
                    left = at
                    if attr & LSTRIP:
                        while left > pos and text[left - 1] in C_SPACES:
                            left -= 1
                    if left > pos:
                        new.append((pos, left))
                    new.append(tid)
                    pos = at + n
                    if attr & RSTRIP:
                        while pos < end and text[pos] in C_SPACES:
                            pos += 1
                if pos < end:
                    new.append((pos, end))
            frags = new
        return [f if isinstance(f, int) else text[f[0]:f[1]] for f in frags]

    # ----------------------------------------------------------------------------------------
    # decoding

    def _check_id(self, token_id: int) -> int:
        if not is_int(token_id) or not 0 <= token_id < self.n_vocab:
            raise TokenizerError(f"token id {token_id!r} is not in this vocabulary "
                                 f"(0..{self.n_vocab - 1})")
        return int(token_id)

    def token_to_piece(self, token_id: int) -> bytes:
        """Bytes a token renders as: b"" for control and unknown tokens, a user-defined token's
        own text, the bytes of a byte token, a normal token's text (SPM: U+2581 as space; BPE:
        its byte-alphabet characters as bytes)."""
        tid = self._check_id(token_id)
        piece = self._pieces[tid]
        if piece is None:
            piece = self._render(tid)
            self._pieces[tid] = piece
        return piece

    def _render(self, tid: int) -> bytes:
        attr, text = self._attrs[tid], self._tokens[tid]
        if attr & (UNKNOWN | CONTROL):
            return b""
        if self._rwkv is not None:  # every other token is its unescaped bytes
            return self._rwkv.piece(tid)
        if attr & USER_DEFINED:
            return text.encode("utf-8")
        if attr & NORMAL:
            if self._spm is not None:
                return text.replace(SPACE, " ").encode("utf-8")
            return byte_decode(text)
        if attr & BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""  # unused or undefined tokens render as nothing

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids: their pieces joined; invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_to_piece(i) for i in ids).decode("utf-8", "replace")

    def token_text(self, token_id: int) -> str:
        """The vocabulary's own spelling of a token (e.g. '<|im_end|>', 'Ġthe', '▁Once')."""
        return self._tokens[self._check_id(token_id)]

    def token_id(self, text: str) -> int | None:
        """Id of the token spelled exactly `text` in the vocabulary, or None."""
        return self._ids.get(text)

    def is_control(self, token_id: int) -> bool:
        return bool(self._attrs[self._check_id(token_id)] & CONTROL)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def __repr__(self) -> str:
        kind = {"llama": "SPM", "gpt2": f"BPE/{self.pre}", "rwkv": "RWKV"}[self.model]
        return f"Tokenizer({kind}, n_vocab={self.n_vocab}, source={self.source!r})"


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an unfinished UTF-8 character.

    The outputs of feed() plus flush() add up to `tok.decode(ids)` exactly."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.token_to_piece(token_id))

    def flush(self) -> str:
        """Whatever is held back (as U+FFFD if it never became a character); resets."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
