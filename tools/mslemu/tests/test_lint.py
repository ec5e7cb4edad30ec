import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mslemu

K = os.path.join(os.path.dirname(__file__), "..", "kernels")


@pytest.mark.parametrize("k", ["matvec", "reduce_tg", "gemm_sgmat", "mv_kquant", "attn_decode"])
def test_good_kernels_lint_clean(k):
    assert "error" not in mslemu.lint(os.path.join(K, k + ".metal"))


BAD = {
    "device_to_threadgroup": """
        void fill(threadgroup float* t, uint i) { t[i] = 0.0f; }
        kernel void k(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) { fill(y, i); }""",
    "unqualified_pointer_param": """
        void fill(float* t, uint i) { t[i] = 0.0f; }
        kernel void k(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) { fill(y, i); }""",
    "store_to_constant": """
        kernel void k(constant float* c [[buffer(0)]], uint i [[thread_position_in_grid]]) { c[i] = 1.0f; }""",
    "simdgroup_load_from_thread_memory": """
        kernel void k(device float* y [[buffer(0)]]) {
            float tmp[64];
            simdgroup_float8x8 m;
            simdgroup_load(m, tmp, 8);
            simdgroup_store(m, y, 8);
        }""",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_address_space_errors_are_caught(tmp_path, name):
    p = tmp_path / (name + ".metal")
    p.write_text("#include <metal_stdlib>\nusing namespace metal;\n" + textwrap.dedent(BAD[name]))
    with pytest.raises(RuntimeError) as e:
        mslemu.lint(str(p))
    print(name, "->", next(l for l in str(e.value).splitlines() if "error:" in l))
