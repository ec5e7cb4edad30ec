// RMS norm over each group of `group` values of a row (the whole row, or one head for q/k norms).
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// One threadgroup per (row, group): threads stride over the group summing squares, simd_sum
// reduces each SIMD group and threadgroup memory joins the SIMD groups. w (group values) is
// bound to x when has_weight is 0 and then never read.
kernel void kernel_rms_norm_f32(
    constant kargs_rms_norm &args [[buffer(0)]], device const float *x [[buffer(1)]],
    device const float *w [[buffer(2)]], device float *dst [[buffer(3)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]],
    ushort ntg [[threads_per_threadgroup]], ushort sgitg [[simdgroup_index_in_threadgroup]],
    ushort tiisg [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];

    const uint g = args.group;
    const ulong base = ulong(tgpig) * g;  // groups of all rows are contiguous
    device const float *xg = x + base;

    float s = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        s += xg[i] * xg[i];
    }
    s = simd_sum(s);
    if (tiisg == 0) {
        partial[sgitg] = s;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (short i = 0; i < nsg; ++i) {
        total += partial[i];
    }
    const float inv = 1.0f / sqrt(total / float(g) + args.eps);

    device float *out = dst + base;
    for (uint i = tiitg; i < g; i += ntg) {
        const float v = xg[i] * inv;
        out[i] = args.has_weight ? v * w[i] : v;
    }
}
