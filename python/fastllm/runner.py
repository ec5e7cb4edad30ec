"""`Runner`: a network on a backend with n_seq slots, each holding the tokens whose K/V rows (or
recurrent state) it has cached, run by token ids: prefill with prefix reuse and state
checkpoints, one-token and batched decode steps, and save/restore of a slot. fastllm.Model is a
Runner plus what is about text (its file, tokenizer, chat template and the generate/chat
front-end); fastllm.Engine drives these methods directly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.base import Backend, KVSpec, Program
from .errors import ContextOverflowError
from .models.base import Architecture, Config


class Runner:
    """Token ids through a loaded network, slot by slot (the base of fastllm.Model)."""

    def __init__(self, arch: Architecture, backend: Backend, kv_spec: KVSpec, n_batch: int,
                 state_checkpoints: int = 0):
        self.net = arch
        self.config: Config = arch.cfg
        self.backend = backend
        self.kv_spec = kv_spec  # what the backend's cache was allocated for
        self.n_ctx = kv_spec.n_ctx
        self.n_batch = n_batch
        self._programs: dict[tuple[int, bool, bool], Program] = {}
        self.n_seq = kv_spec.n_seq
        # per slot: the tokens whose K/V (or state) it holds, in position order
        self._slot_tokens: list[list[int]] = [[] for _ in range(self.n_seq)]
        self._run_rows_of: dict[bool, int] = {}  # _run_rows by all_logits
        # recurrent models: per slot, the last `state_checkpoints` states at prefill chunk
        # boundaries, each with the tokens it follows (a state cannot roll back; a new prompt
        # that leaves the cached tokens resumes from the longest checkpoint it extends)
        self.state_checkpoints = state_checkpoints if kv_spec.recurrent else 0
        self._checkpoints: list[list[tuple[tuple[int, ...], dict]]] = [
            [] for _ in range(self.n_seq)]

    def close(self) -> None:
        """Free the backend's memory. The model cannot be used afterwards."""
        self._programs.clear()
        self.backend.close()

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # -- evaluation ----------------------------------------------------------------------------
    def _program(self, n: int, all_logits: bool, rows: bool = False) -> Program:
        key = (n, all_logits, rows)
        prog = self._programs.get(key)
        if prog is None:
            if len(self._programs) > 16:  # odd prompt lengths: keep decode and rows programs
                self._programs = {k: v for k, v in self._programs.items()
                                  if k[0] == 1 or k[2]}
            prog = self.backend.compile(self.net.build(n, all_logits, rows=rows))
            self._programs[key] = prog
        return prog

    @property
    def _cached(self) -> list[int]:
        """Slot 0's cached tokens (the one-sequence API's memory)."""
        return self._slot_tokens[0]

    @_cached.setter
    def _cached(self, tokens: list[int]) -> None:
        self._slot_tokens[0] = tokens

    def _check_slot(self, slot: int) -> int:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) \
                or not 0 <= slot < self.n_seq:
            raise ValueError(f"slot must be an int in 0..{self.n_seq - 1} (n_seq={self.n_seq}), "
                             f"got {slot!r}")
        return int(slot)

    def cached_tokens(self, slot: int = 0) -> list[int]:
        """The tokens whose K/V (or recurrent state) slot `slot` holds, in position order."""
        return list(self._slot_tokens[self._check_slot(slot)])

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(list(ids), dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError("token ids must be a flat sequence of ints")
        if len(arr) and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        if len(arr) > self.n_ctx:
            raise ContextOverflowError(f"{len(arr)} tokens do not fit the context of {self.n_ctx} "
                                       f"(load with a larger n_ctx=, up to the model's "
                                       f"{self.config.n_ctx_train})")
        return arr.astype(np.int32)

    def _run_rows(self, all_logits: bool) -> int:
        """The most tokens one run takes: n_batch, or fewer where an activation of n_batch rows
        would not fit the backend's largest storage binding (`max_binding`). Gemma 3's logits
        are 1 MiB a token (262,144 values): 512 of them ask for 512 MiB where lavapipe binds
        128 MiB. A graph of two tokens gives each activation's bytes per token."""
        limit = getattr(self.backend, "max_binding", None)
        if not limit:
            return self.n_batch
        if all_logits not in self._run_rows_of:
            g = self.net.build(2, all_logits)
            per_token = max((4 * math.prod(v.shape[1:]) for n in g.nodes
                             for v in (n.out, *n.attrs.get("also_out", ()))
                             if v is not None and v.shape[0] == 2), default=4)
            self._run_rows_of[all_logits] = max(1, min(self.n_batch, limit // per_token))
        return self._run_rows_of[all_logits]

    def _eval(self, ids: np.ndarray, pos: int, all_logits: bool, slot: int = 0) -> np.ndarray:
        """Run ids at positions pos.. of slot `slot` through the network in batches (of at most
        n_batch tokens, fewer where the backend's bindings need it); logits of the last token
        (1, n_vocab), or of every token (n, n_vocab)."""
        out = []
        step = self._run_rows(all_logits)
        starts = range(0, len(ids), step)
        # the chunk ends whose states are checkpoints: only the last ones are kept anyway
        keep = set(starts[-self.state_checkpoints:]) if self.state_checkpoints else set()
        for s in starts:
            chunk = ids[s:s + step]
            last = s + step >= len(ids)
            r = self._program(len(chunk), all_logits).run(chunk, pos + s, slot)
            if all_logits or last:
                out.append(r["logits"])
            if s in keep:
                head = self._slot_tokens[slot][:pos]
                self._checkpoint(slot, tuple(head) + tuple(map(int, ids[:s + len(chunk)])))
        return np.concatenate(out) if all_logits else out[-1]

    def _checkpoint(self, slot: int, tokens: tuple[int, ...]) -> None:
        """Keep a copy of slot `slot`'s state after `tokens` (the last state_checkpoints)."""
        cks = [c for c in self._checkpoints[slot] if c[0] != tokens]
        cks.append((tokens, self.backend.get_state(slot)))
        self._checkpoints[slot] = cks[-self.state_checkpoints:]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 (len(ids), n_vocab): the logits after each token, from an empty cache."""
        arr = self._check_ids(ids)
        if len(arr) == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        self.reset()
        r = self._eval(arr, 0, all_logits=True)
        self._cached = list(map(int, arr))
        return r

    def reset(self, slot: int | None = None) -> None:
        """Forget the cached tokens (and a recurrent state) of slot `slot` (None: every slot):
        the next prompt there starts afresh."""
        for s in range(self.n_seq) if slot is None else (self._check_slot(slot),):
            self._slot_tokens[s] = []
            self._checkpoints[s] = []
        self.backend.reset_state(slot)

    def common_prefix(self, ids: Sequence[int], slot: int = 0) -> int:
        """How many leading tokens of ids slot `slot` could reuse (prefill would not evaluate)."""
        cached = self._slot_tokens[self._check_slot(slot)]
        n = self._shared_prefix(ids, slot)
        spec = self.kv_spec
        if spec.recurrent:
            return self._recurrent_reuse(ids, slot, n)[0]
        # a ring (sliding-window) layer may have overwritten the rows a rollback needs
        if (n < len(cached) and spec.sizes and min(spec.sizes) < spec.n_ctx
                and len(cached) - n > min(spec.sizes) - self.config.sliding_window):
            return 0
        return min(n, len(ids) - 1)  # always evaluate the last token: its logits are needed

    def _shared_prefix(self, ids: Sequence[int], slot: int) -> int:
        n = 0
        for a, b in zip(self._slot_tokens[slot], ids):
            if a != b:
                break
            n += 1
        return n

    def _recurrent_reuse(self, ids: Sequence[int], slot: int,
                         n: int) -> tuple[int, tuple | None]:
        """A recurrent state cannot roll back: the slot's state serves an exact extension of its
        tokens; else the longest checkpoint whose tokens ids extends (within the n tokens ids
        shares with the slot's, so a hybrid model's KV rows before it are those tokens' too).
        (tokens reused, the checkpoint or None)."""
        cached = self._slot_tokens[slot]
        if 0 < n == len(cached) < len(ids):
            return n, None
        best = None
        for ck in self._checkpoints[slot]:
            p = len(ck[0])
            if p <= n and p < len(ids) and (best is None or p > len(best[0])) \
                    and tuple(int(t) for t in ids[:p]) == ck[0]:
                best = ck
        return (len(best[0]), best) if best is not None else (0, None)

    def _reusable(self, ids: Sequence[int], slot: int = 0) -> int:
        """common_prefix; a recurrent slot resumes from its checkpoint, or is reset when it
        cannot continue."""
        n = self.common_prefix(ids, slot)
        if self.kv_spec.recurrent:
            _, ck = self._recurrent_reuse(ids, slot, self._shared_prefix(ids, slot))
            if ck is not None:
                self.backend.set_state(ck[1], slot)
                self._slot_tokens[slot] = list(ck[0])
            elif n == 0:
                self.backend.reset_state(slot)
        return n

    def save_state(self, slot: int = 0) -> dict:
        """A snapshot of slot `slot`'s memory (tokens seen and, for recurrent models, the state)
        to continue a conversation later with restore_state() without re-reading its prefix."""
        slot = self._check_slot(slot)
        return {"tokens": list(self._slot_tokens[slot]), "state": self.backend.get_state(slot)}

    def restore_state(self, snap: dict, slot: int = 0) -> None:
        """Return slot `slot` to a snapshot taken with save_state(). For transformers the KV rows
        of the snapshot's tokens must still be in that slot's cache (no other prompt there
        since); recurrent models restore their state buffers, and hybrids (Qwen3.5: conv and
        delta states beside attention layers' KV rows) need both."""
        slot = self._check_slot(slot)
        self.backend.set_state(snap["state"], slot)
        self._slot_tokens[slot] = list(snap["tokens"])

    def prefill(self, ids: Sequence[int], slot: int = 0, logits: bool = True) -> np.ndarray:
        """Evaluate a prompt in slot `slot`, reusing the cached prefix it shares with that slot's
        last one; the last token's logits (n_vocab,). With logits=False the prompt must
        continue the slot's cached tokens and is evaluated in full (a chunk of a longer prompt:
        fastllm.Engine); nothing is returned."""
        slot = self._check_slot(slot)
        arr = self._check_ids(ids)
        if len(arr) == 0:
            raise ValueError("empty prompt: give at least one token (e.g. BOS)")
        start = self._reusable(arr, slot)
        if not logits and start < len(arr):
            n_cached = len(self._slot_tokens[slot])
            if start == len(arr) - 1 and n_cached >= len(arr):
                start = len(arr)  # the whole chunk is cached already
        self._slot_tokens[slot] = self._slot_tokens[slot][:start]
        out = None
        if start < len(arr):
            out = self._eval(arr[start:], start, all_logits=False, slot=slot)[-1]
        self._slot_tokens[slot] = list(map(int, arr))
        return out

    def _next_pos(self, slot: int, n: int = 1) -> tuple[int, int]:
        """(position of the next token of slot `slot`, how many of n steps fit its context)."""
        pos = len(self._slot_tokens[slot])
        n = min(n, self.n_ctx - pos)
        if n <= 0:
            raise ContextOverflowError(f"the context of {self.n_ctx} tokens is full")
        return pos, n

    def decode(self, token: int, slot: int = 0) -> np.ndarray:
        """Append one token after slot `slot`'s cached ones; its logits (n_vocab,)."""
        slot = self._check_slot(slot)
        pos, _ = self._next_pos(slot)
        r = self._program(1, False).run(np.array([token], np.int32), pos, slot)["logits"][-1]
        self._slot_tokens[slot].append(int(token))
        return r

    def decode_greedy(self, token: int, n: int, slot: int = 0) -> list[int]:
        """Append `token` after slot `slot`'s cached ones and decode greedily: the n tokens that
        follow (the last of them is not yet in the cache). On GPU backends the loop stays on the
        device."""
        slot = self._check_slot(slot)
        pos, n = self._next_pos(slot, n)
        toks = self._program(1, False).run_greedy(n, int(token), pos, slot)
        self._slot_tokens[slot] += [int(token)] + toks[:-1]
        return toks

    def decode_sampled(self, token: int, n: int, chain: dict[str, float],
                       uniforms: Sequence[float], recent: Sequence[int] = (),
                       slot: int = 0) -> list[int]:
        """As decode_greedy, each token drawn by fastllm.sampling's chain (`chain`: make_sampler's
        `chain`) with uniforms[i] for step i. `recent` is the history so far, ending with
        `token`: the repetition penalty's first window is its last last_n ids. On GPU backends
        the loop stays on the device."""
        slot = self._check_slot(slot)
        pos, n = self._next_pos(slot, n)
        toks = self._program(1, False).run_sampled(n, int(token), pos, chain,
                                                   np.asarray(uniforms)[:n], recent, slot)
        self._slot_tokens[slot] += [int(token)] + toks[:-1]
        return toks

    def _rows_args(self, tokens: Sequence[int], slots: Sequence[int]):
        slots = [self._check_slot(s) for s in slots]
        if len(set(slots)) != len(slots):
            raise ValueError(f"each slot may appear once in a decode step, got {slots}")
        toks = self._check_ids(tokens)
        if len(toks) != len(slots) or not slots:
            raise ValueError(f"decode_rows: {len(toks)} tokens for {len(slots)} slots")
        pos = [self._next_pos(s)[0] for s in slots]
        return (toks, np.asarray(slots, np.int32), np.asarray(pos, np.int32),
                self._program(len(slots), True, rows=True))

    def decode_rows(self, tokens: Sequence[int], slots: Sequence[int]) -> np.ndarray:
        """One decode step of several sequences at once: tokens[r] goes after the cached tokens
        of slot slots[r]. The weights are read once for all rows. Logits (len(slots), n_vocab)."""
        toks, sl, pos, prog = self._rows_args(tokens, slots)
        out = prog.run_rows(toks, sl, pos)["logits"]
        for t, s in zip(toks, sl):
            self._slot_tokens[s].append(int(t))
        return out

    def decode_rows_chain(self, tokens: Sequence[int], slots: Sequence[int],
                          params: Sequence[Any], uniforms: np.ndarray) -> np.ndarray:
        """len(uniforms) decode steps of several sequences, each step's tokens the next one's
        input (uniforms: (steps, rows), row r's number for each step): int32 (steps, rows).
        For chains without a penalty window or logprobs; on GPU backends the steps run back to
        back on the device with one read-back. The last step's tokens are not in the cache."""
        u = np.asarray(uniforms, np.float32)
        toks, sl, pos, prog = self._rows_args(tokens, slots)
        for s, p in zip(sl, pos):
            if p + len(u) > self.n_ctx:
                raise ContextOverflowError(f"{len(u)} steps from position {p} do not fit the "
                                           f"context of {self.n_ctx} (slot {s})")
        out = prog.run_rows_chain(toks, sl, pos, list(params), u)
        for r, s in enumerate(sl):
            self._slot_tokens[s] += [int(toks[r])] + [int(t) for t in out[:-1, r]]
        return out

    def decode_rows_sampled(self, tokens: Sequence[int], slots: Sequence[int],
                            params: Sequence[Any], uniforms: Sequence[float],
                            windows: Sequence[Sequence[int]],
                            masks: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """decode_rows, then each row's next token drawn by fastllm.sampling.sample_row with
        params[r] (RowSampling), uniforms[r], the penalty ids windows[r] and masks[r] (None, or
        an allowed-token bitmask of ceil(n_vocab / 32) words: a grammar's constraint): a
        fastllm.sampling.Sampled per row. GPU backends sample (and mask) on the device and read
        back only the tokens (and the log-probabilities rows ask for)."""
        toks, sl, pos, prog = self._rows_args(tokens, slots)
        kw = {"masks": list(masks)} if masks is not None else {}
        out = prog.run_rows_sampled(toks, sl, pos, list(params),
                                    np.asarray(uniforms, np.float32), list(windows), **kw)
        for t, s in zip(toks, sl):
            self._slot_tokens[s].append(int(t))
        return out
