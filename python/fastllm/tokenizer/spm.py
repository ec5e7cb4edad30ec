"""SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`), as llama.cpp encodes them.

The text, spaces written as U+2581, starts as one symbol per character. The adjacent pair whose
concatenation is a token with the highest score is merged, the leftmost of equal scores, until no
pair forms a token. A symbol left without a token falls back to its bytes' `<0xNN>` tokens.

For speed a long text is cut before each U+2581 that follows a character no token has in front
of a U+2581: no merge can span such a cut, so the merges on either side never meet, and each
stretch is encoded on its own and memoised, which gives the same ids as one pass over the text.
"""

from __future__ import annotations

import heapq
from itertools import pairwise

SPACE = "\u2581"
_NONE = float("-inf")  # no token for the pair; real scores are kept above it (see SPM.__init__)


class SPM:
    _CACHE_LIMIT = 1 << 18
    _SHORT = 48  # chunks up to this many symbols use the quadratic scan, longer ones a heap
    _CUT_FROM = 256  # shorter texts are encoded in one pass

    def __init__(self, tokens: list[str], token_ids: dict[str, int], scores: list[float],
                 unk_id: int | None):
        self._tokens = tokens
        self._ids = token_ids
        # -inf and NaN scores would not sort above "no token"; put them just below any float32
        self._scores = [x if x > -3.4e38 else -3.5e38 for x in scores]
        self._unk = unk_id
        self._byte_ids: list[int | None] = []
        for b in range(256):
            tid = token_ids.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = token_ids.get(chr(b))  # llama.cpp's fallback: the byte as a text
            self._byte_ids.append(tid)
        self._before_space: frozenset[str] | None = None
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of `text`, whose spaces are already written as U+2581."""
        cache = self._cache
        for chunk in self._chunks(text) if len(text) >= self._CUT_FROM else (text,):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)

    def _chunks(self, text: str) -> list[str]:
        """Cut before each U+2581 that no token joins to the character in front of it."""
        if self._before_space is None:
            # characters that some token has right before a U+2581
            before: set[str] = set()
            for t in self._tokens:
                i = t.find(SPACE, 1)
                while i > 0:
                    before.add(t[i - 1])
                    i = t.find(SPACE, i + 1)
            self._before_space = frozenset(before)
        joins = self._before_space
        parts = text.split(SPACE)
        chunks: list[str] = []
        cur = parts[0]
        for part in parts[1:]:
            if cur and cur[-1] not in joins:
                chunks.append(cur)
                cur = SPACE + part
            else:
                cur += SPACE + part
        if cur:
            chunks.append(cur)
        return chunks

    def _encode_chunk(self, text: str) -> tuple[int, ...]:
        syms = self._merge_short(text) if len(text) <= self._SHORT else self._merge_long(text)
        ids = self._ids
        out: list[int] = []
        for s in syms:
            tid = ids.get(s)
            if tid is not None:
                out.append(tid)
                continue
            byte_ids = [self._byte_ids[b] for b in s.encode("utf-8", "surrogatepass")]
            if None not in byte_ids:
                out.extend(byte_ids)  # type: ignore[arg-type]
            elif self._unk is not None:
                out.append(self._unk)  # vocabulary without byte tokens
        return tuple(out)

    def _merge_short(self, text: str) -> list[str]:
        ids, scores = self._ids, self._scores
        syms = list(text)
        # pair[i]: score of syms[i] + syms[i+1] if that is a token, else -inf
        pair = [scores[ids[a + b]] if a + b in ids else _NONE for a, b in pairwise(syms)]
        while pair:
            best = max(pair)
            if best == _NONE:
                break
            i = pair.index(best)  # leftmost of the best
            syms[i] += syms.pop(i + 1)
            del pair[i]
            if i > 0:
                t = syms[i - 1] + syms[i]
                pair[i - 1] = scores[ids[t]] if t in ids else _NONE
            if i < len(pair):
                t = syms[i] + syms[i + 1]
                pair[i] = scores[ids[t]] if t in ids else _NONE
        return syms

    def _merge_long(self, text: str) -> list[str]:
        ids, scores = self._ids, self._scores
        sym = list(text)
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []

        def push(i: int, j: int) -> None:
            if i < 0 or j < 0:
                return
            joined = sym[i] + sym[j]
            tid = ids.get(joined)
            if tid is not None:
                heapq.heappush(heap, (-scores[tid], i, j, len(joined)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, i, j, size = heapq.heappop(heap)
            # symbols only grow, so an unchanged total length means an unchanged pair
            if not sym[i] or not sym[j] or len(sym[i]) + len(sym[j]) != size:
                continue
            sym[i] += sym[j]
            sym[j] = ""
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            push(prv[i], i)
            push(i, nxt[i])
        return [s for s in sym if s]
