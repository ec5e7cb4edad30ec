"""Constrained decoding: output that follows a JSON schema, a regular expression or a grammar,
through llguidance (https://github.com/guidance-ai/llguidance).

llguidance computes, for each step, the set of tokens that keep the output a prefix of
something the constraint accepts, as a bitmask of ceil(n_vocab / 32) 32-bit words (bit t % 32
of word t // 32 for token t). The mask is computed here on the host; the sampler applies it
where it runs (fastllm.sampling.sample_row, or the device samplers of a batched step), so only
the mask travels, not the logits. Where the constraint leaves a single way on (a JSON key, the
punctuation between fields) llguidance gives the forced tokens at once, and the engine reads
them as one prompt chunk instead of one step each.

    c = compile_constraint(tokenizer, n_vocab, json_schema={"type": "object"})
    m = c.matcher()
    m.forced()           # tokens the constraint forces now (consume them, then evaluate them)
    m.fill_mask(words)   # the allowed tokens of the next step
    m.consume(token)     # after sampling; m.done: nothing but the end can follow

llguidance's tokenizer is built from fastllm's own (each token's bytes, an encode function);
control tokens, and user-defined tokens spelled like "<...>", are its special tokens (written
after a 0xFF byte, as llama.cpp's integration marks them), which a Lark grammar names as
`<|im_end|>` and which plain text in a grammar never matches.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError, UnsupportedError

# llguidance's JSON options fastllm starts from (a schema's own "x-guidance" overrides them):
# one space after ':' and ',' and no other whitespace between tokens, so that a small model
# cannot wander into whitespace until max_tokens runs out, and the separators are forced
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# what OpenAI's response_format {"type": "json_object"} asks for
ANY_JSON_OBJECT = {"type": "object"}

_LOCK = threading.Lock()
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EXECUTOR = None


LLGUIDANCE_MIN = (1, 7)  # pyproject.toml's floor


def _llg():
    try:
        import llguidance
        import llguidance.numpy
    except ImportError as e:  # pragma: no cover (a dependency; a broken install)
        raise UnsupportedError(f"constrained decoding needs the llguidance package ({e}): "
                               f"pip install llguidance") from None
    # before 1.7 LLTokenizer took one end-of-sequence id, and a model has several
    # end-of-generation ids (Llama 3: <|end_of_text|>, <|eot_id|>, <|eom_id|>)
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version("llguidance")
    except PackageNotFoundError:  # pragma: no cover (imported, so installed somehow)
        return llguidance
    if tuple(int(p) for p in re.findall(r"\d+", have)[:2]) < LLGUIDANCE_MIN:
        raise UnsupportedError(f"constrained decoding needs llguidance >= "
                               f"{'.'.join(map(str, LLGUIDANCE_MIN))}, found {have}: "
                               f"pip install -U llguidance")
    return llguidance


def _special(tok: Any, i: int, piece: bytes) -> bool:
    """Whether token i is a special token for llguidance: a control token, or a user-defined
    token spelled like "<...>" (llama.cpp's rule), or one that renders as nothing."""
    from .tokenizer.vocab import CONTROL, USER_DEFINED

    attr = tok._attrs[i]
    if attr & CONTROL or not piece:
        return True
    text = tok.token_text(i)
    return bool(attr & USER_DEFINED) and text.startswith("<") and text.endswith(">")


class _Wrapped:
    """What llguidance.TokenizerWrapper reads of a tokenizer: each token's bytes, the special
    ones, BOS/EOS and an encode function (bytes -> ids, no BOS, no space prefix)."""

    def __init__(self, tok: Any, n_vocab: int):
        self._tok = tok
        self.eos_token_id = tok.eos_id
        self.bos_token_id = tok.bos_id
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for i in range(tok.n_vocab):
            piece = tok.token_to_piece(i)
            if _special(tok, i, piece):
                self.tokens.append(b"\xff" + tok.token_text(i).encode("utf-8"))
                self.special_token_ids.append(i)
            else:
                self.tokens.append(piece)
        # a model whose output rows outnumber its vocabulary: those ids are never text
        self.tokens += [b""] * (n_vocab - tok.n_vocab)

    def __call__(self, data: bytes) -> list[int]:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return encode_plain(self._tok, text)


def encode_plain(tok: Any, text: str) -> list[int]:
    """Token ids of text as a continuation: no BOS and, for SentencePiece vocabularies, no
    space put in front (llguidance tokenizes forced text that follows earlier output)."""
    spm = getattr(tok, "_spm", None)
    if spm is None or not tok.add_space_prefix:
        return tok.encode(text, add_bos=False)
    from .tokenizer.core import SPACE

    out: list[int] = []
    for f in tok._partition(text, False):
        if isinstance(f, int):
            out.append(f)
        else:
            spm.encode(f.replace(" ", SPACE), out)
    return out


def ll_tokenizer(tok: Any, n_vocab: int):
    """llguidance's LLTokenizer of a fastllm Tokenizer (built once per tokenizer: ~1-4 s for a
    50,000-token vocabulary)."""
    llg = _llg()
    with _LOCK:
        got = _TOKENIZERS.get(tok)
        if got is not None and got[0] == n_vocab:
            return got[1]
        eog = sorted(int(t) for t in tok.eog_ids)
        if not eog:
            raise ArgumentError(f"the tokenizer of {tok.source or 'this model'} has no "
                                f"end-of-generation token: a constraint needs one to end")
        lt = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapped(tok, n_vocab)), n_vocab=n_vocab,
                             eos_token=eog)
        _TOKENIZERS[tok] = (n_vocab, lt)
        return lt


