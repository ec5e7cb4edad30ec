"""tools/mslemu/rules.py, the Apple-rules check: every metal/*.metal file is clean under the
build's -std, and each rule reports a planted violation with its file, line and kernel.

A planted case is a .metal file whose offending line ends with `// <-`; the check must report
that line, under that rule, for the kernel the case names ("-" for code no kernel reaches)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from metal_env import emulator_available

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "tools" / "mslemu" / "rules.py"
pytestmark = pytest.mark.skipif(not emulator_available(), reason="needs Linux and clang-16")
sys.path.insert(0, str(ROOT / "tools" / "mslemu"))

PRELUDE = "#include <metal_stdlib>\nusing namespace metal;\n"


def build_std() -> str:
    """The -std the metal compiler gets (cmake/metal_toolchain.cmake, used by CMakeLists.txt)."""
    text = (ROOT / "cmake" / "metal_toolchain.cmake").read_text()
    m = re.search(r'set\(FASTLLM_METAL_STD "(metal\d\.\d)"\)', text)
    assert m and "-std=${FASTLLM_METAL_STD}" in text, "no -std=metalX.Y for metal"
    return m.group(1)


def test_every_kernel_source_is_clean():
    import rules

    found = rules.check(sorted(str(p) for p in (ROOT / "metal").glob("*.metal")), build_std())
    assert not found, "\n".join(map(str, found))


# rule -> [(kernel reported, source)]; the source's `// <-` line is the one to report
CASES = {
    "position-shape": [("k", """
        kernel void k(device float *y [[buffer(0)]],
                      uint3 tgpig [[threadgroup_position_in_grid]],  // <-
                      ushort tiitg [[thread_index_in_threadgroup]],
                      ushort ntg [[threads_per_threadgroup]]) {
            y[tgpig.x * ntg + tiitg] = 0.0f;
        }""")],
    "attr-type": [("k", """
        kernel void k(device float *y [[buffer(0)]],
                      float i [[thread_index_in_threadgroup]]) {  // <-
            y[0] = i;
        }"""), ("k_vec4", """
        kernel void k_vec4(device float *y [[buffer(0)]],
                           uint4 p [[thread_position_in_grid]]) {  // <-
            y[p.x] = 0.0f;
        }""")],
    "attr-match": [("k", """
        kernel void k(device float *y [[buffer(0)]],
                      uint3 p [[thread_position_in_grid]],  // <-
                      ushort3 n [[threads_per_grid]]) {
            y[p.x] = float(n.x);
        }"""), ("k_simd", """
        kernel void k_simd(device float *y [[buffer(0)]],
                           ushort sgitg [[simdgroup_index_in_threadgroup]],  // <-
                           uint tiisg [[thread_index_in_simdgroup]]) {
            y[sgitg * 32 + tiisg] = 0.0f;
        }"""), ("k_index", """
        kernel void k_index(device float *y [[buffer(0)]],
                            uint2 tpitg [[thread_position_in_threadgroup]],
                            ushort tiitg [[thread_index_in_threadgroup]]) {  // <-
            y[tiitg] = float(tpitg.x);
        }""")],
    "param-kind": [("k", """
        kernel void k(device float *y [[buffer(0)]],
                      uint n) {  // <-
            y[0] = float(n);
        }"""), ("k_thread", """
        kernel void k_thread(thread float *y [[buffer(0)]]) {  // <-
            y[0] = 0.0f;
        }"""), ("k_attr", """
        kernel void k_attr(device float *y [[buffer(0)]],
                           uint i [[thread_position_in_grids]]) {  // <-
            y[i] = 0.0f;
        }""")],
    "buffer-index": [("k", """
        kernel void k(device float *x [[buffer(1)]],
                      device float *y [[buffer(1)]]) {  // <-
            y[0] = x[0];
        }"""), ("k_31", """
        kernel void k_31(device float *y [[buffer(31)]]) {  // <-
            y[0] = 0.0f;
        }"""), ("k_auto", """
        kernel void k_auto(device float *y) {  // <-
            y[0] = 0.0f;
        }""")],
    "kernel-return": [("k", """
        kernel float k(device float *y [[buffer(0)]]) {  // <-
            return y[0];
        }""")],
    "kernel-name": [("k", """
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }
        [[host_name("k")]] kernel void k2(device float *y [[buffer(0)]]) { y[0] = 1.0f; }  // <-
        """), ("-", """
        float main(float x) { return x; }  // <-
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }""")],
    "max-threads": [("k", """
        [[max_total_threads_per_threadgroup(2048)]]
        kernel void k(device float *y [[buffer(0)]]) {  // <-
            y[0] = 0.0f;
        }""")],
    "kernel-call": [("k", """
        kernel void other(device float *y [[buffer(0)]]) { y[0] = 1.0f; }
        kernel void k(device float *y [[buffer(0)]]) {
            other(y);  // <-
        }""")],
    "tg-scope": [("k", """
        inline float stage(float v, ushort i) {
            threadgroup float t[32];  // <-
            t[i] = v;
            threadgroup_barrier(mem_flags::mem_threadgroup);
            return t[31 - i];
        }
        kernel void k(device float *y [[buffer(0)]], ushort i [[thread_index_in_threadgroup]]) {
            y[i] = stage(y[i], i);
        }"""), ("-", """
        threadgroup float shared_g[4];  // <-
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }"""), ("-", """
        template <typename T>
        inline T unused_stage(T v, ushort i) {
            threadgroup T t[32];  // <-
            t[i] = v;
            return t[0];
        }
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }""")],
    "tg-size": [("k", """
        kernel void k(device float4 *y [[buffer(0)]],  // <-
                      ushort i [[thread_index_in_threadgroup]]) {
            threadgroup float4 a[1024];
            threadgroup float b[4100];
            a[i] = y[i];
            b[i] = y[i].x;
            threadgroup_barrier(mem_flags::mem_threadgroup);
            y[i] = a[1023 - i] + b[i];
        }"""), ("k_half", """
        template <typename T>
        kernel void k_t(device float *y [[buffer(0)]],  // <-
                        ushort i [[thread_index_in_threadgroup]]) {
            threadgroup T a[16400];
            a[i] = T(y[i]);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            y[i] = float(a[i]);
        }
        typedef decltype(k_t<half>) k_half_t;
        typedef decltype(k_t<float>) k_float_t;
        template [[host_name("k_half")]] kernel k_half_t k_t<half>;
        template [[host_name("k_float")]] kernel k_float_t k_t<float>;""")],
    "double": [("k", """
        kernel void k(device float *y [[buffer(0)]]) {
            double d = 1.0;  // <-
            y[0] = float(d);
        }""")],
    "atomic64": [("k", """
        kernel void k(device atomic_ulong *c [[buffer(0)]]) {  // <-
        }""")],
    "recursion": [("k", """
        inline float fold(float x, int n) {
            return n > 0 ? fold(x * 0.5f, n - 1) : x;  // <-
        }
        kernel void k(device float *y [[buffer(0)]]) {
            y[0] = fold(y[0], 3);
        }""")],
    "function-pointer": [("k", """
        inline float twice(float x) { return 2.0f * x; }
        kernel void k(device float *y [[buffer(0)]]) {
            float (*f)(float) = twice;  // <-
            y[0] = f(y[0]);
        }""")],
    "cxx-unsupported": [("k", """
        kernel void k(device float *y [[buffer(0)]]) {
            int i = 0;
        again:
            y[i] = 0.0f;
            if (++i < 4) goto again;  // <-
        }"""), ("k_lambda", """
        kernel void k_lambda(device float *y [[buffer(0)]]) {
            auto sq = [](float v) { return v * v; };  // <-
            y[0] = sq(y[0]);
        }"""), ("-", """
        struct Base { float a; };
        struct Derived : Base { float b; };  // <-
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }""")],
    "static-local": [("k", """
        inline float count(float x) {
            static float seen = 0.0f;  // <-
            return x + seen;
        }
        kernel void k(device float *y [[buffer(0)]]) { y[0] = count(y[0]); }""")],
    "program-scope": [("-", """
        float scale = 2.0f;  // <-
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }"""), ("-", """
        constant float table[4];  // <-
        kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }""")],
    "address-space": [("k", """
        inline float first(const float *p) {  // <-
            return p[0];
        }
        kernel void k(device float *y [[buffer(0)]]) {
            float t[2] = {1.0f, 2.0f};
            y[0] = first(t);
        }"""), ("k_ref", """
        inline void bump(float &v) {  // <-
            v += 1.0f;
        }
        kernel void k_ref(device float *y [[buffer(0)]]) {
            float v = y[0];
            bump(v);
            y[0] = v;
        }"""), ("k_mix", """
        inline void fill(threadgroup float *t, uint i) { t[i] = 0.0f; }
        kernel void k_mix(device float *y [[buffer(0)]], uint i [[thread_position_in_grid]]) {
            fill(y, i);  // <-
        }""")],
    "std-version": [("k", """
        kernel void k(device float *y [[buffer(0)]]) {
            bfloat b = bfloat(y[0]);  // <-
            y[0] = float(b);
        }""")],
}


def planted(tmp_path: Path, rule: str, i: int, src: str) -> tuple[Path, int]:
    body = PRELUDE + textwrap.dedent(src).lstrip("\n")
    path = tmp_path / f"{rule}_{i}.metal"
    path.write_text(body)
    line = next(n for n, s in enumerate(body.splitlines(), 1) if s.rstrip().endswith("// <-"))
    return path, line


@pytest.mark.parametrize("rule,i", [(r, i) for r, cs in CASES.items() for i in range(len(cs))])
def test_planted_violation_is_reported(tmp_path, rule, i):
    import rules

    kernel, src = CASES[rule][i]
    path, line = planted(tmp_path, rule, i, src)
    found = rules.check([str(path)], "metal3.0")
    hits = [v for v in found if v.rule == rule]
    assert any(v.file == str(path) and v.line == line and kernel in v.kernel.split(",")
               for v in hits), f"want {path.name}:{line}: {kernel}: {rule}; got\n" + "\n".join(
        map(str, found))


def test_a_violation_in_an_included_header(tmp_path):
    """The header's own path and line are reported, with the kernels that reach the code."""
    import rules

    (tmp_path / "helpers.h").write_text(textwrap.dedent("""\
        #pragma once
        inline float widen(float x) {
            double d = x;  // <-
            return float(d * 2);
        }
        """))
    src = tmp_path / "k.metal"
    src.write_text(PRELUDE + '#include "helpers.h"\n' + textwrap.dedent("""\
        kernel void k_a(device float *y [[buffer(0)]]) { y[0] = widen(y[0]); }
        kernel void k_b(device float *y [[buffer(0)]]) { y[1] = widen(y[1]); }
        """))
    found = [v for v in rules.check([str(src)]) if v.rule == "double"]
    assert [(v.file, v.line, v.kernel) for v in found] == [
        (str(tmp_path / "helpers.h"), 3, "k_a,k_b")], found


