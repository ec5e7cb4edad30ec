// Prefill mat-mat: Y (M x N) = X (M x K) @ W^T, W (N x K) in any weight type, with 8x8
// simdgroup_matrix multiply-accumulate.
#include <metal_simdgroup_matrix>
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "quants.h"
#include "act.h"

// A threadgroup (4 SIMD groups, 128 threads) computes a 32 x 32 tile of Y: MM_BM tokens by MM_BN
// weight rows. Per step of MM_BK along K, threads 0..63 dequantize the W tile (one 16-value chunk
// each) and threads 64..127 copy the X tile into threadgroup memory as float; each SIMD group then
// accumulates a 16 x 16 quarter of the tile as 2 x 2 8x8 matrices. float tiles keep the f32
// accuracy of the reference (half tiles would round activations and bf16 weights). Edges are
// zero-filled on load and masked on store, so any M, N work; the grid is
// (ceil(N / MM_BN), ceil(M / MM_BM)). As results leave, the epilogue of kargs_mul_mm adds the
// residual ep or gates them by act(ep) (backends/fuse.py: the add and the FFN activation that
// would each be a dispatch of their own); ep is bound to x when there is none.
#define MM_BM 32
#define MM_BN 32
#define MM_BK 32

template <typename Q>
kernel void kernel_mul_mm(constant kargs_mul_mm &args [[buffer(0)]],
                          device const char *w [[buffer(1)]], device const float *x [[buffer(2)]],
                          device float *y [[buffer(3)]], device const float *ep [[buffer(4)]],
                          uint2 tgpig [[threadgroup_position_in_grid]],
                          ushort tiitg [[thread_index_in_threadgroup]],
                          ushort sgitg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float sx[MM_BM * MM_BK];  // X tile, row-major: sx[m][k]
    threadgroup float sw[MM_BN * MM_BK];  // W tile, row-major: sw[n][k]

    const uint M = args.M;
    const uint N = args.N;
    const uint K = args.K;
    const uint n0 = tgpig.x * MM_BN;
    const uint m0 = tgpig.y * MM_BM;
    const uint rb = Q::row_bytes(K);

    // the 16 values this thread loads per K step
    const short lr = (tiitg % 64) / 2;  // tile row
    const short lk = 16 * (tiitg % 2);  // first column within the tile
    const bool loads_w = tiitg < 64;
    const uint grow = (loads_w ? n0 : m0) + lr;
    const bool in_range = grow < (loads_w ? N : M);
    device const char *wrow = w + ulong(loads_w && in_range ? grow : 0) * rb;
    device const float *xrow = x + ulong(!loads_w && in_range ? grow : 0) * K;
    threadgroup float *dst = (loads_w ? sw : sx) + lr * MM_BK + lk;

    // SIMD group s owns rows 16 * (s / 2) .. + 16 of the X tile and 16 * (s % 2) .. + 16 of W
    const short tm = 16 * (sgitg / 2);
    const short tn = 16 * (sgitg % 2);
    simdgroup_float8x8 acc[2][2];
    for (short i = 0; i < 2; ++i) {
        for (short j = 0; j < 2; ++j) {
            acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
    }

    for (uint k0 = 0; k0 < K; k0 += MM_BK) {
        float4 v[4];
        if (!in_range) {
            for (short i = 0; i < 4; ++i) {
                v[i] = 0.0f;
            }
        } else if (loads_w) {
            Q::load16(wrow, k0 + lk, K, v);
        } else {
            load16_f32(xrow, k0 + lk, K, v);
        }
        for (short i = 0; i < 16; ++i) {
            dst[i] = v[i / 4][i % 4];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        for (short kk = 0; kk < MM_BK; kk += 8) {
            simdgroup_float8x8 a[2];
            simdgroup_float8x8 b[2];
            for (short i = 0; i < 2; ++i) {
                simdgroup_load(a[i], sx + (tm + 8 * i) * MM_BK + kk, MM_BK);
            }
            for (short j = 0; j < 2; ++j) {
                // transposed: b[r][c] = W[tn + 8j + c][kk + r], the K x N operand of X @ W^T
                simdgroup_load(b[j], sw + (tn + 8 * j) * MM_BK + kk, MM_BK, ulong2(0, 0), true);
            }
            for (short i = 0; i < 2; ++i) {
                for (short j = 0; j < 2; ++j) {
                    simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // stage the 32 x 32 result through threadgroup memory (sx is free now) and write the part
    // inside Y: a direct simdgroup_store would write past the edges of Y
    threadgroup float *so = sx;
    for (short i = 0; i < 2; ++i) {
        for (short j = 0; j < 2; ++j) {
            simdgroup_store(acc[i][j], so + (tm + 8 * i) * MM_BN + tn + 8 * j, MM_BN);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (short e = tiitg; e < MM_BM * MM_BN; e += 128) {
        const uint m = m0 + e / MM_BN;
        const uint n = n0 + e % MM_BN;
        if (m < M && n < N) {
            const ulong i = ulong(m) * N + n;
            const float v = so[e];
            switch (args.epilogue) {
                case 1: y[i] = v + ep[i]; break;
                case 2: y[i] = swiglu1(ep[i], v); break;
                case 3: y[i] = geglu1(ep[i], v); break;
                default: y[i] = v;
            }
        }
    }
}

typedef decltype(kernel_mul_mm<type_f32>) mul_mm_t;

template [[host_name("kernel_mul_mm_f32_f32")]] kernel mul_mm_t kernel_mul_mm<type_f32>;
template [[host_name("kernel_mul_mm_f16_f32")]] kernel mul_mm_t kernel_mul_mm<type_f16>;
template [[host_name("kernel_mul_mm_bf16_f32")]] kernel mul_mm_t kernel_mul_mm<type_bf16>;
template [[host_name("kernel_mul_mm_q4_0_f32")]] kernel mul_mm_t kernel_mul_mm<type_q4_0>;
template [[host_name("kernel_mul_mm_q4_1_f32")]] kernel mul_mm_t kernel_mul_mm<type_q4_1>;
template [[host_name("kernel_mul_mm_q5_0_f32")]] kernel mul_mm_t kernel_mul_mm<type_q5_0>;
template [[host_name("kernel_mul_mm_q5_1_f32")]] kernel mul_mm_t kernel_mul_mm<type_q5_1>;
template [[host_name("kernel_mul_mm_q8_0_f32")]] kernel mul_mm_t kernel_mul_mm<type_q8_0>;
template [[host_name("kernel_mul_mm_q2_K_f32")]] kernel mul_mm_t kernel_mul_mm<type_q2_K>;
template [[host_name("kernel_mul_mm_q3_K_f32")]] kernel mul_mm_t kernel_mul_mm<type_q3_K>;
template [[host_name("kernel_mul_mm_q4_K_f32")]] kernel mul_mm_t kernel_mul_mm<type_q4_K>;
template [[host_name("kernel_mul_mm_q5_K_f32")]] kernel mul_mm_t kernel_mul_mm<type_q5_K>;
template [[host_name("kernel_mul_mm_q6_K_f32")]] kernel mul_mm_t kernel_mul_mm<type_q6_K>;
template [[host_name("kernel_mul_mm_mxfp4_f32")]] kernel mul_mm_t kernel_mul_mm<type_mxfp4>;
