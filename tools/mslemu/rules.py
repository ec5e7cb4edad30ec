"""Apple's compile rules for Metal kernels that clang-as-C++ (the emulator) does not enforce.

    python tools/mslemu/rules.py [--std metal3.0] FILE.metal ...

prints `FILE:LINE: KERNEL: RULE (spec section)` for each violation, in the .metal file or in a
header it includes, and exits 1 when there is one (0 when every file is clean, 2 on bad usage).
KERNEL names the kernels (host names) whose code holds the violation, `-` for code no kernel
reaches. Importable: `check(paths, std)` returns the Violations. Section numbers are those of the
Metal Shading Language Specification, version 4 (2025-06-05); Table 5.8 is the table of kernel
function input attributes. Rules that are fastllm's own, stricter than the specification, say so.

What is checked (rule id, MSL section: rule; each has a planted-violation test in
tests/metal/test_rules.py):
  position-shape    5.2.3.6  position/size inputs all scalars or all vectors of one length
  attr-type         5.2.3.6  each built-in input of a type Table 5.8 allows, passed by value
  attr-match        5.2.3.6  the types that must agree: thread_position_in_grid and
                             threads_per_grid; thread_position_in_threadgroup,
                             threads_per_threadgroup and dispatch_threads_per_threadgroup; the
                             SIMD-group ones; thread_index_in_threadgroup uint when the position
                             in the threadgroup is
  param-kind        4, 5.2   each kernel parameter a device/constant buffer, a threadgroup buffer
                             or a built-in input; no size_t/ptrdiff_t; no unknown attribute
  buffer-index      5.2.1    [[buffer(n)]] / [[threadgroup(n)]] unique, below 31, and written
                             (Apple would assign a missing one; fastllm binds by index)
  kernel-return     5.1.3    kernels return void
  kernel-name       1.5.1, 5.1.10  kernel and host names unique (in a file and across the
                             files of one metallib); no function named main
  max-threads       5.1.3    [[max_total_threads_per_threadgroup(n)]] at most 1024
  kernel-call       5.1      no kernel calls another kernel
  tg-scope          4.4      threadgroup variables only in a kernel function's own body
  tg-size           4.4      a kernel's threadgroup arrays, sized by clang, at most 32 KB
  double            2.1      no double, long double or long long
  atomic64          2.6      no 64-bit atomics (ulong max/min only, past the M1 floor)
  recursion         1.5.4    no recursive calls (a pipeline's call stack is 1 deep by default)
  function-pointer  5.1.4    no function pointers (only [[visible]] functions have an address)
  cxx-unsupported   1.5.4    no lambda (before 3.2), dynamic_cast, typeid, new/delete, goto,
                             register, thread_local, virtual, derived classes, exceptions
  static-local      5.3      no static variables in a function
  program-scope     4, 4.2   program-scope variables in the constant address space, initialized
  address-space     4        every pointer and reference names its address space, and address
                             spaces agree (mslemu.lint's clang check)
  std-version       2.1-2.4  nothing newer than the build's -std (bfloat needs Metal 3.1)
  compile           1.5      C++ clang rejects, or MSL include/msl_lint.hpp does not declare:
                             not checked until it parses
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rules_ast import Ast
from rules_kernels import (
    MAX_TG_BYTES,
    Source,
    Violation,
    kernel_rules,
    metal_version,
    parse_kernels,
)

VERSIONED = [(r"\b(?:simdgroup_bfloat8x8|packed_bfloat[234]|bfloat[234]?)\b", 310, "bfloat")]
UNSUPPORTED_WORDS = {"goto": "goto", "thread_local": "thread_local", "register": "register",
                     "virtual": "virtual functions", "try": "exception handling",
                     "catch": "exception handling", "throw": "exception handling",
                     "typeid": "type identification (typeid)", "dynamic_cast": "dynamic_cast",
                     "new": "the new operator", "delete": "the delete operator"}
# clang's C++ for OpenCL errors that are MSL rules of their own; the others are address-space
# or plain compile errors
DIAG_RULES = [("must have void return type", "kernel-return", "5.1.3"),
              ("cannot be used as the type of a kernel parameter", "param-kind", "5.2"),
              ("kernel parameter cannot be declared as a pointer", "param-kind", "4"),
              ("program scope variable must reside", "program-scope", "4"),
              ("must be initialized", "program-scope", "4.2"),
              ("pointers to functions are not allowed", "function-pointer", "5.1.4"),
              ("taking address of function is not allowed", "function-pointer", "5.1.4"),
              ("field may not be qualified with an address space", "address-space", "2.12"),
              ("with exceptions disabled", "cxx-unsupported", "1.5.4"),
              ("thread-local storage", "cxx-unsupported", "1.5.4"),
              ("static local variable", "static-local", "5.3"),
              ("address space", "address-space", "4")]


def text_rules(src: Source, version: int) -> list[tuple]:
    """(offset, rule, message, section) of what a word search finds in the user's code."""
    out = []
    for m in re.finditer(r"\b(?:long\s+double|long\s+long|double)\b", src.clean):
        word = " ".join(m.group(0).split())
        out.append((m.start(), "double", f"'{word}' is not a Metal type", "2.1"))
    for m in re.finditer(r"\batomic_u?long\b|\batomic\s*<\s*(?:u?long|u?int64_t|size_t)\s*>",
                         src.clean):
        msg = (f"{m.group(0)}: 64-bit atomics are only max/min, on GPU families past fastllm's "
               f"floor (M1)")
        out.append((m.start(), "atomic64", msg, "2.6, 6.15.4.6"))
    for m in re.finditer(r"\b(" + "|".join(UNSUPPORTED_WORDS) + r")\b", src.clean):
        w = m.group(1)
        if w == "delete" and re.search(r"=\s*$", src.clean[max(0, m.start() - 20):m.start()]):
            continue  # a deleted function, not the operator
        msg = f"{UNSUPPORTED_WORDS[w]} is not available in Metal"
        out.append((m.start(), "cxx-unsupported", msg, "1.5.4"))
    for rx, first, what in VERSIONED:
        if version < first:
            for m in re.finditer(rx, src.clean):
                msg = (f"{m.group(0)}: {what} needs Metal {first // 100}.{first // 10 % 10}, "
                       f"the build's -std is {version // 100}.{version // 10 % 10}")
                out.append((m.start(), "std-version", msg, "2.1, 2.2, 2.4"))
    for m in re.finditer(r"\b\w[\w:<>,\s*&]*\s+main\s*\(", src.clean):
        out.append((m.end() - 5, "kernel-name", "a function cannot be called main", "1.5.4"))
    return [o for o in out if src.at(o[0])]


