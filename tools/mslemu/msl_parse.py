"""The MSL source side of mslemu: a .metal file's text after the C preprocessor, read into the
C++ translation unit the emulator builds (mslemu.py's module docstring lists what the pre-pass
rewrites), its kernels' signatures, and the lint rewrite; also what tools/mslemu/rules*.py use
to read kernel source (comment blanking, bracket matching, attributes)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

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


def blank_comments(src: str) -> str:
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


def split_top(s: str, sep=","):
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


def match_close(s: str, i: int, open_ch: str, close_ch: str) -> int:
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


def stmt_end(clean: str, i: int) -> int:
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


def read_attrs(text: str):
    """[(name, arg)] of all [[a, b(x), ...]] groups in text."""
    out = []
    for g in ATTR_GROUP_RE.findall(text):
        for item in split_top(g):
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
        e = stmt_end(clean, m.end())
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
        for k, part in enumerate(split_top(flat)):
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
    parts = split_top(body)
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


def template_before(clean: str, pos: int) -> bool:
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
    for raw in split_top(plist):
        attrs = read_attrs(raw)
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
    clean = blank_comments(src)
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
        e = stmt_end(clean, m.end())
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
        i = match_close(clean, m.end() - 1, "(", ")")
        plist = clean[m.end() : i - 1]
        rest = clean[i : i + 400]
        rest = ATTR_GROUP_RE.sub(" ", rest).lstrip()
        _blank_attrs(clean, m.end(), i - 1, edits)
        if not rest.startswith("{"):
            continue  # a declaration, not the definition
        params = _parse_params(plist, m.group("name"), strict)
        if template_before(clean, m.start()):
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
        gt = match_close(clean, s + lt, "<", ">")
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
