"""The WebGPU backend: WGSL kernels through wgpu-py (Vulkan, D3D12 or Metal underneath).

This module owns the device: adapter and feature choice, limits, buffers, the pipeline cache,
weight upload (repack.py) and the KV cache. Graph lowering and replay live in
program.py (mat-muls: matmul.py, attention: attention.py), kernel sources
in shaders/*.wgsl (assembled by shaders.py).

Weights stay quantized on the device; a matrix larger than one storage binding allows is split
by rows into parts (one dispatch each). Activations and the KV cache are float32.
"""

from __future__ import annotations

import hashlib
import math
import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ...errors import ArgumentError, BackendError, UnsupportedError
from ...gguf import TensorInfo
from ...quants import GGMLType, row_bytes, type_size
from ..base import Backend, Graph, KVSpec, Program, Weight
from . import adapters, repack, rwkv, shaders
from .persist import Persistent

OPTIONAL_FEATURES = ("shader-f16", "subgroup")
# limits raised from WebGPU's defaults to what the adapter offers
_LIMITS = ("max-storage-buffer-binding-size", "max-buffer-size",
           "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
           "max-compute-workgroup-size-x", "max-storage-buffers-per-shader-stage",
           "max-compute-workgroups-per-dimension")
_UPLOAD_CHUNK = 32 << 20  # bytes of raw weight repacked and written at a time


def _trusted_module(device, code: str, label: str):
    """wgpu-native's wgpuDeviceCreateShaderModuleTrusted with no run-time checks, wrapped as
    wgpu-py's own shader module object (wgpu-py exposes only the checked entry point)."""
    from wgpu.backends.wgpu_native import _api

    src = _api.new_struct_p("WGPUShaderSourceWGSL *", code=_api.to_c_string_view(code))
    src[0].chain.next = _api.ffi.NULL
    src[0].chain.sType = _api.lib.WGPUSType_ShaderSourceWGSL
    desc = _api.new_struct_p("WGPUShaderModuleDescriptor *",
                             nextInChain=_api.ffi.cast("WGPUChainedStruct *", src),
                             label=_api.to_c_string_view(label))
    mod = _api.libf.wgpuDeviceCreateShaderModuleTrusted(device._internal, desc, 0)
    if mod == _api.ffi.NULL:
        raise RuntimeError("shader module creation failed")
    return _api.GPUShaderModule(label, mod, device)


def _wgpu():
    try:
        import wgpu
    except ImportError as e:
        raise BackendError("the webgpu backend needs the wgpu package (pip install wgpu); or use "
                           "backend='reference'") from e
    _create_instance_quietly()
    return wgpu


