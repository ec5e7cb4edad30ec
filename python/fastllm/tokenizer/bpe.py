"""Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): GPT-2's byte alphabet and the merge loop."""

from __future__ import annotations

import heapq
from itertools import pairwise

from .pre import PreTokenizer, Splitter


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves,
    the other 68 bytes take the code points from U+0100 on, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = [""] * 256
    for b in keep:
        out[b] = chr(b)
    extra = 0x100
    for b in range(256):
        if not out[b]:
            out[b] = chr(extra)
            extra += 1
    return out


BYTE_CHARS = _byte_alphabet()
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_LATIN1_TO_ALPHABET = {b: c for b, c in enumerate(BYTE_CHARS)}
_NONE = 1 << 62  # rank of a pair that does not merge: above any real rank


def byte_encode(text: str) -> str:
    """UTF-8 bytes of the text, each written as its byte-alphabet character."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_ALPHABET)


def byte_decode(piece: str) -> bytes:
    """Bytes a normal BPE token stands for. A character outside the byte alphabet cannot be a
    byte; llama.cpp writes a visible marker for it instead of dropping it, and so do we."""
    try:
        return bytes([CHAR_BYTES[c] for c in piece])
    except KeyError:
        pass
    out = bytearray()
    for c in piece:
        b = CHAR_BYTES.get(c)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + piece.encode() + b"]"
    return bytes(out)


class BPE:
    """Merges byte-encoded pieces into token ids: repeatedly the adjacent pair of lowest merge
    rank, the leftmost of equal ranks (the order of llama.cpp's bigram queue)."""

    _CACHE_LIMIT = 1 << 18
    _SHORT = 48  # pieces up to this many symbols use the quadratic scan, longer ones a heap

    def __init__(self, token_ids: dict[str, int], merges: list[str], pre: PreTokenizer):
        self._ids = token_ids
        # merges are "left right"; the first listing of a pair wins, as in llama.cpp
        self._ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._ignore_merges = pre.ignore_merges
        self._splitter = Splitter(pre.patterns)
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for piece in self._splitter.split(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._encode_piece(byte_encode(piece))
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _encode_piece(self, word: str) -> tuple[int, ...]:
        ids = self._ids
        if self._ignore_merges and word in ids:
            return (ids[word],)
        syms = self._merge_short(word) if len(word) <= self._SHORT else self._merge_long(word)
        out: list[int] = []
        for s in syms:
            tid = ids.get(s)
            if tid is not None:
                out.append(tid)
                continue
            # No token for the symbol: llama.cpp looks its bytes up one by one as one-byte
            # texts, which finds only ASCII ones; the rest of the symbol is dropped.
            for b in s.encode("utf-8"):
                if b < 0x80:
                    tid = ids.get(chr(b))
                    if tid is not None:
                        out.append(tid)
        return tuple(out)

    def _merge_short(self, word: str) -> list[str]:
        ranks = self._ranks
        syms = list(word)
        # pair[i]: merge rank of syms[i], syms[i+1], or _NONE when they do not merge
        pair = [ranks.get(a + " " + b, _NONE) for a, b in pairwise(syms)]
        while pair:
            best = min(pair)
            if best == _NONE:
                break
            i = pair.index(best)  # leftmost of the best
            syms[i] += syms.pop(i + 1)
            del pair[i]
            if i > 0:
                pair[i - 1] = ranks.get(syms[i - 1] + " " + syms[i], _NONE)
            if i < len(pair):
                pair[i] = ranks.get(syms[i] + " " + syms[i + 1], _NONE)
        return syms

    def _merge_long(self, word: str) -> list[str]:
        ranks = self._ranks
        text = list(word)
        n = len(text)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []

        def push(i: int, j: int) -> None:
            if i < 0 or j < 0:
                return
            r = ranks.get(text[i] + " " + text[j])
            if r is not None:
                heapq.heappush(heap, (r, i, j, text[i] + text[j]))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, i, j, joined = heapq.heappop(heap)
            if not text[i] or not text[j] or nxt[i] != j or text[i] + text[j] != joined:
                continue  # a pair that an earlier merge has changed
            text[i] = joined
            text[j] = ""
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            push(prv[i], i)
            push(i, nxt[i])
        return [t for t in text if t]
