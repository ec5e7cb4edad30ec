"""Regression tests for what LLM-inference kernels needed (each failed before the fix):
kernel templates + [[host_name]] explicit instantiation (also from macros), function constants,
multi-declarator threadgroup arrays, 16-byte aligned buffers, stdlib gaps."""

import os
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mslemu

TEMPLATES = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    struct Args { int n; float scale; };

    template <typename T, short NR>
    kernel void scale_rows(constant Args & args [[buffer(0)]],
                           device const T * x [[buffer(1)]],
                           device float * y   [[buffer(2)]],
                           uint tg [[threadgroup_position_in_grid]],
                           ushort lane [[thread_index_in_simdgroup]],
                           ushort q [[thread_index_in_quadgroup]]) {
        threadgroup float part[2][32], other[4];       // two arrays in one declaration
        part[1][lane] = float(x[tg * 32 + lane]) * args.scale + NR;
        if (lane < 4) other[lane] = q;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        y[tg * 32 + lane] = part[1][31 - lane] + other[lane % 4] * 0.0f;
    }

    typedef decltype(scale_rows<float, 1>) scale_rows_f32_t;
    template [[host_name("scale_rows_f32_r1")]] kernel scale_rows_f32_t scale_rows<float, 1>;
    template [[host_name("scale_rows_f32_r4")]] kernel scale_rows_f32_t scale_rows<float, 4>;
    template [[host_name("scale_rows_f16_r2")]]
    kernel void scale_rows<half, 2>(constant Args & args [[buffer(0)]], device const half * x [[buffer(1)]],
                                    device float * y [[buffer(2)]], uint tg [[threadgroup_position_in_grid]],
                                    ushort lane [[thread_index_in_simdgroup]], ushort q [[thread_index_in_quadgroup]]);
    #define INSTANTIATE(T, NR) \\
        template [[host_name("scale_rows_" #T "_m" #NR)]] kernel scale_rows_f32_t scale_rows<T, NR>;
    INSTANTIATE(float, 7)

    [[host_name("fill_two")]] kernel void fill(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {
        o[i] = 2.0f;
    }
""")

FCONST = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    constant bool  FC_bias  [[function_constant(0)]];
    constant int   FC_width [[function_constant(1)]];
    constant float FC_cap   [[function_constant(2)]];
    constant bool  FC_has_cap = is_function_constant_defined(FC_cap);

    kernel void fc_kernel(device const float * x    [[buffer(0)]],
                          device const float * bias [[buffer(1), function_constant(FC_bias)]],
                          device float * y          [[buffer(2)]],
                          uint i [[thread_position_in_grid]],
                          uint t [[thread_position_in_threadgroup]]) {
        threadgroup float tile[FC_width];             // function constant as an array size
        tile[t % FC_width] = x[i];
        float v = tile[t % FC_width];
        if (FC_bias) v += bias[i];
        if (FC_has_cap) v = min(v, FC_cap);
        y[i] = v + (bias == nullptr ? 1000.0f : 0.0f);
    }
""")


def _lib(tmp_path, name, src, **kw):
    p = tmp_path / name
    p.write_text(src)
    return mslemu.Library(str(p), **kw), str(p)


@pytest.fixture(scope="module")
def tmpl(tmp_path_factory):
    return _lib(tmp_path_factory.mktemp("tmpl"), "tmpl.metal", TEMPLATES)


@pytest.mark.parametrize(
    "kname,T,NR",
    [
        ("scale_rows_f32_r1", np.float32, 1),
        ("scale_rows_f32_r4", np.float32, 4),
        ("scale_rows_f16_r2", np.float16, 2),
        ("scale_rows_float_m7", np.float32, 7),
    ],
)
@pytest.mark.parametrize("policy", ["forward", "reverse", "random"])
def test_kernel_template_host_name(tmpl, kname, T, NR, policy):
    L, _ = tmpl
    x = np.arange(64, dtype=T)
    args = np.array([(64, 0.5)], dtype=[("n", "<i4"), ("scale", "<f4")])
    y = L.buffer(np.zeros(64, np.float32))
    st = L.dispatch(
        kname,
        [L.buffer(args), L.buffer(x), y],
        threadgroups=(2,),
        threads_per_threadgroup=(32,),
        policy=policy,
        strict=True,
    )
    ref = (x.astype(np.float64).reshape(2, 32)[:, ::-1] * 0.5 + NR).ravel()
    np.testing.assert_array_equal(y, ref)
    assert st["threads"] == 64


def test_host_name_on_plain_kernel(tmpl):
    L, _ = tmpl
    o = L.buffer(np.zeros(4, np.float32))
    L.dispatch("fill_two", [o], threads=(4,), threads_per_threadgroup=(4,))
    assert (o == 2).all()


def test_kernel_template_lint(tmpl):
    assert "error" not in mslemu.lint(tmpl[1])


def test_unknown_host_name(tmpl):
    with pytest.raises(mslemu.KernelError, match="no kernel named scale_rows"):
        tmpl[0].dispatch("scale_rows", [], threadgroups=(1,))


@pytest.mark.parametrize("fc", [{"FC_bias": True, 1: 8, "FC_cap": 3.5}, {0: False, "FC_width": 4}])
def test_function_constants(tmp_path, fc):
    L, path = _lib(tmp_path, "fc.metal", FCONST, function_constants=fc)
    n = 64
    x = np.linspace(-2, 6, n).astype(np.float32)
    b = np.linspace(0, 1, n).astype(np.float32)
    y = L.buffer(np.zeros(n, np.float32))
    bias = fc.get("FC_bias", fc.get(0))
    bufs = [L.buffer(x), L.buffer(b) if bias else None, y]
    L.dispatch("fc_kernel", bufs, threads=(n,), threads_per_threadgroup=(32,), strict=True)
    ref = x + (b if bias else 1000.0)
    if "FC_cap" in fc:
        ref = np.minimum(x + b, 3.5)
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert "error" not in mslemu.lint(path)


def test_function_constant_buffer_must_be_bound(tmp_path):
    L, _ = _lib(tmp_path, "fc.metal", FCONST, function_constants={0: True, 1: 4})
    with pytest.raises(mslemu.KernelError, match=r"bias \[\[buffer\(1\)\]\] is not bound"):
        L.dispatch(
            "fc_kernel",
            {0: L.buffer(np.zeros(4, np.float32)), 2: L.buffer(np.zeros(4, np.float32))},
            threads=(4,),
            threads_per_threadgroup=(4,),
        )


def test_function_constant_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="FC_typo"):
        _lib(tmp_path, "fc.metal", FCONST, function_constants={"FC_typo": 1, 1: 4})


ALIGN = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    kernel void load4(device const float* x [[buffer(0)]], device float4* y [[buffer(1)]], uint i [[thread_position_in_grid]]) {
        device const float4* x4 = (device const float4*) x;
        y[i] = x4[i] * 2.0f;
    }
    kernel void overrun(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
        x[i] = 1.0f;            // launched with one thread too many
    }
""")


def test_buffers_are_16_byte_aligned(tmp_path):
    """A 36-byte buffer used to start 4 bytes off a 16-byte boundary (its end touched the guard
    page), so float4 loads crashed with a bogus 'invalid memory access'."""
    L, _ = _lib(tmp_path, "align.metal", ALIGN)
    x = L.buffer(np.arange(9, dtype=np.float32))
    assert x.ctypes.data % 16 == 0
    y = L.buffer(np.zeros((2, 4), np.float32))
    L.dispatch("load4", [x, y], threads=(2,), threads_per_threadgroup=(2,))
    np.testing.assert_array_equal(y.ravel(), np.arange(8) * 2)


def test_write_into_alignment_padding_is_reported(tmp_path):
    L, _ = _lib(tmp_path, "align.metal", ALIGN)
    x = L.buffer(np.zeros(9, np.float32))  # 36 bytes + 12 bytes padding before the guard page
    with pytest.raises(
        mslemu.KernelError, match=r"out-of-bounds write past the end of buffer\(0\)"
    ):
        L.dispatch("overrun", [x], threads=(10,), threads_per_threadgroup=(10,))


STDLIB = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    static void deq(device const uchar* q, half d, thread half4x4 & reg) {
        for (int i = 0; i < 16; ++i) reg[i / 4][i % 4] = d * half(int(q[i]) - 8);
    }
    kernel void probe(device float* o [[buffer(0)]], device const half4* h [[buffer(1)]],
                      device const uchar* q [[buffer(2)]]) {
        float4 a = static_cast<float4>(h[0]);                       // conversion, not a bit cast
        int4   b = static_cast<int4>(float4(1.7f, -2.5f, 3.2f, 4.9f));
        o[0] = a.x; o[1] = a.y; o[2] = b.x; o[3] = b.y;
        o[4] = FLT_MAX; o[5] = HALF_MAX; o[6] = M_PI_F; o[7] = M_SQRT2_F;
        bool4 c = bool4(true, false, true, false);
        float4 s = select(float4(1.0f), float4(2.0f), c);
        o[8] = s.x; o[9] = s.y; o[10] = c.z ? 1.0f : 0.0f;
        float4 u = float4(1, 2, 3, 4), v = float4(4, 3, 2, 1);
        o[11] = select(u, v, u < v).w;
        o[12] = max3(1.0f, 3.0f, 2.0f); o[13] = sign(-2.0f); o[14] = popcount(7u); o[15] = clz(1u);
        o[16] = step(0.5f, 0.7f); o[17] = fmod(7.0f, 3.0f); o[18] = length(float2(3, 4)); o[19] = precise::divide(1.0f, 4.0f);
        half4x4 r;
        deq(q, 0.5h, r);
        float4x4 f = float4x4(r);
        o[20] = (f * float4(1, 0, 0, 0)).y; o[21] = f[3][3];
        float2x2 m = float2x2(float2(1, 2), float2(3, 4));
        o[22] = (transpose(m) * m)[1][0];
        o[23] = sizeof(bool4) + sizeof(half4x4);
    }
""")


def test_stdlib_additions(tmp_path):
    L, _ = _lib(tmp_path, "stdlib.metal", STDLIB)
    o = L.buffer(np.zeros(24, np.float32))
    L.dispatch(
        "probe",
        [
            o,
            L.buffer(np.array([1.5, -2.25, 3, 4], np.float16)),
            L.buffer(np.arange(16, dtype=np.uint8)),
        ],
        threads=(1,),
        threads_per_threadgroup=(1,),
    )
    exp = [
        1.5,
        -2.25,
        1,
        -2,
        np.finfo(np.float32).max,
        65504,
        np.pi,
        np.sqrt(2),
        2,
        1,
        1,
        4,
        3,
        -1,
        3,
        31,
        1,
        1,
        5,
        0.25,
        -3.5,
        3.5,
        11,
        4 + 32,
    ]
    np.testing.assert_allclose(o, np.array(exp, np.float32), rtol=1e-6)


def test_cache_key_includes_shim(tmp_path, monkeypatch):
    p = tmp_path / "align.metal"
    p.write_text(ALIGN)
    a = mslemu.build(str(p))
    monkeypatch.setattr(mslemu, "_shim_digest", lambda: "changed")
    assert mslemu.build(str(p)) != a
