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
import math
import os
import re
import subprocess
import tempfile
import weakref
from dataclasses import dataclass

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

BUILTINS_3 = {
    "thread_position_in_grid": "__t.tpig",
    "thread_position_in_threadgroup": "__t.tpitg",
    "threadgroup_position_in_grid": "__t.tgpig",
    "threads_per_threadgroup": "__t.tptg",
    "dispatch_threads_per_threadgroup": "__t.tptg",
    "threadgroups_per_grid": "__t.tgpg",
    "threads_per_grid": "__t.tpg",
}
BUILTINS_1 = {
    "thread_index_in_threadgroup": "__t.tiitg",
    "thread_index_in_simdgroup": "__t.lane",
    "simdgroup_index_in_threadgroup": "__t.sgitg",
    "simdgroups_per_threadgroup": "__t.sgptg",
    "dispatch_simdgroups_per_threadgroup": "__t.sgptg",
    "thread_execution_width": "__t.simd_width",
    "threads_per_simdgroup": "__t.simd_width",
    "thread_index_in_quadgroup": "(__t.lane & 3u)",
    "quadgroup_index_in_threadgroup": "(__t.tiitg >> 2)",
}


def _blank_comments(src: str) -> str:
    """Same length/newlines as src; comments, string/char literals and preprocessor lines
    (clang -E line markers, #pragma) blanked."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "#" and not src[src.rfind("\n", 0, i) + 1 : i].strip() or src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == '"' or (c == "'" and not (i and (src[i - 1].isalnum()))):  # not a digit separator
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _split_top(s: str, sep=","):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def _match_close(s: str, i: int, open_ch: str, close_ch: str) -> int:
    """s[i] == open_ch; index just past the matching close_ch."""
    depth = 0
    while i < len(s):
        if s[i] == open_ch:
            depth += 1
        elif s[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_ch}{close_ch}")


def _stmt_end(clean: str, i: int) -> int:
    """Index of the ';' ending the statement/declaration that continues at i (depth 0), or -1
    if a '{' or '}' comes first."""
    depth = 0
    while i < len(clean):
        ch = clean[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in "{}":
            return -1
        elif depth == 0 and ch == ";":
            return i
        i += 1
    return -1


@dataclass
class Param:
    type: str
    name: str
    attr: str
    attr_arg: str | None
    fc: str | None = None  # [[function_constant(fc)]]: argument exists only if fc is true


@dataclass
class KernelSig:
    name: str  # host name: what dispatch() is called with
    params: list
    expr: str = ""  # C++ expression naming the function: f, or f<float, 4>


VEC_STATIC_CAST = re.compile(
    r"\bstatic_cast\s*<\s*((?:metal::)?"
    r"(?:bool|char|uchar|short|ushort|int|uint|long|ulong|half|float)[234])\s*>"
)
HALF_LIT = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[hH]\b")
KERNEL_RE = re.compile(r"(?:\bkernel\b|\[\[\s*kernel\s*\]\])\s+void\s+(?P<name>[A-Za-z_]\w*)\s*\(")
ATTR_GROUP_RE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
TG_KW = re.compile(r"\bthreadgroup\b(?!\s*\()")
FC_DECL = re.compile(
    r"\bconstant\s+(?P<type>[A-Za-z_][\w:<>, ]*?)\s+(?P<name>[A-Za-z_]\w*)\s*"
    r"\[\[\s*function_constant\s*\(\s*(?P<idx>\d+)\s*\)\s*\]\]\s*;"
)
INST_RE = re.compile(r"\btemplate\s*(?=\[\[)")
HOST_NAME_RE = re.compile(r"\bhost_name\s*\(\s*((?:\"(?:[^\"\\]|\\.)*\"\s*)+)\)")
BINDING_ATTRS = {"buffer", "threadgroup"} | set(BUILTINS_3) | set(BUILTINS_1)


def _attrs(text: str):
    """[(name, arg)] of all [[a, b(x), ...]] groups in text."""
    out = []
    for g in ATTR_GROUP_RE.findall(text):
        for item in _split_top(g):
            mm = re.match(r"\s*([A-Za-z_][\w:]*)\s*(?:\((.*)\))?\s*$", item, re.DOTALL)
            if mm:
                out.append((mm.group(1), (mm.group(2) or "").strip() or None))
    return out


def _blank_attrs(clean: str, start: int, end: int, edits: list):
    for am in ATTR_GROUP_RE.finditer(clean, start, end):
        edits.append((am.start(), am.end(), " " * (am.end() - am.start())))


def _tg_declarations(clean: str):
    """(start, stmt_end, [names]) for each `threadgroup T a[N], b;` variable declaration."""
    for m in TG_KW.finditer(clean):
        j = m.start() - 1
        while j >= 0 and clean[j].isspace():
            j -= 1
        if j >= 0 and clean[j] not in ";{}":
            continue  # parameter, cast, template argument, `const threadgroup T*` ...
        e = _stmt_end(clean, m.end())
        if e < 0:
            continue
        body = clean[m.end() : e]
        flat, depth = [], 0  # body with bracket contents removed
        for ch in body:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif depth == 0:
                flat.append(ch)
        flat = "".join(flat)
        if any(c in flat for c in "()*&="):
            continue  # pointer/reference/function declaration, not a threadgroup variable
        names = []
        for k, part in enumerate(_split_top(flat)):
            ids = re.findall(r"[A-Za-z_]\w*", part)
            if not ids:
                break
            names.append(ids[-1] if k == 0 else ids[0])
        if names:
            yield m.start(), e, names


def _tg_lint_rewrite(src: str, s: int, e: int, names) -> str:
    """lint mode: `threadgroup T a[N], b;` -> references to __local objects
    (`auto& a = ::msl::tg_var<T [N]>(); ...`), which C++ for OpenCL accepts
    in non-kernel functions (kernel templates) too. The declaration's line breaks are kept at its
    end, so that the lines after it keep their numbers."""
    body = src[s + len("threadgroup") : e]
    parts = _split_top(body)
    first = parts[0]
    k = first.find("[")
    before, dims0 = (first, "") if k < 0 else (first[:k], first[k:])
    nm = re.search(r"([A-Za-z_]\w*)\s*$", before)
    typ = before[: nm.start()]
    decls = [(names[0], dims0)] + [
        (n, p[p.find(n) + len(n) :]) for n, p in zip(names[1:], parts[1:])
    ]
    text = " ".join(f"auto& {n} = ::msl::tg_var<{typ.strip()} {d.strip()}>();" for n, d in decls)
    return text + "\n" * src.count("\n", s, e + 1)


def _fc_literal(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return '__builtin_nanf("")'
        if v in (float("inf"), float("-inf")):
            return ("-" if v < 0 else "") + "__builtin_inff()"
        return v.hex()
    raise TypeError(f"function constant value {v!r}: only bool, int and float are supported")


def _template_before(clean: str, pos: int) -> bool:
    """Is the declaration starting at pos preceded by `template <...>` (attributes skipped)?"""
    s = clean[:pos].rstrip()
    while s.endswith("]]"):
        k = s.rfind("[[")
        if k < 0:
            break
        s = s[:k].rstrip()
    if not s.endswith(">"):
        return False
    depth, i = 0, len(s) - 1
    while i >= 0:
        if s[i] == ">":
            depth += 1
        elif s[i] == "<":
            depth -= 1
            if depth == 0:
                break
        i -= 1
    return re.search(r"\btemplate\s*$", s[: max(i, 0)]) is not None


def _parse_params(plist: str, kname: str, strict: bool = True):
    """The Params of a kernel's parameter list. strict: a parameter without a binding attribute
    (buffer, threadgroup, a compute built-in) is an error, as the emulator cannot feed it;
    otherwise it gets attr None (tools/mslemu/rules.py reports it as an Apple-rules violation)."""
    params = []
    for raw in _split_top(plist):
        attrs = _attrs(raw)
        decl = ATTR_GROUP_RE.sub(" ", raw).strip()
        nm = re.search(r"([A-Za-z_]\w*)\s*$", decl)
        if not nm:
            raise ValueError(f"cannot parse kernel parameter {raw!r} of {kname}")
        bind = [a for a in attrs if a[0] in BINDING_ATTRS]
        other = [a for a in attrs if a[0] not in BINDING_ATTRS and a[0] != "function_constant"]
        if not bind and not strict:
            params.append(Param(decl[: nm.start()].strip(), nm.group(1), None, None))
            continue
        if not bind:
            what = f"[[{other[0][0]}]]" if other else "no attribute"
            raise ValueError(
                f"unsupported kernel parameter {nm.group(1)} of {kname}: {what} "
                f"(buffer, threadgroup and the compute builtins are supported)"
            )
        fc = [a[1] for a in attrs if a[0] == "function_constant"]
        params.append(
            Param(
                decl[: nm.start()].strip(),
                nm.group(1),
                bind[0][0],
                bind[0][1],
                fc[0] if fc else None,
            )
        )
    return params


def preprocess(src: str, lint: bool = False, function_constants=None, strict: bool = True):
    """(rewritten source, [KernelSig]) of macro-expanded MSL; line structure is kept. strict=False
    accepts kernel parameters the emulator cannot feed (see _parse_params)."""
    fcv = dict(function_constants or {})
    clean = _blank_comments(src)
    edits = []  # (start, end, replacement)

    for s, e, names in _tg_declarations(clean):
        if lint:
            edits.append((s, e + 1, _tg_lint_rewrite(src, s, e, names)))
            continue
        touch = "".join(f" ::msl::rt::tg_touch((void*)&{n}, sizeof({n}));" for n in names)
        kw = s + len("threadgroup")
        edits.append((s, kw, "static thread_local"))
        edits.append((e + 1, e + 1, touch))
    for m in [] if lint else HALF_LIT.finditer(clean):
        edits.append(
            (
                m.start(),
                m.end(),
                m.group(1) + ("f16" if "." in m.group(1) or "e" in m.group(1).lower() else ".0f16"),
            )
        )

    for m in VEC_STATIC_CAST.finditer(clean):
        edits.append((m.start(), m.end(), f"::msl::vconvert<{m.group(1)}>"))

    used_fc = set()
    for m in FC_DECL.finditer(clean):
        typ, name, idx = src[m.start("type") : m.end("type")], m.group("name"), int(m.group("idx"))
        key = name if name in fcv else idx if idx in fcv else None
        if lint or key is None:
            val, defined = f"{typ}()", "false"
        else:
            used_fc.add(key)
            val, defined = f"{typ}({_fc_literal(fcv[key])})", "true"
        kw = "constant constexpr" if lint else "static constexpr"
        edits.append(
            (
                m.start(),
                m.end(),
                f"{kw} {typ} {name} = {val}; {kw} bool __msl_fcdef_{name} = {defined};",
            )
        )
    unknown = set(fcv) - used_fc
    if unknown and not lint:
        raise ValueError(
            f"function_constants {sorted(map(str, unknown))} match no "
            f"`constant T name [[function_constant(index)]];` declaration"
        )

    # explicit instantiations `template [[host_name("x")]] kernel ...;`
    insts = []  # (start, end, host_name)
    for m in INST_RE.finditer(clean):
        e = _stmt_end(clean, m.end())
        if e < 0:
            continue
        hn = HOST_NAME_RE.search(src, m.end(), e)
        host = "".join(re.findall(r"\"((?:[^\"\\]|\\.)*)\"", hn.group(1))) if hn else None
        insts.append((m.start(), e, host))
        _blank_attrs(clean, m.end(), e, edits)
        if lint:
            for km in re.finditer(r"\bkernel\b", clean[m.end() : e]):
                edits.append((m.end() + km.start(), m.end() + km.end(), "      "))

    kernels, templates = [], {}
    for m in KERNEL_RE.finditer(clean):
        if any(s <= m.start() < e for s, e, _ in insts):
            continue  # `template [[host_name]] kernel void f(...)`: handled below
        i = _match_close(clean, m.end() - 1, "(", ")")
        plist = clean[m.end() : i - 1]
        rest = clean[i : i + 400]
        rest = ATTR_GROUP_RE.sub(" ", rest).lstrip()
        _blank_attrs(clean, m.end(), i - 1, edits)
        if not rest.startswith("{"):
            continue  # a declaration, not the definition
        params = _parse_params(plist, m.group("name"), strict)
        if _template_before(clean, m.start()):
            templates[m.group("name")] = params
            if lint and clean.startswith(
                "kernel", m.start()
            ):  # OpenCL: "kernel functions cannot be
                edits.append((m.start(), m.start() + 6, " " * 6))  # used in a template declaration"
        else:  # `[[host_name("alias")]] kernel void f(...)` renames a plain kernel
            pre = re.search(
                r"\[\[\s*host_name\s*\(\s*\"([^\"]*)\"\s*\)\s*\]\]\s*$",
                src[max(0, m.start() - 300) : m.start()],
            )
            kernels.append(
                KernelSig(pre.group(1) if pre else m.group("name"), params, m.group("name"))
            )

    for s, e, host in insts:
        if host is None:
            continue
        best = None
        for tname in templates:
            for tm in re.finditer(rf"\b{re.escape(tname)}\s*<", clean[s:e]):
                if best is None or tm.start() < best[0]:
                    best = (tm.start(), tname, tm.end() - 1)
                break
        if best is None:
            raise ValueError(
                f'[[host_name("{host}")]]: no `kernel_name<template args>` of a kernel template '
                f"in this explicit instantiation (deduced template arguments are not supported)"
            )
        st, tname, lt = best
        gt = _match_close(clean, s + lt, "<", ">")
        kernels.append(KernelSig(host, templates[tname], src[s + st : gt].strip()))

    edits.sort(key=lambda x: (x[0], x[1]))
    out, pos = [], 0
    for s, e, r in edits:
        if s < pos:
            continue
        out.append(src[pos:s])
        out.append(r)
        pos = e
    out.append(src[pos:])
    return "".join(out), kernels


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
