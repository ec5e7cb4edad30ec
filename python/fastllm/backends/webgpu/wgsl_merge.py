"""Several kernel modules as one: the WGSL text of a persistent step kernel (persist.py).

Each dispatch of a step is a module (shaders.py) whose entry point takes `ids: Ids` and binds
its buffers at group 0. Merging parses a module's top-level items, keeps those its entry point
reaches, and gives every item a name by what it is: items with the same text over the same
dependencies get one name (the kargs structs, common.wgsl's reductions, a pipeline's functions
shared by its dispatches), a storage or uniform variable is one per (buffer, type), and the
kernel-argument uniform becomes a private variable initialized with the dispatch's bytes, so no
binding is spent on it. Workgroup variables of identical text are shared between tasks: a
workgroup runs its tasks one after another, with a barrier between two.
"""

from __future__ import annotations

import re
import struct as _struct
from dataclasses import dataclass, field
from functools import cache

import numpy as np

_IDENT = re.compile(r"(?<![.\w])([A-Za-z_]\w*)")
_DECL = re.compile(r"(?:@\w+(?:\([^)]*\))?\s*)*(fn|struct|const|var(?:<[^>]*>)?|alias|override)"
                   r"\s+(\w+)")
_VAR = re.compile(r"var<(\w+)(?:,\s*(\w+))?>\s+(\w+)\s*:\s*([^;=]+?)\s*(?:=|;)")
_BINDING = re.compile(r"@binding\((\d+)\)")
_SCALARS = {"u32": "<I", "i32": "<i", "f32": "<f"}


class MergeError(ValueError):
    """A module the merger cannot take (the step keeps its ordinary dispatch)."""


@dataclass
class Item:
    kind: str  # fn, struct, const, var, alias, override
    name: str
    text: str
    deps: list[str] = field(default_factory=list)
    space: str = ""  # var: its address space (storage, uniform, workgroup, private)
    access: str = ""  # storage vars: read or read_write
    vtype: str = ""  # vars: their type's text
    binding: int | None = None


