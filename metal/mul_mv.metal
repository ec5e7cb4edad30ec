// Decode mat-vec: y[m, n] = dot(x[m, :], W[n, :]) for a few token rows m, W in any weight type.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "quants.h"
#include "act.h"

// Threadgroup = MV_NSG SIMD groups; each SIMD group computes MV_NR consecutive rows of W for one
// token, and simd_sum joins the lanes' partial dot products. The grid is
// (ceil(N / (MV_NSG * MV_NR)), M): backends/metal/lowering.py uses the same constants.
#define MV_NSG 2
#define MV_NR 4

// acc[r] = dot(x', W[row0 + r]) summed over the SIMD group, x' the token row xr as it is loaded:
// xr (x_mode 0), xr * inv * ar (1: ar the norm weight, inv the row's 1 / rms) or
// silu(xr) * ar (2: ar the up row). Lanes take the 16-value chunks of a row in turn (neighbouring
// lanes read neighbouring bytes), so a chunk of x serves MV_NR rows of W.
template <typename Q>
inline void mv_rows(device const char *w, uint N, uint row0, device const float *xr,
                    device const float *ar, uint x_mode, float inv, uint K, ushort tiisg,
                    thread float *acc) {
    const uint rb = Q::row_bytes(K);
    device const char *wr[MV_NR];
    for (short r = 0; r < MV_NR; ++r) {
        // rows past N repeat the last row (their sums are dropped): no read past the buffer
        wr[r] = w + ulong(min(row0 + r, N - 1)) * rb;
        acc[r] = 0.0f;
    }
    for (uint k = uint(tiisg) * 16; k < K; k += 32 * 16) {
        float4 xv[4];
        load16_f32(xr, k, K, xv);
        if (x_mode != 0) {
            float4 av[4];
            load16_f32(ar, k, K, av);
            for (short i = 0; i < 4; ++i) {
                if (x_mode == 1) {
                    xv[i] *= inv * av[i];
                } else {
                    for (short c = 0; c < 4; ++c) {
                        xv[i][c] = swiglu1(xv[i][c], av[i][c]);
                    }
                }
            }
        }
        for (short r = 0; r < MV_NR; ++r) {
            float4 wv[4];
            Q::load16(wr[r], k, K, wv);
            acc[r] += dot(wv[0], xv[0]) + dot(wv[1], xv[1]) + dot(wv[2], xv[2]) + dot(wv[3], xv[3]);
        }
    }
    for (short r = 0; r < MV_NR; ++r) {
        acc[r] = simd_sum(acc[r]);
    }
}

template <typename Q>
kernel void kernel_mul_mv(constant kargs_mul_mat &args [[buffer(0)]],
                          device const char *w [[buffer(1)]], device const float *x [[buffer(2)]],
                          device float *y [[buffer(3)]],
                          uint2 tgpig [[threadgroup_position_in_grid]],
                          ushort sgitg [[simdgroup_index_in_threadgroup]],
                          ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint N = args.N;
    const uint m = tgpig.y;
    const uint row0 = (tgpig.x * MV_NSG + sgitg) * MV_NR;
    device const float *xr = x + ulong(m) * args.K;
    float acc[MV_NR];
    mv_rows<Q>(w, N, row0, xr, xr, 0, 1.0f, args.K, tiisg, acc);
    for (short r = 0; r < MV_NR; ++r) {
        if (tiisg == 0 && row0 + r < N) {
            y[ulong(m) * N + row0 + r] = acc[r];
        }
    }
}

// The fused mat-vec of backends/fuse.py (kargs_mul_mv_fused): x' made as x is loaded (the
// rms_norm before q/k/v or gate/up: each SIMD group reduces the one token row's squares itself,
// 4K bytes it reads anyway; or the SwiGLU before the down projection), up to three weights of
// this type in one grid (q, k, v or gate, up: the threadgroups of slot s follow slot s - 1's),
// and the residual added on store. aux is nw (x_mode 1) or up (2); unused buffers are bound to x.
template <typename Q>
kernel void kernel_mul_mv_fused(constant kargs_mul_mv_fused &args [[buffer(0)]],
                                device const float *x [[buffer(1)]],
                                device const float *aux [[buffer(2)]],
                                device const float *res [[buffer(3)]],
                                device const char *w0 [[buffer(4)]],
                                device const char *w1 [[buffer(5)]],
                                device const char *w2 [[buffer(6)]], device float *y0 [[buffer(7)]],
                                device float *y1 [[buffer(8)]], device float *y2 [[buffer(9)]],
                                uint2 tgpig [[threadgroup_position_in_grid]],
                                ushort sgitg [[simdgroup_index_in_threadgroup]],
                                ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint K = args.K;
    const uint m = tgpig.y;
    uint tg = tgpig.x;
    device const char *w = w0;
    device float *y = y0;
    uint N = args.n_rows0;
    if (tg >= args.tg_end1) {
        tg -= args.tg_end1;
        w = w2;
        y = y2;
        N = args.n_rows2;
    } else if (tg >= args.tg_end0) {
        tg -= args.tg_end0;
        w = w1;
        y = y1;
        N = args.n_rows1;
    }
    const uint row0 = (tg * MV_NSG + sgitg) * MV_NR;
    device const float *xr = x + ulong(m) * K;
    float inv = 1.0f;
    if (args.x_mode == 1) {
        float ss = 0.0f;
        for (uint k = tiisg; k < K; k += 32) {
            ss += xr[k] * xr[k];
        }
        inv = 1.0f / sqrt(simd_sum(ss) / float(K) + args.eps);
    }
    device const float *ar = aux + (args.x_mode == 2 ? ulong(m) * K : 0);
    float acc[MV_NR];
    mv_rows<Q>(w, N, row0, xr, ar, args.x_mode, inv, K, tiisg, acc);
    for (short r = 0; r < MV_NR; ++r) {
        const ulong i = ulong(m) * N + row0 + r;
        if (tiisg == 0 && row0 + r < N) {
            y[i] = args.has_res ? acc[r] + res[i] : acc[r];
        }
    }
}

