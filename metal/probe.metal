// The capability probe of the native tests (tests/metal/native_probe.py): one SIMD group runs
// the two kinds of SIMD-group work every other kernel leans on, a reduction (simd_sum) and an
// 8 x 8 matrix product (simdgroup_multiply_accumulate), and the test holds both against NumPy.
// A device that reports a GPU family but computes these wrong (a paravirtual GPU) is caught here
// instead of in every numeric test.
#include <metal_simdgroup_matrix>
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// One threadgroup of 32 threads. out[0..64) = a x b + c (8 x 8, row-major), out[64 + i] =
// the sum of x over the SIMD group, for each lane i.
kernel void kernel_probe_simd(constant kargs_unary &args [[buffer(0)]],
                              device const float *a [[buffer(1)]],
                              device const float *b [[buffer(2)]],
                              device const float *c [[buffer(3)]],
                              device const float *x [[buffer(4)]],
                              device float *out [[buffer(5)]],
                              ushort tiisg [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 ma;
    simdgroup_float8x8 mb;
    simdgroup_float8x8 mc;
    simdgroup_load(ma, a, 8);
    simdgroup_load(mb, b, 8);
    simdgroup_load(mc, c, 8);
    simdgroup_multiply_accumulate(mc, ma, mb, mc);
    simdgroup_store(mc, out, 8);
    out[64 + tiisg] = simd_sum(tiisg < args.n ? x[tiisg] : 0.0f);
}