def test_newer_std_allows_bfloat(tmp_path):
    import rules

    path, _ = planted(tmp_path, "std", 0, CASES["std-version"][0][1])
    assert not [v for v in rules.check([str(path)], "metal3.1") if v.rule == "std-version"]


def test_host_names_are_unique_across_files(tmp_path):
    import rules

    a, b = tmp_path / "a.metal", tmp_path / "b.metal"
    a.write_text(PRELUDE + "kernel void k(device float *y [[buffer(0)]]) { y[0] = 0.0f; }\n")
    b.write_text(PRELUDE + "kernel void k(device float *y [[buffer(0)]]) { y[0] = 1.0f; }\n")
    found = rules.check([str(a), str(b)])
    assert [(v.file, v.line, v.kernel, v.rule) for v in found] == [(str(b), 3, "k",
                                                                     "kernel-name")], found


def test_command_line(tmp_path):
    """FILE:LINE: KERNEL: RULE (section) lines and exit status 1 with violations, 0 without."""
    path, line = planted(tmp_path, "cli", 0, CASES["position-shape"][0][1])
    clean = tmp_path / "clean.metal"
    clean.write_text(PRELUDE + "kernel void k_clean(device float *y [[buffer(0)]],\n"
                     "                    uint i [[thread_position_in_grid]]) { y[i] = 0.0f; }\n")
    r = subprocess.run([sys.executable, str(RULES), str(path), str(clean)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.fullmatch(rf"{re.escape(str(path))}:{line}: k: position-shape: .* \(MSL 5\.2\.3\.6\)",
                        r.stdout.strip()), r.stdout
    r = subprocess.run([sys.executable, str(RULES), "--std", "metal3.0", str(clean)],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout) == (0, ""), r.stdout + r.stderr
    r = subprocess.run([sys.executable, str(RULES), str(tmp_path / "missing.metal")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "missing.metal" in r.stderr