// Mat-vecs over each row's chosen experts (ggml's mul_mat_id; kargs_mul_mv_id): pair
// p = row * k + j multiplies x row p (x_per_pair) or p / k by the m rows of expert ids[p]'s
// matrix (rows ids[p] * m .. of w) into y[p * m ..]. Grid (ceil(m / (MV_NSG * MV_NR)),
// n_pairs): decode reads each row's k experts once.
template <typename Q>
kernel void kernel_mul_mv_id(constant kargs_mul_mv_id &args [[buffer(0)]],
                             device const char *w [[buffer(1)]],
                             device const float *x [[buffer(2)]],
                             device const int *ids [[buffer(3)]], device float *y [[buffer(4)]],
                             uint2 tgpig [[threadgroup_position_in_grid]],
                             ushort sgitg [[simdgroup_index_in_threadgroup]],
                             ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint p = tgpig.y;
    const uint m = args.m;
    const uint e = uint(clamp(ids[p], 0, int(args.n_expert) - 1));
    const uint row0 = (tgpig.x * MV_NSG + sgitg) * MV_NR;
    device const char *we = w + ulong(e) * m * Q::row_bytes(args.K);
    device const float *xr = x + ulong(args.x_per_pair ? p : p / args.k) * args.K;
    float acc[MV_NR];
    mv_rows<Q>(we, m, row0, xr, xr, 0, 1.0f, args.K, tiisg, acc);
    for (short r = 0; r < MV_NR; ++r) {
        if (tiisg == 0 && row0 + r < m) {
            y[ulong(p) * m + row0 + r] = acc[r];
        }
    }
}

