// y = W x, W is [rows, cols] half, x float; one SIMD-group (32 lanes) per row.
#include <metal_stdlib>
using namespace metal;

struct MatvecParams {
    uint rows;
    uint cols;
};

kernel void matvec_simd(device const half *W [[buffer(0)]], device const float *x [[buffer(1)]],
                        device float *y [[buffer(2)]], constant MatvecParams &p [[buffer(3)]],
                        uint tgid [[threadgroup_position_in_grid]],
                        ushort sgid [[simdgroup_index_in_threadgroup]],
                        ushort lane [[thread_index_in_simdgroup]],
                        ushort nsg [[simdgroups_per_threadgroup]]) {
    const uint row = tgid * nsg + sgid;
    if (row >= p.rows)
        return;
    device const half4 *w4 = (device const half4 *)(W + row * p.cols);
    device const float4 *x4 = (device const float4 *)x;
    float acc = 0.0f;
    for (uint i = lane; i < p.cols / 4; i += 32) {
        float4 w = float4(w4[i]);  // half4 -> float4 constructor
        acc += dot(w, x4[i]);
    }
    acc = simd_sum(acc);
    if (lane == 0) {
        y[row] = acc;
    }
}

// Same reduction, but the cross-lane step written with simd_shuffle_down.
kernel void matvec_shuffle(device const half *W [[buffer(0)]], device const float *x [[buffer(1)]],
                           device float *y [[buffer(2)]], constant MatvecParams &p [[buffer(3)]],
                           uint2 tgid [[threadgroup_position_in_grid]],
                           uint lane [[thread_index_in_simdgroup]]) {
    const uint row = tgid.x;
    float acc = 0.0f;
    for (uint i = lane; i < p.cols; i += 32) {
        acc += float(W[row * p.cols + i]) * x[i];
    }
    for (ushort off = 16; off > 0; off >>= 1) {
        acc += simd_shuffle_down(acc, off);
    }
    if (lane == 0)
        y[row] = acc;
}