def check_file(path: str, std: str = "metal3.0") -> list[Violation]:
    """The violations of one .metal file and the headers it includes."""
    return _check_file(path, std)[0]


def _check_file(path: str, std: str):
    version = metal_version(std)
    src = Source(path, version)
    kernels, out = parse_kernels(src)
    # a template instance's function is found through a decltype of it; a plain kernel's by its
    # name and place (OpenCL does not let a decltype name a kernel function)
    ast = Ast(src, {k.name: k.expr for k in kernels if k.expr != k.func}, version)
    for k in kernels:
        if k.expr == k.func:
            fid = next((f.id for f in ast.funcs.values()
                        if f.name == k.func and f.pos == k.where and not f.pattern
                        and any(c.get("kind") == "CompoundStmt" for c in f.node.get("inner", ()))),
                       None)
            if fid is not None:
                ast.kernel_ids[k.name] = fid
    reach = {k.name: ast.reach(ast.kernel_ids[k.name]) for k in kernels
             if k.name in ast.kernel_ids}

    def owners(where) -> str:
        """The kernels whose code holds (file, line)."""
        names = sorted(k for k, fs in reach.items()
                       if any((s := ast.funcs[f].span) and s[0] == where[0]
                              and s[1] <= where[1] <= s[2] for f in fs))
        if len(names) > 3:
            return ",".join(names[:3]) + f",+{len(names) - 3}"
        return ",".join(names) or "-"

    for k in kernels:
        types = None
        fid = ast.kernel_ids.get(k.name)
        if fid in ast.funcs:
            parms = [c for c in ast.funcs[fid].node.get("inner", ()) if c["kind"] == "ParmVarDecl"]
            if len(parms) == len(k.params):
                types = [c["type"].get("desugaredQualType", c["type"]["qualType"]) for c in parms]
        out += kernel_rules(k, types)
    for off, rule, msg, section in text_rules(src, version):
        w = src.at(off)
        out.append(Violation(*w, owners(w), rule, msg, section))
    if ast.failed:
        out.append(Violation(src.path, 1, "-", "address-space", "not checked: " + ast.failed,
                             "4"))
    for d in ast.diags:
        # what is left is C++ clang rejects, or MSL that include/msl_lint.hpp lacks a
        # declaration for: either way it was not checked
        rule, section = next(((r, s) for text in (d.msg, d.notes) for t, r, s in DIAG_RULES
                              if t in text), ("compile", "1.5"))
        out.append(Violation(d.file, d.line, owners((d.file, d.line)), rule, d.msg, section))
    out += ast_rules(ast, kernels, reach, owners)
    return out, kernels


