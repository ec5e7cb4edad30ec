"""Pre-tokenizers of byte-level BPE vocabularies (`tokenizer.ggml.pre`), as llama.cpp runs them.

A pre-tokenizer is a list of regexes applied in turn: the first splits the text into pieces, each
later one splits every piece further; the text between matches is kept as a piece of its own.
The patterns are the ones the models' tokenizer.json files define, in the forms llama.cpp uses.

Matching follows llama.cpp rather than a Unicode regex engine: a pattern with `\\p{..}` classes
runs on the collapsed text (see unicode.py), with each class rewritten as its placeholder
plus its ASCII members; any other pattern runs on the text with non-ASCII whitespace turned into
`\\v`. Both run under stdlib `re` with ASCII semantics, which is what makes `\\s`, `\\S` and `\\d`
mean the same as in llama.cpp's ECMAScript matcher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import unicode as tu

# Contractions, case-insensitive the way llama.cpp spells them out.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# GPT-2. llama.cpp's hand-written splitter for it also takes a lone whitespace character that
# nothing else matches, hence the trailing \s+ (it changes nothing but the piece boundaries'
# bookkeeping: an unmatched character would become a piece of its own anyway).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Letters of DeepSeek LLM's tokenizer.json (cased scripts; CJK is split separately).
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_ASCII_PUNCT_WORD = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

# Mixed-case word splitting of tiktoken-style vocabularies, in llama.cpp's lookahead form.
_CASED_WORDS = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
)


@dataclass(frozen=True)
class PreTokenizer:
    """One `tokenizer.ggml.pre` family: its regexes and the flags llama.cpp ties to it."""

    name: str
    patterns: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token skips the merges
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    no_bos: bool = False  # the family has no BOS token by default


_FAMILIES = [
    (PreTokenizer("default", (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
     ["default"]),
    (PreTokenizer("llama3", (LLAMA3,), ignore_merges=True, add_bos=True),
     ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
      "jina-v5-nano"]),
    (PreTokenizer("dbrx", (LLAMA3,)), ["dbrx", "smaug-bpe"]),
    (PreTokenizer("deepseek-llm", (
        r"[\r\n]",
        r"\s?[" + _DEEPSEEK_LETTERS + "]+",
        "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
        r"\s+$",
        _CJK_HANGUL,
        r"\p{N}+",
    )), ["deepseek-llm"]),
    (PreTokenizer("deepseek-coder", (
        r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}",
    )), ["deepseek-coder"]),
    (PreTokenizer("deepseek-v3", (
        r"\p{N}{1,3}",
        _CJK_KANA,
        _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    )), ["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"]),
    (PreTokenizer("spark2_5", (
        r"\p{N}{1,3}",
        _CJK_KANA,
        _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]"
        r"|\s+(?!\S)|\s+",
        r"\p{N}",
    )), ["spark2_5"]),
    (PreTokenizer("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")), ["falcon"]),
    (PreTokenizer("starcoder", (r"\p{N}", GPT2)),
     ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
      "mellum2"]),
    (PreTokenizer("gpt-2", (GPT2,)),
     ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
      "mellum", "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
      "jina-v1-en", "jina-v2-code", "roberta-bpe"]),
    (PreTokenizer("qwen2", (QWEN2,)),
     ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "hunyuan", "solar-open",
      "megrez", "grok-2"]),
    (PreTokenizer("qwen35", (QWEN35,)), ["qwen35"]),
    (PreTokenizer("ufakzeka", (
        r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    )), ["ufakzeka"]),
    (PreTokenizer("laguna", (r"[^\n]+|[\n]+", QWEN2)), ["laguna"]),
    (PreTokenizer("seed-coder", (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    )), ["seed-coder"]),
    (PreTokenizer("bailingmoe", (
        (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"),
    )), ["bailingmoe", "bailingmoe2", "llada-moe"]),
    (PreTokenizer("chatglm-bpe", (LLAMA3,), no_bos=True), ["chatglm-bpe"]),
    (PreTokenizer("glm4", (LLAMA3,), ignore_merges=True, no_bos=True), ["glm4", "glm5"]),
    (PreTokenizer("minicpm5", (
        r"\p{N}{1,3}",
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True), ["minicpm5"]),
    (PreTokenizer("bloom", (_BLOOM,)), ["poro-chat", "bloom", "gpt3-finnish"]),
    (PreTokenizer("viking", (_BLOOM, r"\p{N}")), ["viking"]),
    (PreTokenizer("tekken", (
        _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True, add_bos=True), ["tekken"]),
    (PreTokenizer("gpt-4o", (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
        + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
        + _CONTRACTIONS + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    )), ["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"]),
]

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    alias: family for family, aliases in _FAMILIES for alias in aliases
}

# Members of each \p{..} class below U+0080, as llama.cpp's collapsed patterns list them. Every
# letter class stands for all letters: the collapsed text no longer knows upper from lower case.
_ASCII_MEMBERS = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": re.escape("".join(c for c in map(chr, range(128)) if tu.char_class(ord(c)) == "P")),
    "M": "",
    "S": re.escape("".join(c for c in map(chr, range(128)) if tu.char_class(ord(c)) == "S")),
}
_CLASS_OF = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S",
             "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}
_PLACEHOLDERS = {"N": tu.NUMBER, "L": tu.LETTER, "P": tu.PUNCT, "M": tu.MARK, "S": tu.SYMBOL}
_PROPERTY = re.compile(r"\\p\{(\w+)\}")


def _collapse_pattern(pattern: str) -> str:
    """Rewrite \\p{..} classes as placeholder + ASCII members, inside or outside brackets."""
    out: list[str] = []
    inside = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = _PROPERTY.match(pattern, i)
            if m and m.group(1) in _CLASS_OF:
                cls = _CLASS_OF[m.group(1)]
                body = re.escape(_PLACEHOLDERS[cls]) + _ASCII_MEMBERS[cls]
                out.append(body if inside else "[" + body + "]")
                i = m.end()
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        out.append(c)
        i += 1
    return "".join(out)


def _compile(pattern: str) -> tuple[re.Pattern[str], bool]:
    """Compiled pattern, and whether it runs on the collapsed text (else on the widened one)."""
    collapsed = "\\p{" in pattern
    if collapsed:
        if not pattern.isascii():
            raise ValueError(f"pattern mixes \\p{{..}} classes and non-ASCII text: {pattern!r}")
        pattern = _collapse_pattern(pattern)
    # `$` ends the piece being split, never just before a trailing newline as in Python.
    pattern = re.sub(r"(?<!\\)\$$", r"\\Z", pattern)
    return re.compile(pattern, re.ASCII), collapsed


class Splitter:
    """Applies a pre-tokenizer's regexes to text; pieces of later stages are memoised."""

    _MEMO_LIMIT = 1 << 16

    def __init__(self, patterns: tuple[str, ...]):
        self._stages = [_compile(p) for p in patterns]
        self._memo: list[dict[str, list[str]]] = [{} for _ in self._stages]

    def _stage(self, i: int, text: str) -> list[str]:
        rx, collapsed = self._stages[i]
        view = tu.collapse(text) if collapsed else tu.widen(text)
        pieces: list[str] = []
        pos = 0
        for m in rx.finditer(view):
            start, end = m.span()
            if start > pos:
                pieces.append(text[pos:start])
            if end > start:
                pieces.append(text[start:end])
            pos = end
        if pos < len(text):
            pieces.append(text[pos:])
        return pieces

    def _split_from(self, i: int, text: str, out: list[str]) -> None:
        if i == len(self._stages):
            out.append(text)
            return
        memo = self._memo[i]
        done = memo.get(text)
        if done is None:
            done = []
            for piece in self._stage(i, text):
                self._split_from(i + 1, piece, done)
            if len(text) <= 256:  # long pieces rarely repeat
                if len(memo) >= self._MEMO_LIMIT:
                    memo.clear()
                memo[text] = done
        out.extend(done)

    def split(self, text: str) -> list[str]:
        if len(self._stages) == 1:
            return self._stage(0, text)
        out: list[str] = []
        for piece in self._stage(0, text):
            self._split_from(1, piece, out)
        return out
