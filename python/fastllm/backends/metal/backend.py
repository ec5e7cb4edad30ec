"""The Metal backend (Apple Silicon): graph nodes become Metal compute dispatches.

Three layers:
- `MetalLowering` (lowering.py and its op-family mixins) turns a recorded `Graph` into a fixed
  list of `Dispatch`es (kernel name, kargs bytes, buffer references, grid; plan.py) over one
  activation arena with static offsets. It knows the kernels of metal/*.metal and nothing of the
  device.
- A runtime executes dispatch lists: `_NativeRuntime` (runtime.py) drives the `fastllm._metal`
  extension (one command buffer per run, encoded in C++); the tests drive the same lowering
  through an emulator runtime (tests/metal/mslemu_runtime.py) that runs the kernels on the CPU.
- `MetalBackend` (here) holds weights, KV cache and arena; a `_MetalProgram` (program.py) is
  recorded once and per run only the token ids and the `kargs_step` header in the arena change
  (DESIGN.md, principle 5).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ...errors import BackendError, UnsupportedError
from ...gguf import TensorInfo
from ...quants import GGMLType
from ..base import Backend, Graph, KVSpec, Program, Weight
from .lowering import MetalLowering
from .matmul import MM_MIN_ROWS  # noqa: F401 (tests use it from here)
from .plan import KV_TYPES, TYPE_NAMES, Dispatch, Plan, Ref, _up
from .program import _MetalProgram
from .runtime import _NativeRuntime


class _MetalWeight:
    """Where a weight's bytes live: `buffer` from `offset`, in type `type` (1-D weights are kept
    as f32: the element-wise and norm kernels read f32)."""

    def __init__(self, buffer, offset: int, nbytes: int, type: GGMLType):
        self.buffer, self.offset, self.nbytes, self.type = buffer, offset, nbytes, type



class MetalBackend(Backend):
    """Metal compute on Apple Silicon. `kv_type` is the cache element type ("f16" as llama.cpp,
    or "f32"); `runtime` replaces the native extension (the tests pass a CPU emulator);
    `self_check` compares a tiny graph with the reference backend before first use; `fuse`
    runs the fused ops of backends/fuse.py (off: one dispatch per graph op)."""

    name = "metal"

    def __init__(self, kv_type: str = "f16", runtime=None, metallib: str | None = None,
                 self_check: bool = True, fuse: bool = True):
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        self.kv_type = kv_type
        self.fuse = fuse
        self.rt = runtime if runtime is not None else _NativeRuntime(metallib)
        self.spec: KVSpec | None = None
        self.k: list[Any] = []
        self.v: list[Any] = []
        self.state: dict[str, Any] = {}  # recurrent state buffers by name (float32)
        self._buf = None
        self._host = np.zeros(0, np.uint8)
        self._gen = 0  # bumped when the arena or the cache is reallocated: programs re-record
        if self_check:
            self._self_check()

    def describe(self) -> str:
        return f"metal ({self.rt.name})"

    # -- memory ----------------------------------------------------------------------------
    def _arena(self, nbytes: int):
        if self._buf is None or self._host.nbytes < nbytes:
            self._buf = self.rt.buffer(_up(nbytes, 1 << 16))
            self._host = self.rt.host(self._buf)
            self._gen += 1
        return self._buf

    def load_weight(self, info: TensorInfo) -> Weight:
        if info.type not in TYPE_NAMES:
            raise UnsupportedError(f"{info.file}: tensor {info.name!r} has type {info.type.name}, "
                                   f"which the metal backend does not read")
        if len(info.shape) == 1 and info.type != GGMLType.F32:
            from ...quants import dequantize

            data = np.ascontiguousarray(dequantize(info.data, info.type, info.shape),
                                        np.float32).view(np.uint8).reshape(-1)
            buf, off = self.rt.weight(data)
            h = _MetalWeight(buf, off, data.nbytes, GGMLType.F32)
        else:
            try:
                buf, off = self.rt.weight(info.data)
            except BackendError as e:  # a tensor past the device's largest buffer
                raise BackendError(f"{info.file}: tensor {info.name!r}: {e}") from None
            h = _MetalWeight(buf, off, int(info.data.nbytes), info.type)
        return Weight(info.name, info.type, info.shape, h)

    def init_kv(self, spec: KVSpec) -> None:
        """The caches and recurrent states of spec.n_seq slots (sequences), one after another
        in each layer's buffer (backends/base.py's KVSpec)."""
        self.spec = spec
        esz = KV_TYPES[self.kv_type]
        self.k, self.v = [], []
        ns = spec.n_seq
        for layer, (s, d) in enumerate(zip(spec.sizes, spec.kv_dim)):
            if s * d == 0:  # a layer without a cache (a hybrid model's recurrent layer)
                self.k.append(None)
                self.v.append(None)
                continue
            for lst, which in ((self.k, "K"), (self.v, "V")):
                buf = self._alloc(ns * s * d * esz, f"the {which} cache of layer {layer} "
                                  f"({ns} x {s} rows of {d})")
                self.rt.host(buf)[:] = 0xFF  # NaN: a read of a row never written shows
                lst.append(buf)
        self.state = {name: self._alloc(4 * n * ns, f"recurrent state {name!r}")
                      for name, n in spec.state}
        self.reset_state()
        self._gen += 1

    def _alloc(self, nbytes: int, what: str):
        try:
            return self.rt.buffer(nbytes)
        except (RuntimeError, MemoryError, BackendError) as e:
            raise BackendError(f"metal: {what} needs {nbytes} bytes, which the device does not "
                               f"give ({e})") from None

    def compile(self, graph: Graph) -> Program:
        return _MetalProgram(self, graph)

    def _state_view(self, name: str, slot: int | None) -> np.ndarray:
        """Slot `slot`'s values of state buffer `name` (None: every slot's), in shared memory."""
        n = dict(self.spec.state)[name]
        ns = self.spec.n_seq
        if slot is None:
            return self.rt.host(self.state[name]).view(np.float32)[:n * ns]
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) \
                or not 0 <= slot < ns:
            raise ValueError(f"slot {slot!r} is not one of the state's {ns} (0..{ns - 1})")
        return self.rt.host(self.state[name]).view(np.float32)[n * slot:n * (slot + 1)]

    def reset_state(self, slot: int | None = None) -> None:
        for name in self.state:
            self._state_view(name, slot)[:] = 0.0

    def get_state(self, slot: int = 0) -> dict[str, np.ndarray]:
        return {name: self._state_view(name, slot).copy() for name in self.state}

    def set_state(self, state: dict[str, np.ndarray], slot: int = 0) -> None:
        for name, v in state.items():
            if name not in self.state:
                raise ValueError(f"no recurrent state {name!r} (the model has "
                                 f"{sorted(self.state)})")
            view = self._state_view(name, slot)
            v = np.asarray(v, np.float32).reshape(-1)
            if v.size != view.size:
                raise ValueError(f"state {name!r} has {view.size} values, got {v.size}")
            view[:] = v

    def close(self) -> None:
        self.k, self.v, self.state, self._buf = [], [], {}, None
        self._host = np.zeros(0, np.uint8)
        self._gen += 1

    # -- self-check ------------------------------------------------------------------------
    def _self_check(self) -> None:
        """Run embedding -> rms_norm -> Q8_0 mat-vec on this device and on the reference backend.
        A device or compiler that gets it wrong is refused (create_backend then falls back)."""
        from ..reference import ReferenceBackend

        rng = np.random.default_rng(0)
        d, n_out, vocab = 64, 40, 16
        emb = rng.standard_normal((vocab, d)).astype(np.float32)
        norm = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        blocks = np.zeros((n_out, d // 32), np.dtype([("d", "<f2"), ("qs", "i1", 32)]))
        blocks["d"] = (0.01 + 0.02 * rng.random(blocks.shape)).astype(np.float16)
        blocks["qs"] = rng.integers(-127, 128, blocks["qs"].shape)
        infos = [TensorInfo("emb", GGMLType.F32, (vocab, d), emb.view(np.uint8).reshape(-1), ""),
                 TensorInfo("norm", GGMLType.F32, (d,), norm.view(np.uint8), ""),
                 TensorInfo("w", GGMLType.Q8_0, (n_out, d), blocks.view(np.uint8).reshape(-1), "")]
        ref = ReferenceBackend()
        results = []
        for be in (self, ref):
            w = {i.name: be.load_weight(i) for i in infos}
            g = Graph(3)
            x = g.rms_norm(g.get_rows(w["emb"], g.tokens), w["norm"], 1e-5)
            g.output("y", g.matmul(x, w["w"]))
            results.append(be.compile(g).run(np.array([3, 0, 15], np.int32), 0)["y"])
        got, want = results
        err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-30))
        if not np.isfinite(err) or err > 1e-3:
            msg = (f"metal: the self-check on {self.rt.name} disagrees with the reference backend "
                   f"(relative error {err:.3g}); not using Metal")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            raise BackendError(msg)


__all__ = ["TYPE_NAMES", "Dispatch", "MetalBackend", "MetalLowering", "Plan", "Ref"]
