// Block sum with threadgroup memory + threadgroup_barrier (tree reduction),
// plus a half4 swizzle/scale prologue.
#include <metal_stdlib>
using namespace metal;

kernel void block_sum(device const half4 *in [[buffer(0)]], device float *out [[buffer(1)]],
                      constant uint &n4 [[buffer(2)]], uint gid [[thread_position_in_grid]],
                      uint tid [[thread_position_in_threadgroup]],
                      uint tg [[threadgroup_position_in_grid]],
                      uint tpg [[threads_per_threadgroup]]) {
    threadgroup float partial[256];
    float v = 0.0f;
    if (gid < n4) {
        half4 h = in[gid];
        half4 s = h.wzyx * 2.0h;  // swizzle + half literal
        v = float(s.x + s.y) + float(s.z) + float(s.w);
    }
    partial[tid] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint stride = tpg / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            partial[tid] += partial[tid + stride];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid == 0)
        out[tg] = partial[0];
}

// BUGGY variant: the barrier inside the loop is missing.
kernel void block_sum_nobarrier(device const half4 *in [[buffer(0)]],
                                device float *out [[buffer(1)]], constant uint &n4 [[buffer(2)]],
                                uint gid [[thread_position_in_grid]],
                                uint tid [[thread_position_in_threadgroup]],
                                uint tg [[threadgroup_position_in_grid]],
                                uint tpg [[threads_per_threadgroup]]) {
    threadgroup float partial[256];
    float v = 0.0f;
    if (gid < n4) {
        half4 h = in[gid];
        v = float(h.x) + float(h.y) + float(h.z) + float(h.w);
        v *= 2.0f;
    }
    partial[tid] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint stride = tpg / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            partial[tid] += partial[tid + stride];
        }
        // threadgroup_barrier(mem_flags::mem_threadgroup);   <-- forgotten
    }
    if (tid == 0)
        out[tg] = partial[0];
}

// Dynamic threadgroup memory ([[threadgroup(0)]]) + simd_sum + early return
// (threads past the end leave before the barrier).
kernel void block_sum_dyn(device const float *in [[buffer(0)]], device float *out [[buffer(1)]],
                          constant uint &n [[buffer(2)]],
                          threadgroup float *sg_sums [[threadgroup(0)]],
                          uint gid [[thread_position_in_grid]],
                          uint tg [[threadgroup_position_in_grid]],
                          ushort sgid [[simdgroup_index_in_threadgroup]],
                          ushort lane [[thread_index_in_simdgroup]],
                          ushort nsg [[simdgroups_per_threadgroup]]) {
    float v = gid < n ? in[gid] : 0.0f;
    float s = simd_sum(v);
    if (lane == 0)
        sg_sums[sgid] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgid == 0) {
        float t = lane < nsg ? sg_sums[lane] : 0.0f;
        t = simd_sum(t);
        if (lane == 0)
            out[tg] = t;
    }
}
