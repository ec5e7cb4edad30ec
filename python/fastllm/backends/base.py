"""The op set: what a model may ask of a backend, and the graph it is recorded into.

A model never computes. It records one forward pass over `n_tokens` tokens into a `Graph` with the
builder methods below (and, for mixtures of experts and recurrent layers, those of
ops_families.py's mixins; the values they take and make are ir.py's); a backend compiles that
graph once into a `Program` and runs it many times.
The start position of the tokens is *not* part of the graph: it is a run-time scalar (`pos`), so
the decode graph (n_tokens = 1) is recorded once and replayed for every token, and a GPU backend
only rewrites a few bytes per step (DESIGN.md, principle 5).

Every op's meaning is defined by `backends/reference.py` (NumPy, float32; the functions of
numpy_ops.py); the WebGPU and Metal kernels are tested against it. Op names here match kernel
names `kernel_<op>[_<variant>]_<type>`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..gguf import TensorInfo
from .ir import KVSpec, Node, Value, Weight, _require, _same_or_row
from .ops_families import ExpertOps, RecurrentOps

# the values of a graph live in ir.py and the family-specific builders in ops_families.py; the
# names are re-exported here, where models and backends have always found them
__all__ = ["Backend", "Graph", "KVSpec", "Node", "Program", "Value", "Weight", "_require",
           "_same_or_row"]


@dataclass(eq=False)
class Graph(ExpertOps, RecurrentOps):
    """One forward pass over `n_tokens` tokens starting at the run-time position `pos` of one
    sequence (the run's slot). With `rows=True` each row is instead one token of a sequence of
    its own, at a (slot, position) of its own given at run time (Program.run_rows): a decode step
    of several sequences at once. Only rope, kv_store, attention and the state ops depend on
    where a row is; every other op treats rows alike."""

    n_tokens: int
    nodes: list[Node] = field(default_factory=list)
    outputs: dict[str, Value] = field(default_factory=dict)
    _next: int = 0
    rows: bool = False

    def __post_init__(self) -> None:
        self.tokens = self._value((self.n_tokens,), "i32")  # input: token ids, int32 [n]

    # -- plumbing ------------------------------------------------------------------------------
    def _value(self, shape: tuple[int, ...], dtype: str = "f32") -> Value:
        v = Value(self._next, tuple(int(s) for s in shape), dtype)
        self._next += 1
        return v

    def _add(self, op: str, args: tuple, out_shape, dtype: str = "f32", **attrs) -> Value | None:
        out = self._value(out_shape, dtype) if out_shape is not None else None
        self.nodes.append(Node(op, args, attrs, out))
        return out

    def output(self, name: str, v: Value) -> None:
        """Mark v as a result of the program, returned by Program.run under `name`."""
        self.outputs[name] = v

    # -- ops -----------------------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: Value) -> Value:
        """Embedding lookup: rows ids of w (n_vocab, d) -> (n, d) float32."""
        return self._add("get_rows", (w, ids), (ids.shape[0], w.shape[-1]))

    def rms_norm(self, x: Value, w: Weight | None, eps: float, group: int | None = None) -> Value:
        """x / sqrt(mean(x^2) + eps) * w over each contiguous group of `group` values of a row
        (default: the whole row; head_dim for per-head q/k norms). w has `group` values."""
        g = group or x.cols
        _require(x.cols % g == 0, "x.cols % g == 0")
        _require(w is None or math.prod(w.shape) == g, "len(w) == group",
                 lambda: (w.name, w.shape, g))
        return self._add("rms_norm", (x, w), x.shape, eps=float(eps), group=int(g))

    def matmul(self, x: Value, w: Weight) -> Value:
        """x (n, k) @ w.T where w is (m, k) in any supported type -> (n, m)."""
        _require(w.shape[-1] == x.cols, "w.shape[-1] == x.cols", lambda: (w.name, w.shape, x.shape))
        out = self._add("mul_mat", (x, w), (x.shape[0], w.shape[0]))
        out.src = w.name
        return out

    def add(self, a: Value, b: Value | Weight) -> Value:
        """a + b; a Weight b of a row's length is added to every row (biases)."""
        _same_or_row(a, b)
        return self._add("add", (a, b), a.shape)

    def mul(self, a: Value, b: Value | Weight) -> Value:
        """a * b elementwise; a Weight b of a row's length is broadcast over rows."""
        _same_or_row(a, b)
        return self._add("mul", (a, b), a.shape)

    def scale(self, x: Value, s: float) -> Value:
        return self._add("scale", (x,), x.shape, s=float(s))

    def rope(self, x: Value, *, n_head: int, head_dim: int, n_rot: int, base: float,
             freq_scale: float = 1.0, neox: bool = False, freq_factors: Weight | None = None
             ) -> Value:
        """Rotary embedding of each head of x (n, n_head*head_dim) at positions pos..pos+n-1.
        The first n_rot dims of a head rotate: pairs (2i, 2i+1) in normal mode, (i, i+n_rot/2) in
        NeoX mode, by angle p * freq_scale * base^(-2i/n_rot) / freq_factors[i]."""
        _require(
            x.cols == n_head * head_dim and n_rot <= head_dim and n_rot % 2 == 0,
            "x.cols == n_head * head_dim and n_rot <= head_dim and n_rot % 2 == 0")
        _require(freq_factors is None or math.prod(freq_factors.shape) == n_rot // 2,
                 "len(freq_factors) == n_rot / 2",
                 lambda: (freq_factors.name, freq_factors.shape, n_rot))
        return self._add("rope", (x, freq_factors), x.shape, n_head=n_head, head_dim=head_dim,
                         n_rot=n_rot, base=float(base), freq_scale=float(freq_scale),
                         neox=bool(neox))

    def kv_store(self, layer: int, k: Value, v: Value) -> None:
        """Write k, v (n, kv_dim) into the layer's cache at positions pos..pos+n-1."""
        _require(tuple(k.shape) == tuple(v.shape), "k.shape == v.shape",
                 lambda: (k.src, k.shape, v.src, v.shape))
        self._add("kv_store", (k, v), None, layer=layer)

    def attention(self, q: Value, layer: int, *, n_head: int, n_kv_head: int, head_dim: int,
                  scale: float, window: int = 0, softcap: float = 0.0,
                  sinks: Weight | None = None) -> Value:
        """Causal attention of q (n, n_head*head_dim) at positions pos..pos+n-1 over the layer's
        cache (positions 0..pos+i for row i; only the last `window` of them when window > 0).
        GQA: query head h reads KV head h // (n_head // n_kv_head). `sinks` (n_head,): one more
        logit per head in the softmax's denominator, attending to nothing (gpt-oss's
        attn_sinks; ggml's soft_max sinks: taken as it is, neither scaled nor capped), so a
        head's weights may sum to less than 1. It rides in the attrs (a fused form of the node
        keeps it)."""
        _require(q.cols == n_head * head_dim and n_kv_head > 0 and n_head % n_kv_head == 0,
                 "q.cols == n_head * head_dim and n_head % n_kv_head == 0",
                 lambda: (q.src, q.shape, n_head, n_kv_head, head_dim))
        if sinks is not None:
            _require(tuple(sinks.shape) == (n_head,), "sinks.shape == (n_head,)",
                     lambda: (sinks.name, sinks.shape, n_head))
        return self._add("attention", (q,), q.shape, layer=layer, n_head=n_head,
                         n_kv_head=n_kv_head, head_dim=head_dim, scale=float(scale),
                         window=int(window), softcap=float(softcap), sinks=sinks)

    def swiglu(self, gate: Value, up: Value) -> Value:
        """silu(gate) * up."""
        _same_or_row(gate, up)
        return self._add("swiglu", (gate, up), gate.shape)

    def geglu(self, gate: Value, up: Value) -> Value:
        """gelu(gate) * up, GELU in its tanh approximation (as ggml's gelu)."""
        _same_or_row(gate, up)
        return self._add("geglu", (gate, up), gate.shape)

    def swiglu_oai(self, gate: Value, up: Value, alpha: float = 1.702,
                   limit: float = 7.0) -> Value:
        """gpt-oss's clamped SwiGLU (ggml_swiglu_oai): x = min(gate, limit),
        y = clamp(up, -limit, limit), x * sigmoid(alpha * x) * (y + 1). llama.cpp's
        LLM_FFN_SWIGLU_OAI_MOE passes alpha 1.702 and limit 7.0."""
        _same_or_row(gate, up)
        return self._add("swiglu_oai", (gate, up), gate.shape, alpha=float(alpha),
                         limit=float(limit))

    def last_row(self, x: Value) -> Value:
        """The last row of x: (1, d). Generation needs only the last token's logits. A one-row
        x is its own last row (no op: a decode step saves a dispatch)."""
        if x.shape[0] == 1:
            return x
        return self._add("last_row", (x,), (1, x.cols))

    def argmax(self, x: Value) -> Value:
        """Index of each row's maximum (first on ties): int32 (n,)."""
        return self._add("argmax", (x,), (x.shape[0],), "i32")


class Program(ABC):
    """A compiled graph. `run` evaluates it for `tokens` starting at position `pos` of the
    sequence in slot `slot`; a rows-mode graph runs with `run_rows` instead."""

    @abstractmethod
    def run(self, tokens: np.ndarray, pos: int, slot: int = 0) -> dict[str, np.ndarray]:
        ...

    def run_rows(self, tokens: np.ndarray, slots: np.ndarray,
                 positions: np.ndarray) -> dict[str, np.ndarray]:
        """A rows-mode graph (Graph.rows): row r is token tokens[r] of the sequence in slot
        slots[r] at position positions[r]."""
        raise NotImplementedError(f"{type(self).__name__}: rows mode")

    def run_rows_sampled(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                         params: Sequence[Any], uniforms: np.ndarray,
                         windows: Sequence[Sequence[int]],
                         masks: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """run_rows, then row r's next token drawn by fastllm.sampling.sample_row with
        params[r] (a RowSampling), uniforms[r], windows[r] (the penalty's ids) and masks[r]
        (None, or the row's allowed-token bitmask): a fastllm.sampling.Sampled per row. GPU
        backends override this to sample on the device and read back only the tokens."""
        from ..sampling import sample_row
        from .sample_rows import check_masks

        logits = self.run_rows(tokens, slots, positions)["logits"]
        masks = check_masks(masks, len(params), logits.shape[-1]) or [None] * len(params)
        return [sample_row(logits[r], params[r], float(uniforms[r]), windows[r], masks[r])
                for r in range(len(params))]

    def run_rows_chain(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray,
                       params: Sequence[Any], uniforms: np.ndarray) -> np.ndarray:
        """len(uniforms) steps of run_rows_sampled, each step's tokens the next one's input at
        the next positions: int32 (steps, rows). For chains without a penalty window or
        logprobs (the window would change with each step's tokens). GPU backends override this
        to run the steps back to back on the device with one read-back."""
        toks = np.asarray(tokens, np.int32).copy()
        pos = np.asarray(positions).copy()
        out = []
        for u in np.asarray(uniforms, np.float32):
            got = self.run_rows_sampled(toks, slots, pos, params, u, [()] * len(params))
            toks = np.array([g.id for g in got], np.int32)
            out.append(toks)
            pos = pos + 1
        return np.stack(out)

    def run_greedy(self, n_steps: int, first_token: int, pos: int, slot: int = 0) -> list[int]:
        """Greedy decoding with a one-token program whose output is "logits": first_token goes
        in at position pos, each step's argmax (first maximum on ties) is the next step's input.
        Returns the n_steps tokens produced; the last one is not yet in the cache. GPU backends
        override this to keep the loop on the device (no read-back per token)."""
        out, tok = [], int(first_token)
        for i in range(n_steps):
            tok = int(np.argmax(self.run(np.array([tok], np.int32), pos + i, slot)["logits"][-1]))
            out.append(tok)
        return out

    def run_sampled(self, n_steps: int, first_token: int, pos: int, chain: dict[str, float],
                    uniforms: np.ndarray, recent: Sequence[int] = (), slot: int = 0) -> list[int]:
        """As run_greedy, each step's token drawn by fastllm.sampling.draw with `chain`
        (make_sampler's: temperature, top_k, top_p, min_p, penalty, last_n) and uniforms[i] for
        step i; the penalty's window is the last last_n ids of `recent` (ending with
        first_token) and the tokens produced. GPU backends override this to keep the loop on
        the device."""
        from ..sampling import draw

        hist = [int(t) for t in recent] or [int(first_token)]
        out, tok = [], int(first_token)
        for i in range(n_steps):
            logits = self.run(np.array([tok], np.int32), pos + i, slot)["logits"][-1]
            tok = draw(logits, u=float(uniforms[i]), recent=hist, **chain)
            out.append(tok)
            hist.append(tok)
        return out


class Backend(ABC):
    """What every backend implements. Weights are loaded once; graphs compile once."""

    name: str = "base"

    @abstractmethod
    def load_weight(self, info: TensorInfo) -> Weight:
        """Take a GGUF tensor onto the backend, keeping its type (quantized stays quantized)."""

    @abstractmethod
    def init_kv(self, spec: KVSpec) -> None:
        """Allocate (or re-allocate) the KV cache."""

    @abstractmethod
    def compile(self, graph: Graph) -> Program:
        """Turn a recorded graph into a program that can be run many times."""

    def reset_state(self, slot: int | None = None) -> None:
        """Zero the recurrent state of slot `slot` (None: every slot): a new sequence. KV caches
        need no reset: rows past a sequence's current position are never read."""

    def get_state(self, slot: int = 0) -> dict[str, np.ndarray]:
        """Copies of slot `slot`'s recurrent state buffers (for saving a conversation)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray], slot: int = 0) -> None:
        """Restore slot `slot`'s buffers from get_state()."""

    def close(self) -> None:
        """Release device memory."""

    def describe(self) -> str:
        return self.name
