"""Checks that need no GPU: the address-space lint of every kernel source, the Objective-C++ and
pybind11 layer type-checked against the stub headers, and the kargs.h struct layouts as compiled
(by the MSL emulator) and as listed in bindings.cpp against fastllm.kargs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from metal_env import emulator_available

from fastllm import kargs

ROOT = Path(__file__).resolve().parents[2]
METAL = sorted((ROOT / "metal").glob("*.metal"))
needs_clang = pytest.mark.skipif(not emulator_available(), reason="needs Linux and clang++-16")


@needs_clang
@pytest.mark.parametrize("path", METAL, ids=lambda p: p.name)
def test_address_space_lint(path):
    sys.path.insert(0, str(ROOT / "tools" / "mslemu"))
    import mslemu

    assert mslemu.lint(str(path)) == ""


@needs_clang
def test_native_layer_type_checks():
    if not Path("/usr/include/GNUstep/Foundation/Foundation.h").exists():
        pytest.skip("needs libgnustep-base-dev")
    r = subprocess.run([str(ROOT / "tools" / "host_stubs" / "check_host.sh")], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": OK") == 3, r.stdout


@needs_clang
def test_stub_check_catches_api_misuse(tmp_path):
    """A misspelt selector and a struct passed where a pointer is expected both fail the check."""
    bad = tmp_path / "bad.mm"
    bad.write_text("""#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
void f(id<MTLComputeCommandEncoder> enc, id<MTLBuffer> b, int args) {
    [enc setBuffer:b offset:0 index:1];
    [enc setBytes:args length:sizeof(args) atIndex:0];
}
""")
    r = subprocess.run([str(ROOT / "tools" / "host_stubs" / "check_host.sh"), str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode != 0
    assert "setBuffer:offset:index:" in r.stderr


def test_every_metal_stub_declaration_cites_apple_docs():
    stubs = ROOT / "tools" / "host_stubs"
    for h in [stubs / "Metal" / "Metal.h", stubs / "arc" / "Foundation" / "Foundation.h"]:
        lines = h.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*(-|\+|@property|@protocol \w+ <|@interface|typedef (NS_|struct))",
                        line):
                above = "\n".join(lines[max(0, i - 3):i])
                assert "https://developer.apple.com/documentation/" in above, f"{h.name}: {line}"


def test_bindings_kargs_table_lists_every_struct_and_field():
    src = (ROOT / "csrc" / "bindings.cpp").read_text()
    table = {}
    for m in re.finditer(r"KARGS_STRUCT\((kargs_\w+),", src):
        depth, i = 1, m.end()
        while depth:  # to the parenthesis closing KARGS_STRUCT(
            depth += {"(": 1, ")": -1}.get(src[i], 0)
            i += 1
        table[m.group(1)] = re.findall(r"F\((\w+)\)", src[m.end():i])
    want = {name: list(dt.names) for name, dt in kargs.structs().items()}
    assert table == want, "update kargs_layout() in csrc/bindings.cpp to match metal/kargs.h"


@needs_clang
def test_kargs_layout_as_compiled(tmp_path):
    """sizeof/offsetof of every struct of kargs.h, compiled as MSL by the emulator, equal the
    numpy dtypes fastllm.kargs packs."""
    sys.path.insert(0, str(ROOT / "tools" / "mslemu"))
    import mslemu

    lines = ["#include <metal_stdlib>", "using namespace metal;",
             f'#include "{ROOT / "metal" / "kargs.h"}"',
             "kernel void layout(device uint * out [[buffer(0)]]) {"]
    want = []
    for name, dt in kargs.structs().items():
        lines.append(f"    out[{len(want)}] = sizeof({name});")
        want.append(dt.itemsize)
        for f in dt.names:
            lines.append(f"    out[{len(want)}] = __builtin_offsetof({name}, {f});")
            want.append(dt.fields[f][1])
    lines.append("}")
    src = tmp_path / "layout.metal"
    src.write_text("\n".join(lines) + "\n")
    lib = mslemu.Library(str(src))
    out = lib.buffer(np.zeros(len(want), np.uint32))
    lib.dispatch("layout", [out], threadgroups=(1,), threads_per_threadgroup=(1,))
    assert out.tolist() == want