def ast_rules(ast: Ast, kernels, reach, owners) -> list[Violation]:
    out = []
    kernel_ids = {fid: name for name, fid in ast.kernel_ids.items()}
    for k in kernels:
        fid = ast.kernel_ids.get(k.name)
        if fid is None:
            continue
        arrays = ast.tg_sizes.get(fid, [])
        total = sum(n for _, n, _ in arrays)
        if total > MAX_TG_BYTES:
            desc = ", ".join(f"{name} {n} B" for name, n, _ in arrays)
            out.append(Violation(*k.where, k.name, "tg-size", f"{total} bytes of threadgroup "
                                 f"arrays ({desc}) past {MAX_TG_BYTES}", "4.4"))
        for f in reach.get(k.name, ()):
            for callee, where in ast.funcs[f].refs:
                if callee in kernel_ids and callee != fid and where:
                    out.append(Violation(*where, k.name, "kernel-call", f"calls the kernel "
                                         f"{kernel_ids[callee]}", "5.1"))
    kernel_funcs = {k.func for k in kernels}  # plain kernels and kernel templates
    for fn, name, where in ast.tg_decls:
        if where is None:
            continue
        if fn is None:
            out.append(Violation(*where, "-", "tg-scope", f"threadgroup variable {name} at "
                                 f"program scope", "4, 4.4"))
        elif ast.funcs[fn].name not in kernel_funcs:
            out.append(Violation(*where, owners(where), "tg-scope", f"threadgroup variable "
                                 f"{name} in {ast.funcs[fn].name}(), which is not a kernel",
                                 "4.4"))
    for fid, where in ast.cycles():
        if where:
            msg = (f"{ast.funcs[fid].name}() calls itself through this call: kernels recurse "
                   f"only as deep as the pipeline's maxCallStackDepth (default 1), which fastllm's "
                   f"runtime does not raise")
            out.append(Violation(*where, owners(where), "recursion", msg, "1.5.4"))
    for node, where, fn in ast.nodes:
        if where is None or node.get("isImplicit"):
            continue
        kind, t = node.get("kind"), node.get("type", {}).get("qualType", "")
        if kind in ("FunctionDecl", "CXXMethodDecl"):
            t = t.split("(", 1)[0]  # the return type; `__generic` after the list is `this`'s
        if kind in ("VarDecl", "ParmVarDecl", "FieldDecl", "TypedefDecl", "TypeAliasDecl",
                    "CStyleCastExpr", "CXXStaticCastExpr", "CXXReinterpretCastExpr",
                    "CXXFunctionalCastExpr", "FunctionDecl", "CXXMethodDecl") \
                and "__generic" in t:
            what = node.get("name") or kind.replace("Expr", "").replace("CXX", "")
            msg = (f"{what}: pointer or reference type without an address space "
                   f"({t.replace('__generic ', '')})")
            out.append(Violation(*where, owners(where), "address-space", msg, "4"))
        if kind == "VarDecl" and fn is not None and node.get("storageClass") == "static":
            out.append(Violation(*where, owners(where), "static-local", f"static variable "
                                 f"{node.get('name')} inside a function", "5.3"))
        if kind == "LambdaExpr" and ast.version < 320:
            out.append(Violation(*where, owners(where), "cxx-unsupported", "lambda expression "
                                 "before Metal 3.2", "1.5.4"))
        if kind == "CXXRecordDecl" and node.get("bases"):
            out.append(Violation(*where, owners(where), "cxx-unsupported", f"{node.get('name')} "
                                 f"derives from another class", "1.5.4"))
    return out


def check(paths, std: str = "metal3.0", jobs: int = 2) -> list[Violation]:
    """Violations of every file (those of a shared header once), sorted; host names must also be
    unique across the files, which go into one metallib."""
    with ThreadPoolExecutor(jobs) as ex:
        results = list(ex.map(lambda p: _check_file(p, std), paths))
    per_file = [vs for vs, _ in results]
    defined: dict = {}
    for vs, ks in results:
        for k in ks:
            if k.name in defined and defined[k.name].where[0] != k.where[0]:
                vs.append(Violation(*k.where, k.name, "kernel-name", f"{k.name} is also defined "
                                    f"in {defined[k.name].where[0]}: one metallib holds every "
                                    f"file's kernels", "5.1.10"))
            defined.setdefault(k.name, k)
    kernels: dict = {}
    for vs in per_file:
        for v in vs:
            names = kernels.setdefault((v.file, v.line, v.rule, v.message, v.section), [])
            names += [n for n in v.kernel.split(",") if n not in names]
    out = []
    for (file, line, rule, msg, section), names in kernels.items():
        real = sorted(n for n in names if n != "-" and not n.startswith("+"))
        more = sum(int(n[1:]) for n in names if n.startswith("+"))
        shown = real[:3] + ([f"+{len(real) - 3 + more}"] if len(real) > 3 or more else [])
        out.append(Violation(file, line, ",".join(shown) or "-", rule, msg, section))
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", metavar="FILE.metal")
    ap.add_argument("--std", default="metal3.0", help="the metal compiler's -std (metal3.0)")
    args = ap.parse_args(argv)
    try:
        metal_version(args.std)
    except ValueError as e:
        ap.error(str(e))
    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        ap.error(f"no such file: {missing[0]}")
    found = check(args.files, args.std)
    for v in found:
        print(v)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
