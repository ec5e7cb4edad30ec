"""The package's shape: its public import paths resolve, and its modules import one another
without circles. Imports are read from the source with ast, every kind counted: module-level,
inside functions (lazy) and under `if TYPE_CHECKING:` (a type hint still ties a module to the
one it names)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import fastllm
import fastllm.errors

PKG = Path(fastllm.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """fastllm's module names -> (source file, is a package)."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ["fastllm", *p.relative_to(PKG).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The fastllm modules `name` imports anywhere in its source. `from . import x` counts as
    importing the submodule x, not the package; a module's own parent packages (imported
    before it anyway) are left out."""
    path, is_pkg = MODULES[name]
    pkg = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names}
            out |= subs & MODULES.keys()
            if subs - MODULES.keys():
                out.add(mod)
    return {m for m in out & MODULES.keys()
            if m != name and not name.startswith(m + ".")}


def test_the_graph_reads_imports_of_every_kind():
    """The parser sees lazy and TYPE_CHECKING imports (the kinds that hid the old circles)."""
    assert "fastllm.backends.webgpu.program" in _imports("fastllm.backends.webgpu.backend")  # lazy
    assert "fastllm.tokenizer" in _imports("fastllm.generate")  # under TYPE_CHECKING and lazy
    assert {"fastllm.backends.webgpu.repack", "fastllm.backends.webgpu.device"} <= _imports(
        "fastllm.backends.webgpu.rwkv")  # `from . import repack`


# (lower module, the module above it that it must not import): the circles opened by the
# package layout, each now one-way
ONE_WAY = [
    *((f"fastllm.backends.webgpu.{m}", "fastllm.backends.webgpu.backend")
      for m in ("program", "rwkv", "matmul", "attention", "loops", "repack", "shaders",
                "device")),
    ("fastllm.generate", "fastllm.model"),
    ("fastllm.quants.decode", "fastllm.quants.encode"),
    ("fastllm.quants.types", "fastllm.quants.decode"),
    ("fastllm.quants.types", "fastllm.quants.encode"),
    ("fastllm.quants.encode_k", "fastllm.quants.encode"),
    ("fastllm.quants.rounding", "fastllm.quants.encode"),
    ("fastllm.quants.rounding", "fastllm.quants.encode_k"),
]


@pytest.mark.parametrize(("lower", "upper"), ONE_WAY)
def test_lower_module_does_not_import_the_upper(lower, upper):
    assert lower in MODULES and upper in MODULES
    assert upper not in _imports(lower), f"{lower} imports {upper}, which imports it"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    """No group of fastllm modules imports each other in a circle, lazily or for type hints
    included: a lower module names the upper one's shape with a Protocol or takes a function
    instead."""
    graph = {m: _imports(m) for m in MODULES}
    circles = _cycles(graph)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(
        f"{a} -> {b}" for a in c for b in sorted(graph[a] & set(c))) + ")" for c in circles)
    assert not circles, f"import circles: {detail}"


def test_public_names():
    """Everything fastllm exports resolves, and the documented paths name the same objects."""
    for name in fastllm.__all__:
        assert getattr(fastllm, name) is not None, name
    from fastllm.tokenizer import StreamDecoder, Tokenizer
    from fastllm.tokenizer.core import StreamDecoder as CoreStreamDecoder

    assert fastllm.Tokenizer is Tokenizer and fastllm.StreamDecoder is StreamDecoder
    assert StreamDecoder is CoreStreamDecoder
    from fastllm.model import Model

    assert fastllm.Model is Model
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        fastllm.NoSuchThing  # noqa: B018


def test_errors_exported():
    """Every error class of fastllm.errors is a FastLLMError and is exported by fastllm."""
    classes = {n: c for n, c in vars(fastllm.errors).items()
               if inspect.isclass(c) and issubclass(c, Exception)
               and c.__module__ == "fastllm.errors"}
    assert "FastLLMError" in classes and len(classes) > 1
    for n, c in classes.items():
        assert issubclass(c, fastllm.errors.FastLLMError), n
        assert getattr(fastllm, n) is c, n


def test_backend_packages():
    """create_backend and each backend package's class, importable without a GPU or the Metal
    extension (both load on first use)."""
    from fastllm.backends import create_backend
    from fastllm.backends.base import Backend
    from fastllm.backends.metal import MetalBackend
    from fastllm.backends.metal.backend import MetalBackend as MB
    from fastllm.backends.webgpu import WebGPUBackend
    from fastllm.backends.webgpu.backend import WebGPUBackend as WB

    assert callable(create_backend)
    assert MetalBackend is MB and WebGPUBackend is WB
    assert issubclass(MetalBackend, Backend) and issubclass(WebGPUBackend, Backend)
    assert create_backend("reference").name == "reference"


def test_shaders_ship_inside_the_webgpu_package():
    """The WGSL sources sit in backends/webgpu/shaders/ (package data a wheel carries), and the
    assembler reads them from there."""
    from fastllm.backends.webgpu import shaders

    assert shaders.SHADER_DIR == PKG / "backends" / "webgpu" / "shaders"
    names = {p.name for p in shaders.SHADER_DIR.glob("*.wgsl")}
    assert {"common.wgsl", "kargs.wgsl", "quants.wgsl", "mul_mv.wgsl"} <= names
    assert "struct" in shaders.read("kargs.wgsl")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    """Each module imports on its own (a move that left a stale relative import fails here)."""
    if name == "fastllm._metal":
        pytest.skip("the native extension")
    importlib.import_module(name)
