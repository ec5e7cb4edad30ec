// Decode mat-vec: y[m, n] = dot(x[m, :], W[n, :]) for a few token rows m, W in any weight type.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "quants.h"

// Threadgroup = MV_NSG SIMD groups; each SIMD group computes MV_NR consecutive rows of W for one
// token, so a chunk of x that a lane loads is used MV_NR times. Lanes take the 16-value chunks of
// a row in turn (neighbouring lanes read neighbouring bytes), and simd_sum joins the partial dot
// products. The grid is (ceil(N / (MV_NSG * MV_NR)), M): the lowering in backends/metal.py uses
// the same constants.
#define MV_NSG 2
#define MV_NR 4

template <typename Q>
kernel void kernel_mul_mv(constant kargs_mul_mat &args [[buffer(0)]],
                          device const char *w [[buffer(1)]], device const float *x [[buffer(2)]],
                          device float *y [[buffer(3)]],
                          uint2 tgpig [[threadgroup_position_in_grid]],
                          ushort sgitg [[simdgroup_index_in_threadgroup]],
                          ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint K = args.K;
    const uint N = args.N;
    const uint m = tgpig.y;
    const uint row0 = (tgpig.x * MV_NSG + sgitg) * MV_NR;
    const uint rb = Q::row_bytes(K);
    device const float *xr = x + ulong(m) * K;

    device const char *wr[MV_NR];
    for (short r = 0; r < MV_NR; ++r) {
        // rows past N repeat the last row (their sums are dropped): no read past the buffer
        wr[r] = w + ulong(min(row0 + r, N - 1)) * rb;
    }

    float acc[MV_NR];
    for (short r = 0; r < MV_NR; ++r) {
        acc[r] = 0.0f;
    }
    for (uint k = uint(tiisg) * 16; k < K; k += 32 * 16) {
        float4 xv[4];
        load16_f32(xr, k, K, xv);
        for (short r = 0; r < MV_NR; ++r) {
            float4 wv[4];
            Q::load16(wr[r], k, K, wv);
            acc[r] += dot(wv[0], xv[0]) + dot(wv[1], xv[1]) + dot(wv[2], xv[2]) + dot(wv[3], xv[3]);
        }
    }

    for (short r = 0; r < MV_NR; ++r) {
        const float s = simd_sum(acc[r]);
        if (tiisg == 0 && row0 + r < N) {
            y[ulong(m) * N + row0 + r] = s;
        }
    }
}

typedef decltype(kernel_mul_mv<type_f32>) mul_mv_t;

template [[host_name("kernel_mul_mv_f32_f32")]] kernel mul_mv_t kernel_mul_mv<type_f32>;
template [[host_name("kernel_mul_mv_f16_f32")]] kernel mul_mv_t kernel_mul_mv<type_f16>;
template [[host_name("kernel_mul_mv_bf16_f32")]] kernel mul_mv_t kernel_mul_mv<type_bf16>;
template [[host_name("kernel_mul_mv_q4_0_f32")]] kernel mul_mv_t kernel_mul_mv<type_q4_0>;
template [[host_name("kernel_mul_mv_q4_1_f32")]] kernel mul_mv_t kernel_mul_mv<type_q4_1>;
template [[host_name("kernel_mul_mv_q5_0_f32")]] kernel mul_mv_t kernel_mul_mv<type_q5_0>;
template [[host_name("kernel_mul_mv_q5_1_f32")]] kernel mul_mv_t kernel_mul_mv<type_q5_1>;
template [[host_name("kernel_mul_mv_q8_0_f32")]] kernel mul_mv_t kernel_mul_mv<type_q8_0>;
template [[host_name("kernel_mul_mv_q2_K_f32")]] kernel mul_mv_t kernel_mul_mv<type_q2_K>;
template [[host_name("kernel_mul_mv_q3_K_f32")]] kernel mul_mv_t kernel_mul_mv<type_q3_K>;
template [[host_name("kernel_mul_mv_q4_K_f32")]] kernel mul_mv_t kernel_mul_mv<type_q4_K>;
template [[host_name("kernel_mul_mv_q5_K_f32")]] kernel mul_mv_t kernel_mul_mv<type_q5_K>;
template [[host_name("kernel_mul_mv_q6_K_f32")]] kernel mul_mv_t kernel_mul_mv<type_q6_K>;