@dataclass(frozen=True)
class Constraint:
    """A checked constraint: llguidance's grammar (its JSON form) for one tokenizer. `kind` is
    "json_schema", "regex" or "grammar"; `source` what the caller gave."""

    kind: str
    source: Any
    grammar: str
    tokenizer: Any  # llguidance.LLTokenizer
    n_vocab: int

    def matcher(self) -> Matcher:
        """A fresh matcher: one request's state under the constraint."""
        return Matcher(self)


def compile_constraint(tok: Any, n_vocab: int, json_schema: Any = None, regex: str | None = None,
                       grammar: str | None = None) -> Constraint | None:
    """The Constraint of the arguments (None when none is given), checked by llguidance before
    anything runs: a schema, regex or grammar it refuses is an ArgumentError naming the argument
    and llguidance's reason. json_schema: a dict, or a JSON string (True or {}: any JSON value).
    regex: Rust regex syntax, matched against the whole output. grammar: llguidance's Lark
    syntax, or a llama.cpp GBNF grammar (converted to Lark by llguidance)."""
    given = [(k, v) for k, v in (("json_schema", json_schema), ("regex", regex),
                                 ("grammar", grammar)) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise ArgumentError(f"give one constraint, not {' and '.join(k for k, _ in given)}")
    kind, value = given[0]
    llg = _llg()
    M = llg.LLMatcher
    if kind == "json_schema":
        schema = value
        if isinstance(schema, (str, bytes)):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise ArgumentError(f"json_schema is not valid JSON: {e}") from None
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise ArgumentError(f"json_schema must be a JSON schema (a dict or its JSON text), "
                                f"got {type(value).__name__}")
        try:
            text = M.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        except (ValueError, TypeError) as e:
            raise ArgumentError(f"json_schema cannot be used: {e}") from None
    elif kind == "regex":
        if not isinstance(value, str):
            raise ArgumentError(f"regex must be a string, got {type(value).__name__}")
        text = M.grammar_from_regex(value)
    else:
        if not isinstance(value, str):
            raise ArgumentError(f"grammar must be a string (Lark or GBNF), got "
                                f"{type(value).__name__}")
        try:
            text = llg.grammar_from("grammar", value)  # Lark as it is; GBNF converted
        except ValueError as e:
            raise ArgumentError(f"grammar cannot be used: {e}") from None
    lt = ll_tokenizer(tok, n_vocab)
    is_error, messages = M.validate_grammar_with_warnings(text, lt)
    if is_error:
        raise ArgumentError(f"{kind} cannot be used: {messages[0].strip()}")
    return Constraint(kind, value, text, lt, n_vocab)


class Matcher:
    """One request's progress under a Constraint (llguidance.LLMatcher): the next step's
    allowed tokens, the tokens it forces, whether the output can or must end."""

    def __init__(self, c: Constraint):
        llg = _llg()
        self.constraint = c
        self.words = -(-c.n_vocab // 32)
        self._m = llg.LLMatcher(c.tokenizer, c.grammar, log_level=0)
        self._forced: list[int] | None = None  # forced() until the next consume()
        self._check()

    def _check(self) -> None:
        if self._m.is_error():
            raise ArgumentError(f"{self.constraint.kind}: {self._m.get_error()}")

    @property
    def error(self) -> str | None:
        """llguidance's message once the matcher failed (a token it does not accept, a limit)."""
        return self._m.get_error() if self._m.is_error() else None

    @property
    def done(self) -> bool:
        """Nothing but the end of generation can follow (the output is complete)."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        """The output so far is complete under the constraint (it may still go on)."""
        return self._m.is_accepting()

    def forced(self) -> list[int]:
        """The tokens the constraint forces next (possibly none)."""
        if self._forced is None:
            bad = self._m.is_error() or self._m.is_stopped()
            self._forced = [] if bad else list(self._m.compute_ff_tokens())
        return self._forced

    def consume(self, tokens: int | Sequence[int]) -> bool:
        """Advance over sampled (or forced) tokens; False when the constraint refused one."""
        toks = [int(tokens)] if isinstance(tokens, (int, np.integer)) else [int(t) for t in tokens]
        self._forced = None
        return bool(self._m.consume_tokens(toks)) if toks else True

    def fill_mask(self, out: np.ndarray) -> np.ndarray:
        """The next step's allowed tokens into out (uint32, self.words words)."""
        if out.dtype != np.uint32 or out.shape != (self.words,) or not out.flags.c_contiguous:
            raise ValueError(f"a token mask is {self.words} contiguous uint32 words")
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)
        return out

    def mask(self) -> np.ndarray:
        """The next step's allowed tokens (a new uint32 array of self.words words)."""
        return self.fill_mask(np.zeros(self.words, np.uint32))


def fill_masks(matchers: Sequence[Matcher], out: np.ndarray) -> np.ndarray:
    """Row i of out (uint32 (len(matchers), words)) := matchers[i]'s next mask, computed by
    llguidance's thread pool when there are several."""
    if len(matchers) == 1:
        matchers[0].fill_mask(out[0])
        return out
    global _EXECUTOR
    llg = _llg()
    if _EXECUTOR is None:
        _EXECUTOR = llg.LLExecutor()
    words = out.shape[1]
    if out.dtype != np.uint32 or not out.flags.c_contiguous or out.shape[0] < len(matchers):
        raise ValueError("token masks are contiguous uint32 rows")
    _EXECUTOR.unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)],
                                      out.ctypes.data, 4 * words, out.shape[0])
    return out


__all__ = ["ANY_JSON_OBJECT", "JSON_DEFAULTS", "Constraint", "Matcher", "compile_constraint",
           "encode_plain", "fill_masks", "ll_tokenizer"]
