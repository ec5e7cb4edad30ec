"""Reading a GGUF vocabulary's metadata the way llama.cpp does: token texts and attributes,
special tokens found by their text, the end-of-generation set, and per-family strip rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import TokenizerError

# Token attributes (llama.cpp's llama_token_attr bits).
UNDEFINED = 0
UNKNOWN = 1 << 0
UNUSED = 1 << 1
NORMAL = 1 << 2
CONTROL = 1 << 3
USER_DEFINED = 1 << 4
BYTE = 1 << 5
LSTRIP = 1 << 7
RSTRIP = 1 << 8

# tokenizer.ggml.token_type values -> attributes; anything else is undefined.
TYPE_ATTR = {0: UNDEFINED, 1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED,
              6: BYTE}

# Texts that mark tokens as end-of-turn, end-of-message or fill-in-the-middle markers when the
# metadata does not name them, the way llama.cpp looks them up. Such tokens become control tokens.
_EOT_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
])
_FIM_TEXTS = {
    "tokenizer.ggml.fim_pre_token_id": frozenset([
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>",
        "<PRE>", "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"]),
    "tokenizer.ggml.fim_suf_token_id": frozenset([
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>",
        "<SUF>", "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"]),
    "tokenizer.ggml.fim_mid_token_id": frozenset([
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>",
        "<MID>", "\u2581<MID>", "<|code_middle|>", "<|middle|>"]),
    "tokenizer.ggml.fim_pad_token_id": frozenset(["<|fim_pad|>", "<fim-pad>", "<fim_pad>",
                                                  "<PAD>", "[PAD]"]),
    "tokenizer.ggml.fim_rep_token_id": frozenset(["<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                                  "<REPO>", "<reponame>"]),
    "tokenizer.ggml.fim_sep_token_id": frozenset(["<|file_sep|>"]),
}
# Texts of tokens that end generation.
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
])
# gpt-oss markers that are always rendered.
_ALWAYS_RENDERED = frozenset(["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"])

SPECIAL_ID_KEYS = [
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.mask_token_id", *_FIM_TEXTS,
]
# Older names of the first three FIM keys.
OLD_FIM_KEYS = {
    "tokenizer.ggml.prefix_token_id": "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.suffix_token_id": "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.middle_token_id": "tokenizer.ggml.fim_mid_token_id",
}
C_SPACES = " \t\n\v\f\r"  # what C's isspace() accepts: lstrip/rstrip of special tokens


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def read_tokens(md: dict[str, Any], fail: Callable[[str, str], TokenizerError]) -> list[str]:
    """The token texts, checked; empty ones get llama.cpp's "[EMPTY_i]" names."""
    key = "tokenizer.ggml.tokens"
    raw = md.get(key)
    if raw is None:
        raise fail(key, "is missing")
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
        raise fail(key, "must be a non-empty array of strings")
    tokens: list[str] = []
    for i, t in enumerate(raw):
        if isinstance(t, bytes):
            try:
                t = t.decode("utf-8")
            except UnicodeDecodeError as e:
                raise fail(f"{key}[{i}]", f"holds invalid UTF-8 ({e.reason} at byte "
                                          f"{e.start})") from None
        elif not isinstance(t, str):
            raise fail(f"{key}[{i}]", f"is {type(t).__name__}, not a string")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(f"{key}[{i}]", "is not valid Unicode text (lone surrogate)") from None
        if not t:  # llama.cpp names empty tokens so that they stay distinct
            t = f"[EMPTY_{i}]"
        tokens.append(t)
    return tokens


def read_numbers(md: dict[str, Any], key: str, n: int, dtype: type,
                 fail: Callable[[str, str], TokenizerError]) -> np.ndarray | None:
    """A per-token numeric array (scores, token types) of exactly n entries, or None."""
    raw = md.get(key)
    if raw is None:
        return None
    try:
        arr = np.asarray(raw)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in ("i", "u", "f") or (
            dtype is np.int64 and arr.dtype.kind == "f"):
        kind = "numbers" if dtype is np.float32 else "integers"
        raise fail(key, f"must be an array of {kind}")
    if len(arr) != n:
        raise fail(key, f"has {len(arr)} entries but tokenizer.ggml.tokens has {n}")
    return arr.astype(dtype)


def find_markers(tokens: list[str], ids: dict[str, int], attrs: list[int],
                 special: dict[str, int]) -> None:
    """Name end-of-turn, end-of-message and FIM tokens by their text where the metadata does
    not, and make them control tokens."""
    wanted = {"tokenizer.ggml.eot_token_id": _EOT_TEXTS,
              "tokenizer.ggml.eom_token_id": frozenset(["<|eom_id|>"]), **_FIM_TEXTS}
    open_keys = {k: texts for k, texts in wanted.items() if k not in special}
    all_texts = frozenset().union(*open_keys.values()) if open_keys else frozenset()
    for text in sorted(all_texts & ids.keys(), key=ids.__getitem__):
        tid = ids[text]
        for key, texts in list(open_keys.items()):
            if text in texts:
                special[key] = tid
                attrs[tid] |= CONTROL
                del open_keys[key]
    for tid, text in enumerate(tokens):
        if attrs[tid] & CONTROL and "unused" in text:
            attrs[tid] |= UNUSED


def eog_ids(tokens: list[str], ids: dict[str, int], attrs: list[int],
            special: dict[str, int]) -> frozenset[int]:
    """Tokens that end generation; marks them control tokens, as llama.cpp does."""
    eog = {special[k] for k in ("tokenizer.ggml.fim_pad_token_id",
                                "tokenizer.ggml.fim_rep_token_id",
                                "tokenizer.ggml.fim_sep_token_id") if k in special}
    for text in _EOG_TEXTS & ids.keys():
        eog.add(ids[text])
        attrs[ids[text]] |= CONTROL
    for text in _ALWAYS_RENDERED & ids.keys():
        attrs[ids[text]] = USER_DEFINED
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
              "tokenizer.ggml.eom_token_id"):
        if k in special:
            eog.add(special[k])
    texts = {tokens[t]: t for t in eog}
    # o200k_harmony and solar-open end a turn with <|end|> but keep generating after it
    if "<|end|>" in texts and (
            ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
            or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = USER_DEFINED
    # gemma4 and plamo use </s> as a normal token
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = NORMAL
    return frozenset(eog)


def set_strip_flags(md: dict[str, Any], ids: dict[str, int], attrs: list[int],
                    specials: list[int]) -> None:
    """Whitespace next to some special tokens is dropped, per model family (llama.cpp)."""
    name = str(md.get("general.name", "")).lower()
    pre = str(md.get("tokenizer.ggml.pre", ""))
    arch = str(md.get("general.architecture", ""))

    def set_flag(text: str, flag: int, on: bool) -> None:
        tid = ids.get(text)
        if tid is not None:
            attrs[tid] = attrs[tid] | flag if on else attrs[tid] & ~flag

    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        set_flag("<mask>", LSTRIP, True)
    elif "phi-3" in name or "phi3" in name:
        for tid in specials:
            attrs[tid] |= RSTRIP
        set_flag("</s>", RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            set_flag(text, RSTRIP, False)
    elif "modern-bert" in name:
        set_flag("[MASK]", LSTRIP, True)