@lru_cache(maxsize=1)
def _create_instance_quietly() -> None:
    """Create wgpu's (process-wide) instance without the device-select layer's noise.

    Mesa's Vulkan device-select layer asks the Wayland compositor for the default GPU; with no
    session (XDG_RUNTIME_DIR unset or gone: a container, ssh, CI) libwayland prints "error:
    XDG_RUNTIME_DIR is invalid or not set in the environment." on stderr at every adapter
    enumeration, two to six times a run. The layer only orders the devices (wgpu chooses by
    its power preference) and is left out of an instance whose environment sets NODEVICE_SELECT
    (the layer's disable_environment), so it is set while the instance is created, when there
    is no session and the user has not asked the layer for a device (MESA_VK_DEVICE_SELECT,
    DRI_PRIME)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if (runtime and os.path.isdir(runtime)) or any(
            k in os.environ for k in ("NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME")):
        return
    try:
        from wgpu.backends.wgpu_native._api import get_wgpu_instance
    except ImportError:  # another wgpu-py layout: the instance comes later, with the noise
        return
    os.environ["NODEVICE_SELECT"] = "1"
    try:
        get_wgpu_instance()
    except Exception:  # noqa: BLE001, S110 (a failing instance fails again, with its error, on use)
        pass
    finally:
        del os.environ["NODEVICE_SELECT"]


def adapter_names() -> list[str]:
    """Each WebGPU adapter present, as "device (API, GPU or CPU)"."""
    try:
        adapters = _wgpu().gpu.enumerate_adapters_sync()
    except (RuntimeError, OSError) as e:  # wgpu's native library fails to load
        raise BackendError(f"webgpu: no adapters ({e})") from e
    return [f"{a.info.get('device', '?')} ({a.info.get('backend_type', '?')}, "
            f"{'CPU' if a.info.get('adapter_type', 'CPU') == 'CPU' else 'GPU'})"
            for a in adapters]


@lru_cache(maxsize=1)
def hardware_adapter_available() -> bool:
    """True when a GPU adapter (not a CPU rasterizer such as lavapipe) is present."""
    try:
        adapters = _wgpu().gpu.enumerate_adapters_sync()
    except (BackendError, RuntimeError, OSError):  # no wgpu, or its native library fails to load
        return False
    return any(a.info.get("adapter_type", "CPU") != "CPU" for a in adapters)


@dataclass(eq=False)
class _Part:
    row0: int
    n_rows: int
    buffers: list[Any]


@dataclass(eq=False)
class GPUWeight:
    """A weight on the device: as a matrix (repacked parts) and/or as a float32 vector."""

    info: TensorInfo
    tname: str  # kernel-name suffix of its type
    n: int  # rows
    k: int  # row length
    units: int  # units of 32 weights per row
    parts: list[_Part] = field(default_factory=list)
    vec: Any = None  # float32 buffer, for element-wise use
    host: np.ndarray | None = None  # float32 values of small vectors (rope factors)


class WebGPUBackend(Backend):
    """Runs graphs on a WebGPU adapter.

    `features`: optional features to use at most (default: all of shader-f16 and subgroup the
    adapter has); `disable`: features to leave off (tests force the fallback paths this way).
    `max_binding`: bytes per storage binding, below the device's limit (tests of weight splits).
    `fuse`: merge neighbouring ops into one dispatch where a fused kernel exists (off: one
    dispatch per op, for tests and benchmarks that compare the two).
    `checked`: compile kernels with naga's run-time checks (an index clamp on every array access
    and a counter in every loop). Off by default: the kernels are ours, their loops end and their
    indices stay in bounds by construction (the op tests check outputs against NaN-poisoned
    buffers), and the driver's robust buffer access still bounds every storage access. The
    checks cost the mat-vec kernels most of their speed (benchmarks/NOTES.md, section 6).
    FASTLLM_WEBGPU_CHECKED=1 turns them on for every backend.
    `int_dot`: one-token mat-vecs of Q8_0, Q4_K and Q6_K weights quantize x to bytes (per 32
    values, as llama.cpp does) and multiply with integer dot products (quantize_x.wgsl,
    mul_mvq.wgsl): the float kernels spend most of their time converting quant bits. x then
    carries ~0.4% rounding per value. On by default; FASTLLM_WEBGPU_INT_DOT=0 turns it off.
    """

    name = "webgpu"

    def __init__(self, features: set[str] | None = None, disable: set[str] | None = None, *,
                 max_binding: int | None = None, fuse: bool = True,
                 checked: bool | None = None, int_dot: bool | None = None,
                 adapter: int | None = None):
        wgpu = _wgpu()
        self._closed = False
        self.fuse = fuse
        if checked is None:
            checked = os.environ.get("FASTLLM_WEBGPU_CHECKED", "") not in ("", "0")
        self.checked = checked
        if int_dot is None:
            int_dot = os.environ.get("FASTLLM_WEBGPU_INT_DOT", "1") not in ("", "0")
        self.int_dot = int_dot
        try:
            adapter = adapters.request(wgpu, adapter)
        except ArgumentError:
            raise
        except Exception as e:
            raise BackendError(f"webgpu: no adapter could be requested ({e}); install a Vulkan "
                               f"driver (e.g. mesa-vulkan-drivers) or use backend='reference'"
                               ) from e
        if adapter is None:
            raise BackendError("webgpu: no WebGPU adapter found; install a Vulkan driver (e.g. "
                               "mesa-vulkan-drivers) or use backend='reference'")
        self.adapter = adapter
        self.info = dict(adapter.info)
        have = set(adapter.features)
        use = {f for f in OPTIONAL_FEATURES if f in have}
        if features is not None:
            use &= set(features)
        if disable:
            use -= set(disable)
        extra = {"timestamp-query"} & have  # benchmarks time kernels with it
        limits = {k: adapter.limits[k] for k in _LIMITS if k in adapter.limits}
        try:
            self.device = adapter.request_device_sync(required_features=sorted(use | extra),
                                                      required_limits=limits)
        except Exception as e:
            raise BackendError(f"webgpu: could not open the device {self.info.get('device')!r}: "
                               f"{e}") from e
        self.features = frozenset(use)
        self.subgroups = "subgroup" in use
        self.f16 = "shader-f16" in use
        self.limits = dict(self.device.limits)
        lim = min(self.limits["max-storage-buffer-binding-size"], self.limits["max-buffer-size"])
        self.max_binding = min(lim, max_binding) if max_binding else lim
        self.uniform_align = max(16, self.limits.get("min-uniform-buffer-offset-alignment", 256))
        self.queue = self.device.queue
        self._modules: dict[str, Any] = {}
        self._pipelines: dict[tuple, Any] = {}
        self.pipeline_sources: dict[int, tuple[str, str]] = {}  # id(pipeline) -> (WGSL, entry)
        self.pipeline_keys: dict[int, tuple] = {}  # id(pipeline) -> pipeline()'s arguments
        self._buffers: list[Any] = []  # weights: freed by close()
        # bytes of device buffers alive now and at most so far (fastllm bench reports them)
        self.bytes_live = self.bytes_peak = 0
        self._programs: weakref.WeakSet = weakref.WeakSet()
        self.spec: KVSpec | None = None
        self.kv: list[tuple[Any, Any]] = []
        self.state: dict[str, Any] = {}  # RWKV: recurrent state buffers (rwkv.py)
        self.state_sizes: dict[str, int] = {}
        self.kv_version = 0  # programs compiled against an older cache rebuild their bindings
        self.rope_tables: dict[tuple, Any] = {}
        self.dummy = self.buffer(16, "STORAGE", "dummy")
        # one-token decoding loops: persistent step kernels where allowed (persist.py); the
        # path the last loop took, for Model's repr and `fastllm bench`
        self.persistent = Persistent(self)
        self.decode_path = "ordinary (no decoding loop yet)"
        self._buffers.append(self.dummy)

    def describe(self) -> str:
        feats = ",".join(sorted(self.features)) or "no optional features"
        return (f"webgpu ({self.info.get('device', '?')}, {self.info.get('backend_type', '?')}, "
                f"{feats})")

    # -- errors and buffers --------------------------------------------------------------------
    @contextmanager
    def errors(self, what: str):
        """Turn wgpu's errors (validation, out of memory, a lost device) into BackendError."""
        if self._closed:
            raise BackendError("webgpu: the backend is closed")
        try:
            yield
        except (BackendError, UnsupportedError, ValueError):
            raise
        except Exception as e:
            raise BackendError(f"webgpu: {what} failed on {self.info.get('device')!r}: "
                               f"{type(e).__name__}: {e}") from e

    def buffer(self, size: int, usage: str, label: str = "", binding: bool = True):
        """A device buffer of at least `size` bytes (a multiple of 16). Checked against the
        device's limits first: a clear error instead of a failed dispatch."""
        size = max(16, -(-int(size) // 16) * 16)
        cap = self.max_binding if binding else self.limits["max-buffer-size"]
        if size > cap:
            raise BackendError(f"webgpu: buffer {label!r} needs {size} bytes, more than the "
                               f"device allows in one binding ({cap}); use a smaller n_ctx or "
                               f"n_batch")
        # wgpu-py raises the device's validation and out-of-memory errors from the call itself
        # (error scopes are not exposed by its native backend)
        with self.errors(f"allocating {size} bytes for {label!r}"):
            buf = self.device.create_buffer(size=size, usage=usage, label=label)
        self.bytes_live += size
        self.bytes_peak = max(self.bytes_peak, self.bytes_live)
        return buf

    def free(self, buf) -> None:
        """Destroy a buffer made by buffer(), keeping the memory count (fastllm bench) true."""
        self.bytes_live -= buf.size
        buf.destroy()

    def stats(self) -> dict[str, str]:
        """What `fastllm bench` reports: device memory of this backend's buffers."""
        mib = 1 << 20
        weights = sum(b.size for b in self._buffers)
        kv = sum(k.size + v.size for k, v in self.kv if k is not None)
        kv += sum(b.size for b in getattr(self, "state", {}).values())
        return {"GPU memory peak": f"{self.bytes_peak / mib:.1f} MiB",
                "of which weights": f"{weights / mib:.1f} MiB",
                "KV cache/state": f"{kv / mib:.1f} MiB",
                "peak / (weights + KV)": f"{self.bytes_peak / max(1, weights + kv):.3f}",
                "decode path": self.decode_path}

    # -- pipelines -----------------------------------------------------------------------------
    def pipeline(self, file: str, entry: str, wtype: str | tuple[str, ...] | None = None,
                 consts: dict[str, int | bool] | None = None, f16_tile: bool = False,
                 variant: str | None = None):
        """The compute pipeline of entry point `entry` (cached per backend)."""
        key = (file, entry, wtype, tuple(sorted((consts or {}).items())), f16_tile, variant)
        p = self._pipelines.get(key)
        if p is None:
            if isinstance(wtype, tuple):  # one type per slot (mul_mv_multi.wgsl)
                src = shaders.multi_source(wtype, subgroups=self.subgroups, consts=consts or {},
                                           q8=entry.endswith("_q8"), glu="_glu_" in entry)
            else:
                src = shaders.module_source(file, subgroups=self.subgroups, wtype=wtype,
                                            consts=consts, f16_tile=f16_tile, variant=variant)
            digest = hashlib.sha1(src.encode()).hexdigest()
            with self.errors(f"compiling {entry} ({file})"):
                mod = self._modules.get(digest)
                if mod is None:
                    mod = self._shader_module(src, file)
                    self._modules[digest] = mod
                p = self.device.create_compute_pipeline(
                    layout="auto", compute={"module": mod, "entry_point": entry}, label=entry)
            self._pipelines[key] = p
            self.pipeline_sources[id(p)] = (src, entry)
            self.pipeline_keys[id(p)] = (file, entry, wtype, dict(consts or {}), f16_tile,
                                         variant)
        return p

    def _shader_module(self, src: str, label: str):
        """A shader module, without naga's run-time checks unless `checked` (see the class)."""
        if not self.checked:
            try:
                return _trusted_module(self.device, src, label)
            except (ImportError, AttributeError):  # a wgpu build without the native entry point
                self.checked = True
        return self.device.create_shader_module(code=src, label=label)

    # -- weights -------------------------------------------------------------------------------
    def load_weight(self, info: TensorInfo) -> Weight:
        t = GGMLType(info.type)
        shape = tuple(int(s) for s in info.shape)
        k = shape[-1]
        n = math.prod(shape[:-1]) if len(shape) > 1 else 1
        tname = repack.type_name(t)
        if t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) and k % type_size(t)[0]:
            raise UnsupportedError(f"{info.file}: tensor {info.name!r} rows of {k} values are not "
                                   f"whole {t.name} blocks")
        w = GPUWeight(info, tname, n, k, repack.units_per_row(t, k))
        if len(shape) == 1:
            w.host = repack.to_f32(t, info.data, shape)
            w.vec = self._upload(w.host.view(np.uint8), f"{info.name} (f32)")
        else:
            self._upload_matrix(w)
        return Weight(info.name, t, shape, w)

    def _upload(self, data: np.ndarray, label: str):
        buf = self.buffer(data.nbytes, "STORAGE|COPY_DST", label)
        with self.errors(f"uploading {label!r}"):
            self.queue.write_buffer(buf, 0, np.ascontiguousarray(data).reshape(-1))
        self._buffers.append(buf)
        return buf

    def _upload_matrix(self, w: GPUWeight) -> None:
        t, info = GGMLType(w.info.type), w.info
        rb = row_bytes(t, w.k)
        raw = np.asarray(info.data).reshape(-1)
        if raw.nbytes < rb * w.n:
            raise BackendError(f"{info.file}: tensor {info.name!r} has {raw.nbytes} bytes, "
                               f"needs {rb * w.n}")
        # rows per part: every array of the part fits one binding (an even count keeps the
        # packed f16 scales of a chunk word-aligned)
        per_row = max(repack.array_sizes(t, 2, w.k)) / 2
        rows_per_part = int((self.max_binding - 16) // per_row) // 2 * 2
        if rows_per_part < 2:
            raise BackendError(f"webgpu: a row of {info.name!r} does not fit one binding")
        chunk = max(2, min(rows_per_part, _UPLOAD_CHUNK // max(rb, 1)) // 2 * 2)
        for r0 in range(0, w.n, rows_per_part):
            nr = min(rows_per_part, w.n - r0)
            sizes = repack.array_sizes(t, nr, w.k)
            bufs = [self.buffer(s, "STORAGE|COPY_DST", f"{info.name}[{r0}:{r0 + nr}]")
                    for s in sizes]
            self._buffers.extend(bufs)
            offsets = [0] * len(bufs)
            for c0 in range(r0, r0 + nr, chunk):
                cn = min(chunk, r0 + nr - c0)
                arrays = repack.repack(t, raw[c0 * rb:(c0 + cn) * rb], cn, w.k)
                with self.errors(f"uploading {info.name!r}"):
                    for i, a in enumerate(arrays):
                        if len(a) % 4:
                            a = np.concatenate([a, np.zeros(4 - len(a) % 4, np.uint8)])
                        self.queue.write_buffer(bufs[i], offsets[i], a)
                        offsets[i] += len(a)
            w.parts.append(_Part(r0, nr, bufs))

    def vector(self, w: Weight):
        """The float32 buffer of a weight used element-wise (made on first use for matrices)."""
        h: GPUWeight = w.handle
        if h.vec is None:
            h.host = repack.to_f32(GGMLType(h.info.type), h.info.data, h.info.shape)
            h.vec = self._upload(h.host.view(np.uint8), f"{h.info.name} (f32)")
        return h.vec

    # -- KV cache ------------------------------------------------------------------------------
    def init_kv(self, spec: KVSpec) -> None:
        self._free_kv()
        self.kv_version += 1
        self.spec = spec
        nan = np.full(1 << 20, np.nan, np.float32)
        for layer, (rows, dim) in enumerate(zip(spec.sizes, spec.kv_dim)):
            pair = []
            rows *= spec.n_seq  # the slots one after another
            if rows * dim == 0:  # a layer without a cache (a hybrid model's recurrent layer)
                self.kv.append((None, None))
                continue
            for which in "kv":
                size = rows * dim * 4
                buf = self.buffer(size, "STORAGE|COPY_DST",
                                  f"cache_{which}[{layer}] ({rows} x {dim})")
                # NaN, as the reference: a read of a row never written shows in the output
                with self.errors("clearing the KV cache"):
                    for off in range(0, size, nan.nbytes):
                        self.queue.write_buffer(buf, off, nan[:min(nan.size, (size - off) // 4)])
                pair.append(buf)
            self.kv.append((pair[0], pair[1]))
        rwkv.init_state(self, spec)  # RWKV: the recurrent state buffers

    def _free_kv(self) -> None:
        for k, v in self.kv:
            if k is not None:
                self.free(k)
                self.free(v)
        self.kv = []
        rwkv.free_state(self)  # RWKV
        self.spec = None

    # RWKV: the recurrent state buffers (rwkv.py)
    def reset_state(self, slot: int | None = None) -> None:
        rwkv.reset_state(self, slot)

    def get_state(self, slot: int = 0) -> dict[str, np.ndarray]:
        return rwkv.get_state(self, slot)

    def set_state(self, state: dict[str, np.ndarray], slot: int = 0) -> None:
        rwkv.set_state(self, state, slot)

    # -- programs ------------------------------------------------------------------------------
    def compile(self, graph: Graph) -> Program:
        from .program import WebGPUProgram

        prog = WebGPUProgram(self, graph)
        self._programs.add(prog)
        return prog

    def close(self) -> None:
        if self._closed:
            return
        for p in list(self._programs):
            p.release()
        self._free_kv()
        for b in self._buffers:
            self.free(b)
        self._buffers = []
        self._pipelines.clear()
        self._modules.clear()
        self._closed = True