def _end_of_braces(src: str, i: int) -> int:
    depth = 0
    while i < len(src):
        c = src[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise MergeError("unbalanced braces in a module")


@cache
def parse(src: str) -> tuple[tuple[str, ...], dict[str, Item]]:
    """(the module's enable directives, its top-level items by name)."""
    src = re.sub(r"//[^\n]*", "", src)
    if "/*" in src:
        raise MergeError("block comments are not parsed")
    enables = tuple(sorted(set(re.findall(r"^\s*(enable\s+\w+\s*;)", src, re.MULTILINE))))
    src = re.sub(r"^\s*enable\s+\w+\s*;", "", src, flags=re.MULTILINE)
    items: dict[str, Item] = {}
    i = 0
    n = len(src)
    while i < n:
        while i < n and src[i].isspace():
            i += 1
        if i >= n:
            break
        m = _DECL.match(src, i)
        if not m:
            raise MergeError(f"unparsed text at {src[i:i + 40]!r}")
        kind = m.group(1).split("<")[0]
        if kind in ("fn", "struct"):
            end = _end_of_braces(src, src.index("{", m.end()))
            if end < n and src[end] == ";":
                end += 1
        else:
            end = src.index(";", m.end()) + 1
        text = src[i:end].strip()
        it = Item(kind, m.group(2), text)
        if kind == "var":
            v = _VAR.search(text)
            if not v:
                raise MergeError(f"unparsed variable {text!r}")
            it.space, it.access, it.vtype = v.group(1), v.group(2) or "", v.group(4).strip()
            b = _BINDING.search(text)
            it.binding = int(b.group(1)) if b else None
        items[it.name] = it
        i = end
    for it in items.values():
        body = _field_types(it.text) if it.kind == "struct" else it.text
        it.deps = [d for d in dict.fromkeys(_IDENT.findall(body)) if d in items and d != it.name]
    return enables, items


def _field_types(text: str) -> str:
    """A struct's text with its field names left out (a field may share a top-level name)."""
    body = text.split("{", 1)[1]
    return " ".join(re.findall(r":\s*([^,}]+)", body))


def reachable(items: dict[str, Item], entry: str) -> list[str]:
    """The items `entry` uses, dependencies before their users."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for d in items[name].deps:
            visit(d)
        out.append(name)

    if entry not in items:
        raise MergeError(f"entry point {entry} not in its module")
    visit(entry)
    return out


# -- the kernel arguments as a constant -------------------------------------------------------
def _layout(t: str, structs: dict[str, Item]) -> tuple[int, int]:
    """(alignment, size) of type t in the uniform address space."""
    t = t.strip()
    if t in _SCALARS:
        return 4, 4
    m = re.fullmatch(r"vec([234])<(\w+)>", t)
    if m:
        k = int(m.group(1))
        return (8 if k == 2 else 16), 4 * k
    m = re.fullmatch(r"array<(.+),\s*(\d+)u?>", t)
    if m:
        a, s = _layout(m.group(1), structs)
        stride = -(-max(s, a) // 16) * 16
        return max(16, a), stride * int(m.group(2))
    if t in structs:
        off, align = 0, 16
        for _, ft in _fields(structs[t]):
            a, s = _layout(ft, structs)
            off = -(-off // a) * a + s
            align = max(align, a)
        return align, -(-off // align) * align
    raise MergeError(f"kernel argument type {t} has no known layout")


def _fields(st: Item) -> list[tuple[str, str]]:
    body = st.text.split("{", 1)[1].rsplit("}", 1)[0]
    return [(f.split(":")[0].strip(), f.split(":", 1)[1].strip())
            for f in re.split(r",\s*(?![^<]*>)", body) if ":" in f]


def const_value(t: str, data: bytes, structs: dict[str, Item], names: dict[str, str]) -> str:
    """A WGSL constructor of type t holding `data` (uniform layout); floats by their bits, so
    the value is exact. `names`: the merged names of the struct types."""
    t = t.strip()
    if t in _SCALARS:
        if len(data) < 4:
            data = data + bytes(4 - len(data))
        if t == "f32":  # 9 significant digits name an f32 exactly
            v = float(np.frombuffer(data[:4], np.float32)[0])
            if not np.isfinite(v):
                raise MergeError(f"a kernel argument of {v}")
            return f"{v:.9e}f"
        v = _struct.unpack(_SCALARS[t], data[:4])[0]
        return f"{v}u" if t == "u32" else f"i32({v})"
    m = re.fullmatch(r"vec([234])<(\w+)>", t)
    if m:
        k, s = int(m.group(1)), m.group(2)
        return f"vec{k}<{s}>(" + ", ".join(const_value(s, data[4 * j:4 * j + 4], structs, names)
                                          for j in range(k)) + ")"
    m = re.fullmatch(r"array<(.+),\s*(\d+)u?>", t)
    if m:
        a, s = _layout(m.group(1), structs)
        stride = -(-max(s, a) // 16) * 16
        el = m.group(1).strip()
        return (f"array<{names.get(el, el)}, {m.group(2)}>("
                + ", ".join(const_value(el, data[j * stride:(j + 1) * stride], structs, names)
                            for j in range(int(m.group(2)))) + ")")
    if t in structs:
        off, vals = 0, []
        for _, ft in _fields(structs[t]):
            a, s = _layout(ft, structs)
            off = -(-off // a) * a
            vals.append(const_value(ft, data[off:off + s], structs, names))
            off += s
        return f"{names[t]}(" + ", ".join(vals) + ")"
    raise MergeError(f"kernel argument type {t} has no known layout")


# -- merging --------------------------------------------------------------------------------
@dataclass
class Task:
    """One dispatch of the step: its module's text, entry point, bindings, grid."""

    source: str
    entry: str
    bindings: dict[int, object]  # binding -> a buffer, or ("args", offset, size)
    grid: tuple[int, int, int]


@dataclass
class Merged:
    enables: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)  # items, dependencies first
    keys: dict[object, str] = field(default_factory=dict)  # an item's identity -> its name
    counts: dict[str, int] = field(default_factory=dict)
    # binding variables: (buffer id, address space, type) -> (name, buffer, space, access, type)
    bound: dict[tuple, list] = field(default_factory=dict)
    entries: list[str] = field(default_factory=list)  # each task's entry function
    ids_type: str = ""
    workgroup_size: int = 0


