// Index of each row's maximum, the first one on ties (as numpy.argmax).
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// The first maximum of xr[0..n) for one threadgroup, valid in thread 0. Each thread keeps the
// best (value, index) of its stride, ties going to the lower index; SIMD groups reduce with
// simd_max then simd_min over the indices holding that maximum, and threadgroup memory joins
// the SIMD groups the same way.
inline uint argmax_row(device const float *xr, uint n, threadgroup float *best_v,
                       threadgroup uint *best_i, ushort tiitg, ushort ntg, ushort sgitg,
                       ushort tiisg, ushort nsg) {
    float v = -INFINITY;
    uint idx = 0xFFFFFFFFu;
    for (uint i = tiitg; i < n; i += ntg) {
        const float e = xr[i];
        if (idx == 0xFFFFFFFFu || e > v) {  // ascending i: strict > keeps the first maximum
            v = e;
            idx = i;
        }
    }
    const float m = simd_max(v);
    const uint mi = simd_min(v == m ? idx : 0xFFFFFFFFu);
    if (tiisg == 0) {
        best_v[sgitg] = m;
        best_i[sgitg] = mi;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float bv = best_v[0];
    uint bi = best_i[0];
    if (tiitg == 0) {
        for (short s = 1; s < nsg; ++s) {
            if (best_v[s] > bv || (best_v[s] == bv && best_i[s] < bi)) {
                bv = best_v[s];
                bi = best_i[s];
            }
        }
    }
    return bi;
}

// One threadgroup per row.
kernel void kernel_argmax_f32(constant kargs_argmax &args [[buffer(0)]],
                              device const float *x [[buffer(1)]], device int *dst [[buffer(2)]],
                              uint tgpig [[threadgroup_position_in_grid]],
                              ushort tiitg [[thread_index_in_threadgroup]],
                              ushort ntg [[threads_per_threadgroup]],
                              ushort sgitg [[simdgroup_index_in_threadgroup]],
                              ushort tiisg [[thread_index_in_simdgroup]],
                              ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float best_v[32];
    threadgroup uint best_i[32];
    const uint n = args.n_cols;
    const uint bi = argmax_row(x + ulong(tgpig) * n, n, best_v, best_i, tiitg, ntg, sgitg, tiisg,
                               nsg);
    if (tiitg == 0) {
        dst[tgpig] = int(bi);
    }
}

// Greedy decoding's last dispatch of a step (one row, one token): the token becomes the next
// step's input (dst, the token ids) and goes into the history at position - args.pos0, and the
// step moves one position on, so steps follow each other in one command buffer with nothing
// read back between them.
kernel void kernel_argmax_greedy(constant kargs_argmax &args [[buffer(0)]],
                                 device const float *x [[buffer(1)]],
                                 device int *dst [[buffer(2)]],
                                 device kargs_step *step [[buffer(3)]],
                                 device int *history [[buffer(4)]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort ntg [[threads_per_threadgroup]],
                                 ushort sgitg [[simdgroup_index_in_threadgroup]],
                                 ushort tiisg [[thread_index_in_simdgroup]],
                                 ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float best_v[32];
    threadgroup uint best_i[32];
    const uint bi = argmax_row(x, args.n_cols, best_v, best_i, tiitg, ntg, sgitg, tiisg, nsg);
    if (tiitg == 0) {
        dst[0] = int(bi);
        history[step->pos - args.pos0] = int(bi);
        step->pos += 1;
        step->n_kv += 1;
    }
}
