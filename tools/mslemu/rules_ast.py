"""The clang half of rules.py: a .metal file parsed as C++ for OpenCL (address spaces mapped onto
OpenCL's by include/msl_lint.hpp, as in mslemu.lint) and read back as clang's JSON AST.

Two parses of the same translation unit:
  - generic address space off (mslemu.lint's setting): its errors are the address-space mistakes
    and the OpenCL rules that coincide with MSL's (kernel return type, program-scope variables,
    kernel parameter types, function pointers);
  - generic address space on: clang then deduces `__generic` for a pointer or reference written
    without an address space, which MSL rejects, and the JSON AST gives the call graph (template
    instantiations included), the kernels' threadgroup arrays sized by clang, and declarations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

import msl_parse
import mslemu

FUNC_KINDS = {"FunctionDecl", "CXXMethodDecl", "CXXConstructorDecl", "CXXDestructorDecl",
              "CXXConversionDecl"}
BASE_FLAGS = ["-x", "clcpp", "-cl-std=clc++2021", "-target", "spir64", "-fsyntax-only",
              "-ferror-limit=0", "-Wno-unknown-attributes", "-Wno-duplicate-decl-specifier",
              "-fno-color-diagnostics"]
EXT_COMMON = ("-__opencl_c_pipes,-__opencl_c_program_scope_global_variables,"
              "-__opencl_c_device_enqueue")
GENERIC_OFF = ["-Xclang", "-cl-ext=-__opencl_c_generic_address_space," + EXT_COMMON]
GENERIC_ON = ["-Xclang", "-cl-ext=" + EXT_COMMON]
DIAG_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|note): "
                     r"(?P<msg>.*)$")
TG_REF_RE = re.compile(r"auto& (\w+) = ::msl::tg_var<")


@dataclass
class Func:
    id: str
    name: str
    node: dict
    pos: tuple | None  # (file, line) of its name, user code only
    span: tuple | None  # (file, first line, last line)
    pattern: bool  # the body of a template, not an instantiation
    refs: list = field(default_factory=list)  # [(callee id, (file, line))]


@dataclass
class Diag:
    file: str
    line: int
    msg: str
    notes: str = ""  # clang's notes on it ("candidate function not viable: address space ...")


class Ast:
    """The parsed translation unit of one .metal file (rules.Source): functions with their
    references, threadgroup array sizes per function, clang's errors, and node positions mapped back
    to the .metal file and its headers."""

    def __init__(self, src, kernel_exprs: dict[str, str], version: int):
        self.src = src
        self.version = version
        self.funcs: dict[str, Func] = {}
        self.kernel_ids: dict[str, str] = {}  # kernel (host) name -> id of its FunctionDecl
        self.tg_sizes: dict[str, list] = {}  # function id -> [(name, bytes, (file, line))]
        # every threadgroup variable: (enclosing function id or None, name, (file, line))
        self.tg_decls: list = []
        self.nodes: list = []  # [(node, (file, line), enclosing function id or None)]
        self.diags: list[Diag] = []
        self.failed = ""
        try:
            body, _ = msl_parse.preprocess(src.text, lint=True, strict=False)
        except ValueError as e:  # a kernel template instantiation the pre-pass cannot read
            self.failed = str(e)
            return
        lines = body.split("\n")
        self.tg_names = {}
        for i, s in enumerate(lines):
            extra = ""
            for m in TG_REF_RE.finditer(s):
                k = len(self.tg_names)
                self.tg_names[f"__msl_tgsz_{k}"] = m.group(1)
                extra += f" typedef char __msl_tgsz_{k}[sizeof({m.group(1)})];"
            lines[i] = s + extra
        self.n_body = len(lines)
        hosts = [f"typedef decltype({expr}) __msl_host_{i};"
                 for i, expr in enumerate(kernel_exprs.values())]
        self.host_names = dict(zip((f"__msl_host_{i}" for i in range(len(hosts))), kernel_exprs))
        tu_text = '#include "msl_lint.hpp"\n' + "\n".join(lines) + "\n"
        with tempfile.TemporaryDirectory(prefix="mslrules") as d:
            self.tu = os.path.join(d, os.path.basename(src.path) + ".rules.clcpp")
            cc = [mslemu.CXX.replace("clang++", "clang"), *BASE_FLAGS, "-I", mslemu.INC,
                  f"-D__METAL_VERSION__={version}"]
            with open(self.tu, "w") as f:
                f.write(tu_text)
            off = subprocess.run([*cc, *GENERIC_OFF, self.tu], capture_output=True, text=True,
                                 check=False)
            # the AST parse names each kernel's function with a decltype at the end, which
            # OpenCL counts as taking a function's address: its errors are not reported (the
            # first parse has them all)
            with open(self.tu, "w") as f:
                f.write(tu_text + "\n".join(hosts) + "\n")
            on = subprocess.run([*cc, *GENERIC_ON, "-Xclang", "-ast-dump=json", self.tu],
                                capture_output=True, text=True, check=False)
        seen, last = set(), None
        for line in off.stderr.splitlines():
            m = DIAG_RE.match(line)
            if m and m["sev"] == "note" and last is not None:
                last.notes += m["msg"] + "\n"
            elif m and m["sev"] == "error":
                last = None
                key = (m["file"], int(m["line"]), m["msg"])
                if src.is_user(m["file"]) and key not in seen:
                    seen.add(key)
                    last = Diag(*key)
                    self.diags.append(last)
        try:
            tree = json.loads(on.stdout)
        except json.JSONDecodeError:
            self.failed = "clang produced no AST: " + on.stderr[-2000:]
            return
        self._index(tree)

    # -- positions -----------------------------------------------------------------------------
    def _where(self, tu_line: int | None):
        """(file, line) of a line of the translation unit, None outside the user's code."""
        if tu_line is None or tu_line < 2 or tu_line - 2 >= self.n_body:
            return None
        w = self.src.where[tu_line - 2]  # line 1 is the #include of msl_lint.hpp
        return w if w and self.src.is_user(w[0]) else None

    def _index(self, tree: dict) -> None:
        """One pass in document order: clang writes a location's file and line only when they
        change from the location written before it, so the walk keeps that state."""
        state = {"file": None, "line": None}
        tu = self.tu

        def bare(loc: dict):
            if "file" in loc:
                state["file"] = loc["file"]
            if "line" in loc:
                state["line"] = loc["line"]
            return state["line"] if state["file"] == tu else None

        def location(loc):
            """TU line of a source location (a macro's expansion point), None elsewhere."""
            if not isinstance(loc, dict) or not loc:
                return None
            if "spellingLoc" in loc:
                bare(loc["spellingLoc"])
                return bare(loc["expansionLoc"])
            if "offset" in loc:
                return bare(loc)
            return None

        def visit(node, fn):
            kind = node.get("kind")
            line = location(node.get("loc"))
            rng = node.get("range") or {}
            begin = location(rng.get("begin"))
            end = location(rng.get("end"))
            where = self._where(line if line is not None else begin)
            cur = fn
            if kind in FUNC_KINDS and not node.get("isImplicit"):
                has_body = any(c.get("kind") == "CompoundStmt" for c in node.get("inner", ()))
                f = self.funcs.get(node["id"])
                if f is None or (has_body and f.node is not node):
                    b, e = self._where(begin), self._where(end)
                    span = (b[0], b[1], e[1]) if b and e and b[0] == e[0] else None
                    pattern = self._in_pattern
                    f = Func(node["id"], node.get("name", ""), node, where, span, pattern)
                    self.funcs[node["id"]] = f
                if has_body:
                    cur = node["id"]
            elif kind == "TypedefDecl" and node.get("name", "").startswith("__msl_tgsz_"):
                m = re.fullmatch(r"char\[(\d+)\]", node["type"].get("desugaredQualType")
                                 or node["type"]["qualType"])
                name = self.tg_names[node["name"]]
                self.tg_decls.append((fn, name, where))
                if fn is not None and m:  # a template's pattern has no size yet
                    self.tg_sizes.setdefault(fn, []).append((name, int(m.group(1)), where))
            elif kind == "TypedefDecl" and node.get("name", "") in self.host_names:
                ref = _find(node, "DeclRefExpr")
                if ref is not None:
                    self.kernel_ids[self.host_names[node["name"]]] = ref["referencedDecl"]["id"]
            if fn is not None and kind == "DeclRefExpr":
                r = node.get("referencedDecl", {})
                if r.get("kind") in FUNC_KINDS:
                    self.funcs[fn].refs.append((r["id"], where))
            elif fn is not None and kind == "MemberExpr" and "referencedMemberDecl" in node:
                self.funcs[fn].refs.append((node["referencedMemberDecl"], where))
            self.nodes.append((node, where, fn))
            was = self._in_pattern
            if kind in ("FunctionTemplateDecl", "ClassTemplateDecl"):
                # the first declaration inside a template is its pattern; the others are
                # instantiations
                inner = node.get("inner", [])
                for c in inner:
                    self._in_pattern = c is _first_decl(inner)
                    visit(c, cur)
                self._in_pattern = was
                return
            for c in node.get("inner", ()):
                visit(c, cur)

        self._in_pattern = False
        visit(tree, None)

    # -- queries -------------------------------------------------------------------------------
    def reach(self, fid: str) -> set[str]:
        """Functions reachable from fid through calls and references, fid included."""
        out, todo = set(), [fid]
        while todo:
            f = todo.pop()
            if f in out or f not in self.funcs:
                continue
            out.add(f)
            todo.extend(r for r, _ in self.funcs[f].refs)
        return out

    def cycles(self) -> list[tuple[str, tuple]]:
        """(function id, position of a call) for each call that closes a cycle of calls."""
        out = []
        for fid, f in self.funcs.items():
            for callee, where in f.refs:
                if callee in self.funcs and fid in self.reach(callee):
                    out.append((fid, where))
        return out


def _first_decl(inner: list):
    for c in inner:
        if c.get("kind") not in ("TemplateTypeParmDecl", "NonTypeTemplateParmDecl",
                                 "TemplateTemplateParmDecl"):
            return c
    return None


def _find(node: dict, kind: str):
    if node.get("kind") == kind:
        return node
    for c in node.get("inner", ()):
        r = _find(c, kind)
        if r is not None:
            return r
    return None