def _new_name(m: Merged, base: str) -> str:
    k = m.counts.get(base, 0)
    m.counts[base] = k + 1
    return f"{base}_{k}"


def add_task(m: Merged, task: Task, args_bytes: bytes) -> None:
    """Adds a task's items to m (sharing those it already holds) and its entry function."""
    enables, items = parse(task.source)
    m.enables |= set(enables)
    order = reachable(items, task.entry)
    wg = items.get("WG")
    if wg is None or "WG" not in order:
        raise MergeError(f"{task.entry}: no const WG")
    size = int(re.search(r"=\s*(\d+)u?\s*;", wg.text).group(1))
    if m.workgroup_size and size != m.workgroup_size:
        raise MergeError(f"{task.entry}: workgroup size {size}, not {m.workgroup_size}")
    m.workgroup_size = size
    structs = {n: it for n, it in items.items() if it.kind == "struct"}
    local: dict[str, str] = {}  # this module's name -> merged name

    def rename(text: str) -> str:
        return _IDENT.sub(lambda x: local.get(x.group(1), x.group(1)), text)

    for name in order:
        it = items[name]
        if it.kind == "var" and it.space in ("storage", "uniform"):
            res = task.bindings.get(it.binding)
            if res is None:
                raise MergeError(f"{task.entry}: binding {it.binding} has no resource")
            vtype = rename(it.vtype)
            if isinstance(res, tuple):  # the kernel arguments: a private constant
                value = const_value(it.vtype, args_bytes[res[1]:res[1] + res[2]], structs, local)
                key = ("args", vtype, value)
                if key not in m.keys:
                    m.keys[key] = _new_name(m, name)
                    m.text.append(f"var<private> {m.keys[key]}: {vtype} = {value};")
                local[name] = m.keys[key]
                continue
            key = ("bind", id(res), it.space, vtype)
            if key not in m.bound:
                m.bound[key] = [_new_name(m, name), res, it.space, it.access or "read", vtype]
            elif it.access == "read_write":
                m.bound[key][3] = "read_write"
            local[name] = m.bound[key][0]
            continue
        text = it.text
        if name == task.entry:
            if not re.search(r"\(\s*ids\s*:\s*Ids\s*\)", text):
                raise MergeError(f"{task.entry}: its parameters are not (ids: Ids)")
            text = re.sub(r"^@compute\s+@workgroup_size\([^)]*\)\s*", "", text)
        if it.kind == "struct":
            head, body = text.split("{", 1)
            canon = head + "{" + re.sub(r":\s*([^,}]+)", lambda x: ": " + rename(x.group(1)),
                                       body)
        else:
            canon = rename(text)
        key = ("item", canon)
        if key not in m.keys:
            new = m.keys[key] = _new_name(m, name)
            if it.kind == "struct":
                decl = re.sub(rf"\bstruct\s+{name}\b", f"struct {new}", canon, count=1)
            elif it.kind == "fn":
                decl = re.sub(rf"\bfn\s+{name}\b", f"fn {new}", canon, count=1)
            else:  # const, var, alias: the name's first appearance is its declaration
                decl = re.sub(rf"(?<![.\w]){name}\b", new, canon, count=1)
            m.text.append(decl)
        local[name] = m.keys[key]
        if name == "Ids":
            if m.ids_type and m.ids_type != local[name]:
                raise MergeError("two different Ids structs")
            m.ids_type = local[name]
    m.entries.append(local[task.entry])
