"""What the device samplers of a batched decode step share (backends/webgpu/sample_rows.py over
shaders/sample_rows.wgsl, backends/metal/sample_rows.py over metal/sample_rows.metal): the
layout of their buffers, the packing of each row's chain (fastllm.sampling.RowSampling) into
kargs_sample_row, and the reading of their output into fastllm.sampling.Sampled.

Output layout (32-bit words): row r's token at word r (int32; -1 for a row the device leaves to
the host), then from word lp_base (= max_rows) LPW words a row for rows that ask for
log-probabilities: the chosen token's (float32), the count n of alternatives, n pairs (id,
float32), largest first.

Allowed-token bitmasks (a grammar's constraint, fastllm.constrain): a row whose
kargs_sample_row.mask is 1 has mask_words(n_vocab) words at masks[row * mask_words ..], bit
t % 32 of word t // 32 set where token t may be chosen (llguidance's layout); the device sets
the other logits to -inf after the bias and penalties, before top_k and the draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import kargs
from ..sampling import (
    DEVICE_BIAS,
    DEVICE_LAST_N,
    DEVICE_TOP_K,
    MAX_LOGPROBS,
    RowSampling,
    Sampled,
    device_chunks,
    device_ok,
)

KMAX = DEVICE_TOP_K  # candidates a part keeps (the largest top_k)
LMAX = DEVICE_LAST_N  # window ids a row (the longest penalty window)
BMAX = DEVICE_BIAS  # logit_bias entries a row
LPC = 32  # raw candidates a part keeps for the top alternatives (>= MAX_LOGPROBS)
LPW = 2 + 2 * MAX_LOGPROBS  # output words of a row's log-probabilities
NPART = 64  # the most parts a row is cut into
MIN_CHUNK = 2048  # and the fewest columns a part takes
NONE = 0xFFFFFFFF  # a window slot with no id
MODE_HOST, MODE_GREEDY, MODE_DRAW = 0, 1, 2


def split(n_vocab: int) -> tuple[int, int]:
    """(chunk, n_parts): a row of n_vocab logits cut among a row's part workgroups."""
    return device_chunks(n_vocab, MIN_CHUNK, NPART)


def header(n_vocab: int, max_rows: int) -> bytes:
    chunk, parts = split(n_vocab)
    return kargs.pack("kargs_sample_rows", n_cols=n_vocab, chunk=chunk, n_parts=parts,
                      lp_base=max_rows)


def mask_words(n_vocab: int) -> int:
    """Words of one row's allowed-token bitmask."""
    return -(-n_vocab // 32)


def check_masks(masks: Sequence[np.ndarray | None] | None, n_rows: int,
                n_vocab: int) -> list[np.ndarray | None] | None:
    """masks as uint32 rows of mask_words(n_vocab) words (None: a row without one), or None
    when no row has one; ValueError for a mask of another size."""
    if masks is None:
        return None
    if len(masks) != n_rows:
        raise ValueError(f"{n_rows} rows need as many masks (None for a row without one), got "
                         f"{len(masks)}")
    mw = mask_words(n_vocab)
    out: list[np.ndarray | None] = []
    for r, m in enumerate(masks):
        if m is None:
            out.append(None)
            continue
        a = np.ascontiguousarray(m).reshape(-1)
        if a.dtype.itemsize != 4 or a.dtype.kind not in "iu" or len(a) != mw:
            raise ValueError(f"row {r}'s token mask must be {mw} 32-bit words (ceil({n_vocab} "
                             f"/ 32)), got {len(a)} of {a.dtype}")
        out.append(a.view(np.uint32))
    return out if any(m is not None for m in out) else None


def out_words(max_rows: int) -> int:
    """Words of the output buffer."""
    return max_rows * (1 + LPW)


def pack(params: Sequence[RowSampling], uniforms: Sequence[float],
         windows: Sequence[Sequence[int]], max_rows: int,
         masks: Sequence[np.ndarray | None] | None = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kargs_sample_row per row, window ids (B, LMAX) uint32, bias (B, BMAX, 2) uint32 as (id,
    float32 bits)) for the rows' chains (already checked: RowSampling.check). A row that
    device_ok refuses gets mode 0 (the host samples it); a greedy row mode 1, any other 2.
    windows[r]: the sequence's ids, of which the last last_n are penalized. masks (checked by
    check_masks): a row with one gets mask 1 (its words are the caller's to upload)."""
    b = len(params)
    if not 0 < b <= max_rows or len(uniforms) != b or len(windows) != b:
        raise ValueError(f"sampling {b} rows (at most {max_rows}) needs as many uniform "
                         f"numbers and windows, got {len(uniforms)} and {len(windows)}")
    rows = np.zeros(b, kargs.structs()["kargs_sample_row"])
    win = np.full((b, LMAX), NONE, np.uint32)
    bias = np.zeros((b, BMAX, 2), np.uint32)
    for r, p in enumerate(params):
        rec = rows[r]
        if not device_ok(p):
            rec["logprobs"] = -1
            continue
        rec["mode"] = MODE_GREEDY if p.greedy else MODE_DRAW
        rec["top_k"] = 1 if p.greedy else p.top_k
        rec["temperature"] = p.temperature
        rec["top_p"] = p.top_p
        rec["min_p"] = p.min_p
        rec["u"] = uniforms[r]
        rec["repeat_penalty"] = p.repeat_penalty
        rec["frequency_penalty"] = p.frequency_penalty
        rec["presence_penalty"] = p.presence_penalty
        if p.penalized:
            w = np.asarray(list(windows[r])[-p.last_n:], np.int64)
            # ids outside the row (negative ones too) become ids no chunk holds: not tokens
            w = np.where((w >= 0) & (w < NONE), w, NONE).astype(np.uint32)
            win[r, :len(w)] = w
            rec["n_window"] = len(w)
        if p.logit_bias:
            nb = len(p.logit_bias)
            bias[r, :nb, 0] = [int(i) for i, _ in p.logit_bias]
            bias[r, :nb, 1] = np.array([v for _, v in p.logit_bias], np.float32).view(np.uint32)
            rec["n_bias"] = nb
        rec["logprobs"] = -1 if p.logprobs is None else p.logprobs
        rec["mask"] = int(masks is not None and masks[r] is not None)
    return rows, win, bias


def wants_logprobs(params: Sequence[RowSampling]) -> bool:
    return any(p.logprobs is not None and device_ok(p) for p in params)


def read_nbytes(params: Sequence[RowSampling], max_rows: int) -> int:
    """Bytes of the output a batch needs read back: the ids, and the log-probabilities' block
    up to the last row when any device row asks for them."""
    if wants_logprobs(params):
        return 4 * (max_rows + LPW * len(params))
    return 4 * len(params)


def unpack(words: np.ndarray, params: Sequence[RowSampling],
           max_rows: int) -> list[Sampled | None]:
    """The rows' Sampled from the output's words (read_nbytes of them); None for rows the host
    samples (device_ok false)."""
    w = np.asarray(words).view(np.uint32)
    f = w.view(np.float32)
    out: list[Sampled | None] = []
    for r, p in enumerate(params):
        if not device_ok(p):
            out.append(None)
            continue
        tok = int(w[r].view(np.int32))
        if p.logprobs is None:
            out.append(Sampled(tok))
            continue
        o = max_rows + r * LPW
        n = int(w[o + 1])
        top = tuple((int(w[o + 2 + 2 * j]), float(f[o + 3 + 2 * j])) for j in range(n))
        out.append(Sampled(tok, float(f[o]), top))
    return out
