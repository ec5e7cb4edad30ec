"""The values a graph is made of: model weights as a backend holds them (Weight), what a model
keeps between runs (KVSpec), symbolic activations (Value) and recorded ops (Node), and the shape
checks the graph builders share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import GGUFError
from ..quants import GGMLType


def _require(ok: bool, what: str, detail: Any = None) -> None:
    """The shape checks of the graph builders. They fail only for a model file whose tensors or
    metadata disagree (a hand-made or damaged file), so they raise GGUFError, not an assert.
    `detail` is a function, called only on failure (its operands may be None otherwise)."""
    if not ok:
        extra = f" {detail()}" if detail is not None else ""
        raise GGUFError(f"inconsistent model: {what} does not hold{extra}")


def _same_or_row(a, b) -> None:
    """An element-wise op's operands: b a Value of a's shape, or a Weight of a row's length."""
    if isinstance(b, Weight):
        _require(math.prod(b.shape) == a.cols, "len(b) == a.cols",
                 lambda: (b.name, b.shape, a.shape))
    else:
        _require(tuple(b.shape) == tuple(a.shape), "a.shape == b.shape",
                 lambda: (a.src, a.shape, b.src, b.shape))


@dataclass(eq=False)
class Weight:
    """A model tensor as a backend holds it (quantized where the file is). `shape` is numpy order:
    a matrix is (n_out, n_in); `handle` is the backend's own object."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    handle: Any = None


@dataclass(frozen=True)
class KVSpec:
    """What a model keeps between runs. Transformers: per layer, `sizes[l]` rows of `kv_dim`
    values for K and for V; a layer whose size is below n_ctx is a ring (sliding-window
    attention): position p lives in row p % size. Recurrent models (RWKV): named float32 state
    buffers, `state[name] = n_values`, zero at the start of a sequence, no KV rows."""

    n_ctx: int
    kv_dim: tuple[int, ...]  # per layer (n_kv_head * head_dim)
    sizes: tuple[int, ...]  # per layer
    state: tuple[tuple[str, int], ...] = ()
    # sequences held at once (slots): a layer's cache holds n_seq * sizes[l] rows, slot s at rows
    # s * size.. (position p in row s * size + p % size); a state buffer n_seq * n values, slot s
    # at s * n.. (the batched engine; 1 for one sequence)
    n_seq: int = 1

    @property
    def recurrent(self) -> bool:
        """True when the model's memory is a fixed-size state: no rollback, no KV rows."""
        return bool(self.state)

    @property
    def n_layers(self) -> int:
        return len(self.sizes)


@dataclass(eq=False)
class Value:
    """A symbolic activation in a graph: float32 (or int32) of a static shape (rows = tokens)."""

    id: int
    shape: tuple[int, ...]
    dtype: str = "f32"
    src: str = ""  # the weight of the product that made it, for load errors

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass(eq=False)
class Node:
    op: str
    args: tuple[Any, ...]  # Values and Weights
    attrs: dict[str, Any]
    out: Value | None