// The grouped form (prefill): threadgroup (row block, slot) takes the up to MV_ID_C pairs of
// one expert that slot tgpig.y of kernel_moe_group_f32's chunk table names (groups[e] ..
// groups[e + 1] of the list at groups[E + 1 ..] are expert e's) and reads each 16-value chunk
// of a weight row once for all of them. Grid (ceil(m / (MV_NSG * MV_NR)), n_chunks); an unused
// slot (expert E) does nothing.
#define MV_ID_C 8
template <typename Q>
kernel void kernel_mul_mv_id_grouped(constant kargs_mul_mv_id &args [[buffer(0)]],
                                     device const char *w [[buffer(1)]],
                                     device const float *x [[buffer(2)]],
                                     device const uint *groups [[buffer(3)]],
                                     device float *y [[buffer(4)]],
                                     uint2 tgpig [[threadgroup_position_in_grid]],
                                     ushort sgitg [[simdgroup_index_in_threadgroup]],
                                     ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint m = args.m, K = args.K;
    device const uint *slot = groups + args.n_expert + 1 + args.n_pairs + 2 * tgpig.y;
    const uint e = slot[0];
    if (e >= args.n_expert) {
        return;
    }
    const uint first = slot[1];
    const uint end = groups[e + 1];
    if (first >= end) {
        return;
    }
    const uint nc = min(uint(MV_ID_C), end - first);
    const uint row0 = (tgpig.x * MV_NSG + sgitg) * MV_NR;
    const uint rb = Q::row_bytes(K);
    device const char *wr[MV_NR];
    for (short r = 0; r < MV_NR; ++r) {
        // rows past m repeat the last one (their sums are dropped)
        wr[r] = w + (ulong(e) * m + min(row0 + r, m - 1)) * rb;
    }
    uint pairs[MV_ID_C];
    device const float *xr[MV_ID_C];
    for (short c = 0; c < MV_ID_C; ++c) {
        pairs[c] = groups[args.n_expert + 1 + first + min(uint(c), nc - 1)];
        xr[c] = x + ulong(args.x_per_pair ? pairs[c] : pairs[c] / args.k) * K;
    }
    float acc[MV_ID_C][MV_NR];
    for (short c = 0; c < MV_ID_C; ++c) {
        for (short r = 0; r < MV_NR; ++r) {
            acc[c][r] = 0.0f;
        }
    }
    for (uint k = uint(tiisg) * 16; k < K; k += 32 * 16) {
        float4 wv[MV_NR][4];
        for (short r = 0; r < MV_NR; ++r) {
            Q::load16(wr[r], k, K, wv[r]);
        }
        for (short c = 0; c < MV_ID_C; ++c) {
            if (uint(c) < nc) {
                float4 xv[4];
                load16_f32(xr[c], k, K, xv);
                for (short r = 0; r < MV_NR; ++r) {
                    acc[c][r] += dot(wv[r][0], xv[0]) + dot(wv[r][1], xv[1]) +
                                 dot(wv[r][2], xv[2]) + dot(wv[r][3], xv[3]);
                }
            }
        }
    }
    for (short c = 0; c < MV_ID_C; ++c) {
        for (short r = 0; r < MV_NR; ++r) {
            const float s = simd_sum(acc[c][r]);
            if (tiisg == 0 && uint(c) < nc && row0 + r < m) {
                y[ulong(pairs[c]) * m + row0 + r] = s;
            }
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
template [[host_name("kernel_mul_mv_mxfp4_f32")]] kernel mul_mv_t kernel_mul_mv<type_mxfp4>;

typedef decltype(kernel_mul_mv_fused<type_f32>) mul_mv_fused_t;

template [[host_name("kernel_mul_mv_fused_f32_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_f32>;
template [[host_name("kernel_mul_mv_fused_f16_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_f16>;
template [[host_name("kernel_mul_mv_fused_bf16_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_bf16>;
template [[host_name("kernel_mul_mv_fused_q4_0_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q4_0>;
template [[host_name("kernel_mul_mv_fused_q4_1_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q4_1>;
template [[host_name("kernel_mul_mv_fused_q5_0_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q5_0>;
template [[host_name("kernel_mul_mv_fused_q5_1_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q5_1>;
template [[host_name("kernel_mul_mv_fused_q8_0_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q8_0>;
template [[host_name("kernel_mul_mv_fused_q2_K_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q2_K>;
template [[host_name("kernel_mul_mv_fused_q3_K_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q3_K>;
template [[host_name("kernel_mul_mv_fused_q4_K_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q4_K>;
template [[host_name("kernel_mul_mv_fused_q5_K_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q5_K>;
template [[host_name("kernel_mul_mv_fused_q6_K_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_q6_K>;
template [[host_name("kernel_mul_mv_fused_mxfp4_f32")]] kernel mul_mv_fused_t
    kernel_mul_mv_fused<type_mxfp4>;

typedef decltype(kernel_mul_mv_id<type_f32>) mul_mv_id_t;
typedef decltype(kernel_mul_mv_id_grouped<type_f32>) mul_mv_id_grouped_t;

template [[host_name("kernel_mul_mv_id_f32_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_f32>;
template [[host_name("kernel_mul_mv_id_f16_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_f16>;
template [[host_name("kernel_mul_mv_id_bf16_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_bf16>;
template [[host_name("kernel_mul_mv_id_q4_0_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q4_0>;
template [[host_name("kernel_mul_mv_id_q4_1_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q4_1>;
template [[host_name("kernel_mul_mv_id_q5_0_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q5_0>;
template [[host_name("kernel_mul_mv_id_q5_1_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q5_1>;
template [[host_name("kernel_mul_mv_id_q8_0_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q8_0>;
template [[host_name("kernel_mul_mv_id_q2_K_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q2_K>;
template [[host_name("kernel_mul_mv_id_q3_K_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q3_K>;
template [[host_name("kernel_mul_mv_id_q4_K_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q4_K>;
template [[host_name("kernel_mul_mv_id_q5_K_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q5_K>;
template [[host_name("kernel_mul_mv_id_q6_K_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_q6_K>;
template [[host_name("kernel_mul_mv_id_mxfp4_f32")]] kernel mul_mv_id_t kernel_mul_mv_id<type_mxfp4>;
template [[host_name("kernel_mul_mv_id_grouped_f32_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_f32>;
template [[host_name("kernel_mul_mv_id_grouped_f16_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_f16>;
template [[host_name("kernel_mul_mv_id_grouped_bf16_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_bf16>;
template [[host_name("kernel_mul_mv_id_grouped_q4_0_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q4_0>;
template [[host_name("kernel_mul_mv_id_grouped_q4_1_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q4_1>;
template [[host_name("kernel_mul_mv_id_grouped_q5_0_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q5_0>;
template [[host_name("kernel_mul_mv_id_grouped_q5_1_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q5_1>;
template [[host_name("kernel_mul_mv_id_grouped_q8_0_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q8_0>;
template [[host_name("kernel_mul_mv_id_grouped_q2_K_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q2_K>;
template [[host_name("kernel_mul_mv_id_grouped_q3_K_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q3_K>;
template [[host_name("kernel_mul_mv_id_grouped_q4_K_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q4_K>;
template [[host_name("kernel_mul_mv_id_grouped_q5_K_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q5_K>;
template [[host_name("kernel_mul_mv_id_grouped_q6_K_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_q6_K>;
template [[host_name("kernel_mul_mv_id_grouped_mxfp4_f32")]] kernel mul_mv_id_grouped_t
    kernel_mul_mv_id_grouped<type_mxfp4>;
