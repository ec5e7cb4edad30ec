"""The source side of rules.py: a .metal file preprocessed with its headers and mapped back to
their lines, its kernels and their parameters as written, and the signature rules of a kernel
(MSL 4, 5.1, 5.2)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import msl_parse
import mslemu

MAX_BUFFERS = 31  # buffer and threadgroup argument-table entries per function (Feature Set Tables)
MAX_TG_BYTES = 32 * 1024  # threadgroup memory of an Apple GPU (Feature Set Tables; 4.4)
MAX_THREADS = 1024  # threads per threadgroup on every Apple GPU (5.1.3)

# Table 5.8: built-in attributes of kernel parameters and the types they take
POSITION = {"thread_position_in_grid", "threads_per_grid", "thread_position_in_threadgroup",
            "threads_per_threadgroup", "threadgroup_position_in_grid",
            "dispatch_threads_per_threadgroup", "threadgroups_per_grid", "grid_origin",
            "grid_size"}
SIMD = {"thread_index_in_simdgroup", "threads_per_simdgroup", "thread_execution_width",
        "simdgroup_index_in_threadgroup", "simdgroups_per_threadgroup",
        "dispatch_simdgroups_per_threadgroup", "quadgroup_index_in_threadgroup",
        "quadgroups_per_threadgroup", "dispatch_quadgroups_per_threadgroup"}
SCALAR = SIMD | {"thread_index_in_threadgroup", "thread_index_in_quadgroup"}
BUILTINS = POSITION | SCALAR
POSITION_TYPES = {"ushort", "ushort2", "ushort3", "uint", "uint2", "uint3"}
SCALAR_TYPES = {"ushort", "uint"}
# "need to match" in the notes under Table 5.8 (grid_origin/grid_size join the shape rule only)
SAME_TYPE = [("thread_position_in_grid", "threads_per_grid"),
             ("thread_position_in_threadgroup", "threads_per_threadgroup",
              "dispatch_threads_per_threadgroup"),
             tuple(sorted(SIMD))]
SHAPE = POSITION
RESOURCE_ATTRS = {"buffer", "threadgroup", "texture", "sampler"}
OTHER_PARAM_ATTRS = {"function_constant", "stage_in", "raster_order_group"}
ADDRESS_SPACES = {"device", "constant", "threadgroup", "thread", "threadgroup_imageblock",
                  "object_data", "ray_data"}
TYPE_ALIASES = {"unsigned short": "ushort", "unsigned int": "uint", "uint16_t": "ushort",
                "uint32_t": "uint", "unsigned": "uint", "short": "short", "int": "int"}
# (regex, first Metal version, what) of types newer than some -std

@dataclass(frozen=True, order=True)
class Violation:
    file: str
    line: int
    kernel: str
    rule: str
    message: str
    section: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kernel}: {self.rule}: {self.message} " \
               f"(MSL {self.section})"


def metal_version(std: str) -> int:
    """'metal3.0' -> 300 (also macos-metal2.4 -> 240)."""
    m = re.fullmatch(r"(?:(?:macos|osx|ios)-)?metal(\d)\.(\d)", std)
    if not m:
        raise ValueError(f"--std {std!r}: expected metalX.Y, as in the metal compiler's -std")
    return int(m.group(1)) * 100 + int(m.group(2)) * 10


class Source:
    """A .metal file run through the C preprocessor with its own includes and macros (the
    metal_* headers left out, __METAL_VERSION__ of the build's -std), with every line of the
    result mapped back to its file and line."""

    def __init__(self, path: str, version: int):
        self.path = os.path.abspath(path)
        flags = ["-U__METAL_VERSION__", f"-D__METAL_VERSION__={version}", "-UMETAL_EMULATOR"]
        self.text = mslemu.expand(self.path, flags)
        self.clean = msl_parse.blank_comments(self.text)
        self.where: list = []
        file, line = self.path, 1
        for s in self.text.split("\n"):
            m = re.match(r'#\s*(\d+)\s+"([^"]*)"', s)
            if m:
                self.where.append(None)
                file, line = m.group(2), int(m.group(1))
                continue
            self.where.append((file, line))
            line += 1

    @staticmethod
    def is_user(file: str) -> bool:
        return not file.startswith("<") and not os.path.abspath(file).startswith(mslemu.INC)

    def at(self, offset: int):
        """(file, line) of an offset into text, None outside the user's files."""
        w = self.where[self.text.count("\n", 0, offset)]
        return w if w and self.is_user(w[0]) else None


@dataclass
class Param:
    name: str
    type: str  # as written, attributes removed
    attrs: list  # [(name, argument or None)]
    where: tuple


@dataclass
class Kernel:
    name: str  # the host name: what a pipeline is created with
    func: str
    expr: str  # the C++ expression naming it: f or f<float, 4>
    ret: str
    params: list
    fattrs: list  # function attributes
    where: tuple  # of the function's name


KERNEL_KW = re.compile(r"\bkernel\b|\[\[[^\]]*\bkernel\b[^\]]*\]\]")
HEAD_RE = re.compile(r"\s*((?:\[\[.*?\]\]\s*)*)(?P<ret>[A-Za-z_][\w:]*(?:\s*<[^;{}()]*>)?)\s+"
                     r"(?P<name>[A-Za-z_]\w*)\s*(?P<targs><)?", re.DOTALL)


def parse_kernels(src: Source) -> tuple[list[Kernel], list[Violation]]:
    """The entry points of the file: plain kernels and the [[host_name]] instantiations of kernel
    templates (5.1.10, 5.1.11)."""
    clean, text = src.clean, src.text
    plain, templates, out, bad = [], {}, [], []
    insts = []  # explicit instantiations: (start, end)
    for m in msl_parse.INST_RE.finditer(clean):
        e = msl_parse.stmt_end(clean, m.end())
        if e > 0:
            insts.append((m.start(), e))
    for m in KERNEL_KW.finditer(clean):
        if any(s <= m.start() < e for s, e in insts):
            continue
        h = HEAD_RE.match(clean, m.end())
        if not h or h.group("targs"):
            continue
        j = h.end()
        while j < len(clean) and clean[j].isspace():
            j += 1
        if j >= len(clean) or clean[j] != "(":
            continue
        close = msl_parse.match_close(clean, j, "(", ")")
        rest = msl_parse.ATTR_GROUP_RE.sub(" ", clean[close:close + 400]).lstrip()
        if not rest.startswith("{"):
            continue  # a declaration
        before = text[max(0, m.start() - 400):m.start()]
        fattrs = msl_parse.read_attrs(text[m.start():m.end()]) + msl_parse.read_attrs(
            re.search(r"((?:\[\[.*?\]\]\s*)*)$", before, re.DOTALL).group(1))
        fattrs += msl_parse.read_attrs(text[close:close + 400].split("{", 1)[0])
        params = parse_params(src, j + 1, close - 1)
        k = Kernel(h.group("name"), h.group("name"), h.group("name"), h.group("ret"), params,
                   fattrs, src.at(h.start("name")))
        if msl_parse.template_before(clean, m.start()):
            templates[k.func] = k
        else:
            host = [a for n, a in fattrs if n == "host_name"]
            if host:
                k.name = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', host[0]))
            plain.append(k)
    for s, e in insts:
        hn = msl_parse.HOST_NAME_RE.search(text, s, e)
        best = None
        for tname in templates:
            tm = re.search(rf"\b{re.escape(tname)}\s*<", clean[s:e])
            if tm and (best is None or tm.start() < best[0]):
                best = (tm.start(), tname, tm.end() - 1)
        if best is None:
            continue
        st, tname, lt = best
        gt = msl_parse.match_close(clean, s + lt, "<", ">")
        t = templates[tname]
        name = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', hn.group(1))) if hn else tname
        out.append(Kernel(name, tname, text[s + st:gt].strip(), t.ret, t.params,
                          t.fattrs + msl_parse.read_attrs(text[s:e]), t.where))
    out = plain + out
    seen = {}
    for k in out:
        if k.name in seen:
            bad.append(Violation(*k.where, k.name, "kernel-name",
                                 f"a second kernel named {k.name} (first at line "
                                 f"{seen[k.name].where[1]}): kernels cannot be overloaded and "
                                 f"host names must be unique", "1.5.1, 5.1.10"))
        else:
            seen[k.name] = k
    return out, bad


def parse_params(src: Source, start: int, end: int) -> list[Param]:
    out, pos = [], start
    for raw in msl_parse.split_top(src.text[start:end]):
        off = src.text.find(raw, pos)
        pos = off + len(raw)
        decl = msl_parse.ATTR_GROUP_RE.sub(" ", raw).strip()
        nm = re.search(r"([A-Za-z_]\w*)\s*$", decl)
        name = nm.group(1) if nm else ""
        where = src.at(off + len(raw) - len(raw.lstrip()))
        out.append(Param(name, decl[:nm.start()].strip() if nm else decl, msl_parse.read_attrs(raw),
                         where))
    return out


def norm_type(t: str) -> str:
    """A scalar or vector type in MSL spelling ('uint3', 'ushort'); as written when unknown."""
    t = re.sub(r"\b(const|volatile|__private|thread|metal::)\b|metal::", " ", t)
    t = " ".join(t.split())
    m = re.fullmatch(r"(.+?) __attribute__\(\(ext_vector_type\((\d)\)\)\)", t)
    if m:
        return TYPE_ALIASES.get(m.group(1), m.group(1)) + m.group(2)
    m = re.fullmatch(r"(?:vec<\s*(\w[\w ]*?)\s*,\s*(\d)\s*>)", t)
    if m:
        return TYPE_ALIASES.get(m.group(1), m.group(1)) + m.group(2)
    return TYPE_ALIASES.get(t, t)


def _int(expr: str | None):
    try:
        v = eval(expr, {"__builtins__": {}}, {}) if expr and re.fullmatch(r"[\d\s+*()-uU]+", expr) \
            else None
        return int(v) if v is not None else None
    except (SyntaxError, TypeError, ValueError, ZeroDivisionError):
        return None


def kernel_rules(k: Kernel, types: list[str] | None) -> list[Violation]:
    """The signature rules of one kernel. types: its parameter types as clang resolved them
    (template instantiations, typedefs), else the written ones."""
    out = []

    def bad(where, rule, msg, section):
        out.append(Violation(*(where or ("?", 0)), k.name, rule, msg, section))

    if k.ret != "void":
        bad(k.where, "kernel-return", f"{k.func} returns {k.ret}; kernels return void", "5.1.3")
    for n, a in k.fattrs:
        if n == "max_total_threads_per_threadgroup" and (_int(a) or 0) > MAX_THREADS:
            bad(k.where, "max-threads", f"max_total_threads_per_threadgroup({a}) is past "
                f"{MAX_THREADS}: pipeline creation fails", "5.1.3")
    builtin = {}  # attribute -> (param, normalized type)
    index = {"buffer": {}, "threadgroup": {}, "texture": {}, "sampler": {}}
    for i, p in enumerate(k.params):
        names = [a for a, _ in p.attrs]
        t = norm_type(types[i]) if types and i < len(types) else norm_type(p.type)
        ptr = "*" in p.type or "&" in p.type
        space = next((w for w in re.findall(r"\w+", p.type) if w in ADDRESS_SPACES), None)
        unknown = [a for a in names if a not in BUILTINS | RESOURCE_ATTRS | OTHER_PARAM_ATTRS]
        if unknown:
            bad(p.where, "param-kind", f"[[{unknown[0]}]] on {p.name} is no attribute of a "
                f"kernel parameter (Table 5.8, 5.2.1)", "5.2")
        if re.search(r"\b(size_t|ptrdiff_t)\b", p.type):
            bad(p.where, "param-kind", f"{p.name} is declared with size_t or ptrdiff_t", "5.2")
        bi = [a for a in names if a in BUILTINS]
        for a in bi:
            if ptr:
                bad(p.where, "attr-type", f"[[{a}]] {p.name} is a pointer or reference; "
                    f"built-in inputs are values", "5.2.3.6")
            elif t not in (POSITION_TYPES if a in POSITION else SCALAR_TYPES):
                allowed = "/".join(sorted(POSITION_TYPES if a in POSITION else SCALAR_TYPES))
                bad(p.where, "attr-type", f"[[{a}]] {p.name} has type {t}; Table 5.8 allows "
                    f"{allowed}", "5.2.3.6")
            builtin[a] = (p, t)
        for a, arg in p.attrs:
            if a not in index:
                continue
            n = _int(arg)
            if n is None:
                continue
            if n >= (MAX_BUFFERS if a in ("buffer", "threadgroup") else 128 if a == "texture"
                     else 16):
                bad(p.where, "buffer-index", f"[[{a}({arg})]] {p.name}: the index is past the "
                    f"argument table", "5.2.1")
            prev = index[a].get(n)
            fc = "function_constant" in names
            if prev is not None and not (fc and prev[1]):
                bad(p.where, "buffer-index", f"[[{a}({n})]] {p.name} repeats the index of "
                    f"{prev[0].name}", "5.2.1")
            index[a].setdefault(n, (p, fc))
        if bi:
            continue
        if ptr and space is None:
            bad(p.where, "param-kind", f"{p.name}: a kernel's pointer or reference argument needs "
                f"the device, constant or threadgroup address space", "1.5.4, 4")
        elif ptr and space not in ("device", "constant", "threadgroup"):
            bad(p.where, "param-kind", f"{p.name} is in the {space} address space; kernel "
                f"arguments are device, constant or threadgroup", "4")
        elif ptr and space in ("device", "constant") and "buffer" not in names:
            bad(p.where, "buffer-index", f"{p.name} has no [[buffer(n)]]: Apple gives it the "
                f"first free index, fastllm's runtime binds the index a kernel names "
                f"(fastllm rule)", "5.2.1")
        elif ptr and space == "threadgroup" and "threadgroup" not in names:
            bad(p.where, "buffer-index", f"{p.name} has no [[threadgroup(n)]] (fastllm rule)",
                "5.2.1")
        elif ptr and "buffer" in names and space == "threadgroup":
            bad(p.where, "param-kind", f"[[buffer]] on the threadgroup pointer {p.name}; "
                f"threadgroup buffers take [[threadgroup(n)]]", "5.2.1")
        elif ptr and "threadgroup" in names and space != "threadgroup":
            bad(p.where, "param-kind", f"[[threadgroup]] on {p.name}, which is not in the "
                f"threadgroup address space", "5.2.1")
        elif not ptr and not re.search(r"\b(texture\w*|depth\w*|sampler|array)\b", p.type) \
                and "stage_in" not in names:
            what = f"in the {space} address space by value" if space else "without an attribute"
            bad(p.where, "param-kind", f"{p.name} ({p.type}) is {what}: a kernel parameter is a "
                f"buffer pointer/reference or a built-in attribute value", "5.2")
    shape = {a: v for a, v in builtin.items() if a in SHAPE}
    widths = {a: (int(t[-1]) if t[-1:] in "234" else 1) for a, (_, t) in shape.items()}
    if len(set(widths.values())) > 1:
        desc = ", ".join(f"{p.name} [[{a}]] {t}" for a, (p, t) in sorted(shape.items()))
        first = min((p.where for p, _ in shape.values()), key=lambda w: w[1])
        bad(first, "position-shape", f"position/size inputs mix scalars and vectors or vector "
            f"lengths: {desc}", "5.2.3.6")
    for group in SAME_TYPE:
        got = {a: builtin[a] for a in group if a in builtin}
        if len({t for _, t in got.values()}) > 1:
            desc = ", ".join(f"{p.name} [[{a}]] {t}" for a, (p, t) in sorted(got.items()))
            first = min((p.where for p, _ in got.values()), key=lambda w: w[1])
            bad(first, "attr-match", f"these types need to match: {desc}", "5.2.3.6")
    tp, ti = builtin.get("thread_position_in_threadgroup"), builtin.get(
        "thread_index_in_threadgroup")
    if tp and ti and tp[1].startswith("uint") and ti[1] != "uint":
        bad(ti[0].where, "attr-match", f"[[thread_position_in_threadgroup]] {tp[0].name} is "
            f"{tp[1]}, so [[thread_index_in_threadgroup]] {ti[0].name} must be uint, not "
            f"{ti[1]}", "5.2.3.6")
    return out
