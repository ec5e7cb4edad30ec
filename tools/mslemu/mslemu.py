"""mslemu - run Metal Shading Language compute kernels on a Linux CPU.

fastllm's test tool for metal/*.metal (README.md beside this file; its Limits section says what
the emulator is not). tests/metal drives it through tests/metal/mslemu_runtime.py.

Pipeline:  kernel.metal --(clang -E: the file's own macros and #includes; metal_* headers
           left out)--> --(small source pre-pass)--> C++ TU
           --(clang++ + include/msl_shim.hpp)--> kernel.so --(ctypes)--> dispatch

The pre-pass does only what macros cannot:
  * `threadgroup T x[N], y[M];` local variables -> `static thread_local T x[N], y[M];`
    (one OS worker runs a whole threadgroup as fibers, so thread_local storage
    is exactly threadgroup storage) + a call per variable that fills it with 0xFF (NaN)
  * half literals 1.0h -> 1.0f16
  * static_cast<float4>(v) -> msl::vconvert<float4>(v) (component-wise conversion, as in MSL)
  * `constant T name [[function_constant(i)]];` -> a constexpr holding the value given to
    Library(..., function_constants={i or "name": value}) (one .so per set of values, like
    a specialised MTLFunction); is_function_constant_defined(name) works
  * kernel entry points, plain (`kernel void f(...)`) or explicit instantiations of kernel
    templates (`template [[host_name("f_f32")]] kernel void f<float>(...);` and
    `template [[host_name("f_f32")]] kernel f_t f<float>;`, also from macros): the
    [[...]] attributes are removed and a trampoline per entry point feeds
    [[buffer(i)]], [[threadgroup(i)]] and the builtin attributes from the runtime.
    Parameter types come from decltype(f<...>), so they may depend on template parameters;
    a parameter with [[function_constant(b)]] gets nullptr when b is false.
Everything else (address-space keywords, vector constructors, metal_stdlib)
is plain C++ in include/.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import weakref

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
INC = os.path.join(HERE, "include")
CXX = os.environ.get("MSLEMU_CXX", "clang++-16")
# -g only on request: it costs ~15% of the build and is only needed to debug a kernel in gdb
CXXFLAGS = [
    "-std=c++17",
    "-O1",
    *(["-g"] if os.environ.get("MSLEMU_DEBUG") else []),
    "-fPIC",
    "-shared",
    "-pthread",
    "-Wno-unknown-attributes",
    "-Wno-duplicate-decl-specifier",
    "-Wno-unused-value",
    "-Xclang",
    "-ffloat16-excess-precision=none",  # per-operation half rounding, like the GPU
    "-ffp-contract=off",
]

# MSL version macros seen by the kernel source (both in the macro-expansion step and the build)
PP_DEFINES = ["-D__METAL_VERSION__=310", "-DMETAL_EMULATOR=1"]

# a sibling module: tools/mslemu is on sys.path wherever mslemu is imported
from msl_parse import BUILTINS_1, BUILTINS_3, Param, preprocess


def _arg_expr(p: Param, i: int) -> str:
    P = f"::msl::rt::param_t<__F, {i}>"
    if p.attr == "buffer":
        e = f"::msl::rt::buffer_arg<{P}>(__t, {p.attr_arg})"
    elif p.attr == "threadgroup":
        e = f"reinterpret_cast<{P}>(__t.tgmem[{p.attr_arg}])"
    elif p.attr in BUILTINS_3:
        e = f"::msl::rt::bi<{P}>({BUILTINS_3[p.attr]})"
    elif p.attr in BUILTINS_1:
        e = f"({P})({BUILTINS_1[p.attr]})"
    else:
        raise ValueError(f"unsupported kernel parameter attribute [[{p.attr}]] on {p.name}")
    if p.fc:
        e = f"(bool({p.fc}) ? {e} : ::msl::rt::absent_arg<{P}>())"
    return e


def expand(metal_path: str, extra_flags=()) -> str:
    """Run the C preprocessor over the .metal file: its own macros and #includes are expanded
    (line markers kept), the metal_* stand-in headers are left out."""
    defs = [f for f in extra_flags if f.startswith(("-D", "-U", "-I"))]
    r = subprocess.run(
        [
            CXX,
            "-E",
            "-x",
            "c++",
            "-std=c++17",
            "-DMSLEMU_PREPASS",
            *PP_DEFINES,
            *defs,
            "-I",
            INC,
            os.path.abspath(metal_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise RuntimeError("MSL preprocessing failed:\n" + r.stderr)
    return r.stdout


def translate(metal_path: str, function_constants=None, extra_flags=()) -> str:
    body, kernels = preprocess(
        expand(metal_path, extra_flags), function_constants=function_constants
    )
    lines = [
        '#include "msl_shim.hpp"',
        '#include "msl_macros.hpp"',
        body,
        "",
        '#line 1 "mslemu-generated-trampolines"',
    ]
    seen = set()
    for n, k in enumerate(kernels):
        if k.name in seen:
            raise ValueError(f"two kernels named {k.name!r} in {metal_path}")
        seen.add(k.name)
        args = ", ".join(_arg_expr(p, i) for i, p in enumerate(k.params))
        sig = ", ".join(
            f'"{p.name}:{p.attr}{"(" + p.attr_arg + ")" if p.attr_arg else ""}"' for p in k.params
        )
        on = ", ".join(f"bool({p.fc})" if p.fc else "true" for p in k.params)
        lines.append(
            f"static void __msl_tramp_{n}(const ::msl::rt::ThreadCtx& __t) {{ "
            f"using __F = decltype({k.expr}); {k.expr}({args}); }}"
        )
        lines.append(
            f'static ::msl::rt::Registrar __msl_reg_{n}("{k.name}", &__msl_tramp_{n}, '
            f"{{{sig}}}, {{{on}}});"
        )
    return "\n".join(lines) + "\n"


LINT_FLAGS = [
    "-x",
    "clcpp",
    "-cl-std=clc++2021",
    "-target",
    "spir64",
    "-fsyntax-only",
    "-Xclang",
    (
        "-cl-ext=-__opencl_c_generic_address_space,-__opencl_c_pipes,"
        "-__opencl_c_program_scope_global_variables,-__opencl_c_device_enqueue"
    ),
    "-Wno-unknown-attributes",
    "-Wno-duplicate-decl-specifier",
]


def lint(
    metal_path: str,
    outdir: str = os.environ.get(
        "MSLEMU_BUILD", os.path.join(tempfile.gettempdir(), "mslemu-build")
    ),
) -> str:
    """Address-space type check of a .metal file (clang 'C++ for OpenCL' mode).
    Returns clang's diagnostics ('' if clean); raises on errors."""
    os.makedirs(outdir, exist_ok=True)
    body, _ = preprocess(expand(metal_path), lint=True)
    tu = os.path.join(outdir, os.path.basename(metal_path) + ".lint.clcpp")
    with open(tu, "w") as f:
        f.write(f'#include "msl_lint.hpp"\n{body}')
    r = subprocess.run(
        [CXX.replace("clang++", "clang"), *LINT_FLAGS, *PP_DEFINES, "-I", INC, tu],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise RuntimeError("MSL address-space lint failed:\n" + r.stderr)
    return r.stderr


def _shim_digest() -> str:
    """Hash of include/: a changed shim/runtime must not reuse a cached kernel .so."""
    h = hashlib.sha1()
    for n in sorted(os.listdir(INC)):
        with open(os.path.join(INC, n), "rb") as f:
            h.update(n.encode() + f.read())
    return h.hexdigest()


def build(
    metal_path: str,
    outdir: str = os.environ.get(
        "MSLEMU_BUILD", os.path.join(tempfile.gettempdir(), "mslemu-build")
    ),
    extra_flags=(),
    function_constants=None,
) -> str:
    os.makedirs(outdir, exist_ok=True)
    cpp = translate(metal_path, function_constants, extra_flags)
    h = hashlib.sha1(
        (cpp + " ".join(CXXFLAGS) + " ".join(extra_flags) + _shim_digest()).encode()
    ).hexdigest()[:12]
    base = os.path.join(outdir, os.path.splitext(os.path.basename(metal_path))[0] + "_" + h)
    if not os.path.exists(base + ".so"):
        # per-process temporaries, then an atomic rename: concurrent test runs sharing the cache
        # never read a half-written file
        tmp = f"{base}.{os.getpid()}"
        with open(tmp + ".cpp", "w") as f:
            f.write(cpp)
        cmd = [
            CXX,
            *CXXFLAGS,
            *PP_DEFINES,
            *extra_flags,
            "-I",
            INC,
            "-o",
            tmp + ".so",
            tmp + ".cpp",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode:
            raise RuntimeError("MSL emulator compile failed:\n" + r.stderr)
        os.replace(tmp + ".so", base + ".so")
        os.replace(tmp + ".cpp", base + ".cpp")  # kept: compiler messages point into it
    return base + ".so"


class _Stats(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "threadgroups",
            "threads",
            "tg_barriers",
            "simd_ops",
            "divergent_simd_ops",
            "barrier_after_return",
            "divergent_barriers",
        )
    ]


class KernelError(RuntimeError):
    pass


BUFFER_ALIGN = (
    16  # MTLBuffer contents are (at least) 16-byte aligned: float4/half8 loads rely on it
)


class Library:
    """Rough analogue of MTLLibrary + compute pipelines for one .metal file.
    function_constants: {index or name: value} for `[[function_constant(i)]]` declarations
    (like MTLFunctionConstantValues; each distinct set is its own build)."""

    def __init__(self, metal_path: str, extra_flags=(), function_constants=None):
        self.path = build(
            metal_path, extra_flags=extra_flags, function_constants=function_constants
        )
        self.lib = ctypes.CDLL(self.path)
        L = self.lib
        L.msl_dispatch.restype = ctypes.c_int
        L.msl_dispatch.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.POINTER(_Stats),
        ]
        L.msl_alloc_guarded.restype = ctypes.c_void_p
        L.msl_alloc_guarded.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        L.msl_free_guarded.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        L.msl_kernel_names.restype = ctypes.c_char_p
        L.msl_kernel_names.argtypes = []
        L.msl_kernel_signature.restype = ctypes.c_char_p
        L.msl_kernel_signature.argtypes = [ctypes.c_char_p]
        L.msl_stacks_mapped.restype = ctypes.c_uint64
        L.msl_stacks_mapped.argtypes = []
        L.msl_install_segv_handler()
        self._slack = {}  # data address -> (nbytes, slack bytes after the end that must stay 0xFF)
        self._sigs = {}

    def buffer(self, arr: np.ndarray) -> np.ndarray:
        """Copy into a 'shared storage' buffer: 16-byte aligned start, the end padded with 0xFF
        up to 16 bytes and then a PROT_NONE page (overruns past the padding fault at once;
        writes into the padding are reported by dispatch())."""
        arr = np.ascontiguousarray(arr)
        n = max(arr.nbytes, 1)
        p = self.lib.msl_alloc_guarded(n, BUFFER_ALIGN)
        if not p:
            raise MemoryError(f"msl_alloc_guarded({n})")
        raw = (ctypes.c_ubyte * n).from_address(p)
        weakref.finalize(raw, self.lib.msl_free_guarded, p, n, BUFFER_ALIGN)
        weakref.finalize(raw, self._slack.pop, p, None)
        flat = np.frombuffer(raw, dtype=arr.dtype, count=arr.size)
        out = flat.reshape(arr.shape)
        out[...] = arr
        slack = -n % BUFFER_ALIGN
        if slack:
            self._slack[p] = (n, slack)
        return out

    def stacks_mapped(self) -> int:
        """Fiber stacks this library has mapped so far (pooled between dispatches)."""
        return int(self.lib.msl_stacks_mapped())

    def kernels(self) -> list[str]:
        """Names of the library's kernels (host names of template instantiations)."""
        return sorted(filter(None, self.lib.msl_kernel_names().decode().split("\n")))

    def signature(self, name):
        """[(param name, attribute, index or None, enabled)] of a kernel's parameters."""
        if name not in self._sigs:
            s = self.lib.msl_kernel_signature(name.encode())
            if s is None:
                raise KernelError(f"no kernel named {name}")
            params = []
            for ent in filter(None, s.decode().split("; ")):
                m = re.match(r"(\w+):(\w+)(?:\((\d+)\))?(\[off\])?$", ent)
                params.append(
                    (
                        m.group(1),
                        m.group(2),
                        int(m.group(3)) if m.group(3) else None,
                        not m.group(4),
                    )
                )
            self._sigs[name] = params
        return self._sigs[name]

    def dispatch(
        self,
        name,
        buffers,
        threadgroups=None,
        threads=None,
        threads_per_threadgroup=(32, 1, 1),
        threadgroup_memory=(),
        policy="forward",
        seed=0,
        strict=False,
        workers=2,
    ):
        """threadgroups=(x,y,z): dispatchThreadgroups; threads=(x,y,z): dispatchThreads.
        buffers: list (position = [[buffer(i)]] index, None = unbound) or {index: array}.
        threadgroup_memory: byte lengths for [[threadgroup(i)]] (multiples of 16, like Metal)."""
        if isinstance(buffers, dict):
            bl = [None] * (max(buffers) + 1 if buffers else 0)
            for k, v in buffers.items():
                bl[k] = v
            buffers = bl
        for pname, attr, idx, on in self.signature(name):
            if not on:
                continue
            if attr == "buffer" and (idx >= len(buffers) or buffers[idx] is None):
                raise KernelError(f"{name}: argument {pname} [[buffer({idx})]] is not bound")
            if attr == "threadgroup" and idx >= len(threadgroup_memory):
                raise KernelError(
                    f"{name}: argument {pname} [[threadgroup({idx})]] has no threadgroup "
                    f"memory length"
                )
        for i, n in enumerate(threadgroup_memory):
            if n % 16:
                raise KernelError(
                    f"threadgroup memory length {n} at index {i} is not a multiple of 16 "
                    f"(setThreadgroupMemoryLength rejects it)"
                )
        grid = threadgroups if threadgroups is not None else threads
        grid = tuple(grid) + (1,) * (3 - len(grid))
        tptg = tuple(threads_per_threadgroup) + (1,) * (3 - len(threads_per_threadgroup))
        ptrs = (ctypes.c_void_p * max(len(buffers), 1))(
            *[None if b is None else b.ctypes.data for b in buffers]
        )
        tgl = (ctypes.c_size_t * max(len(threadgroup_memory), 1))(*threadgroup_memory)
        err = ctypes.create_string_buffer(1024)
        st = _Stats()
        rc = self.lib.msl_dispatch(
            name.encode(),
            ptrs,
            len(buffers),
            tgl,
            len(threadgroup_memory),
            (ctypes.c_uint32 * 3)(*grid),
            (ctypes.c_uint32 * 3)(*tptg),
            int(threadgroups is None),
            {"forward": 0, "reverse": 1, "random": 2}[policy],
            seed,
            int(strict),
            workers,
            err,
            len(err),
            ctypes.byref(st),
        )
        if rc:
            raise KernelError(err.value.decode())
        for i, b in enumerate(buffers):
            if b is None or b.ctypes.data not in self._slack:
                continue
            n, slack = self._slack[b.ctypes.data]
            pad = (ctypes.c_ubyte * slack).from_address(b.ctypes.data + n)
            if any(x != 0xFF for x in pad):
                raise KernelError(
                    f"{name}: out-of-bounds write past the end of buffer({i}) ({n} bytes)"
                )
        return {f: getattr(st, f) for f, _ in _Stats._fields_}
