// RWKV-6 / RWKV-7 ops (the "recurrent-model ops" of backends/base.py; their NumPy meaning is in
// backends/reference.py). Vector weights (norm weights, mixes, time_first, r_k) are f32.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "quants.h"

// wkv6 / wkv7: a thread keeps one row of its head's S x S state in registers, so S <= WKV_MAX,
// and a threadgroup of WKV_TG threads holds WKV_TG / S whole heads (S a power of two). The
// lowering in backends/metal/lowering.py uses the same constants.
#define WKV_TG 64
#define WKV_MAX 64
// mul_mat_blocks: SIMD groups per threadgroup, one output each
#define MB_NSG 2

// Sum of v over the threadgroup, for every thread. `partial` holds one value per SIMD group and
// is free again on return.
inline float tg_sum(float v, threadgroup float *partial, ushort sgitg, ushort tiisg, ushort nsg) {
    v = simd_sum(v);
    if (tiisg == 0) {
        partial[sgitg] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float t = 0.0f;
    for (short i = 0; i < nsg; ++i) {
        t += partial[i];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return t;
}

// -- layer_norm, l2_norm, wkv7_bonus: one threadgroup per (row, group); groups are contiguous ---

kernel void kernel_layer_norm_f32(
    constant kargs_layer_norm &args [[buffer(0)]], device const float *x [[buffer(1)]],
    device const float *w [[buffer(2)]], device const float *b [[buffer(3)]],
    device float *dst [[buffer(4)]], uint tgpig [[threadgroup_position_in_grid]],
    ushort tiitg [[thread_index_in_threadgroup]], ushort ntg [[threads_per_threadgroup]],
    ushort sgitg [[simdgroup_index_in_threadgroup]], ushort tiisg [[thread_index_in_simdgroup]],
    ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint g = args.group;
    const ulong base = ulong(tgpig) * g;
    const uint c0 = (tgpig % (args.n_cols / g)) * g;  // w and b hold a whole row's values
    device const float *xg = x + base;

    float s = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        s += xg[i];
    }
    const float mean = tg_sum(s, partial, sgitg, tiisg, nsg) / float(g);
    // the variance of the centred values (two passes): no cancellation when |mean| >> std
    float q = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        const float d = xg[i] - mean;
        q += d * d;
    }
    const float inv = 1.0f / sqrt(tg_sum(q, partial, sgitg, tiisg, nsg) / float(g) + args.eps);
    for (uint i = tiitg; i < g; i += ntg) {
        float v = (xg[i] - mean) * inv;
        if (args.has_weight) {
            v *= w[c0 + i];
        }
        if (args.has_bias) {
            v += b[c0 + i];
        }
        dst[base + i] = v;
    }
}

kernel void kernel_l2_norm_f32(constant kargs_rwkv &args [[buffer(0)]],
                               device const float *x [[buffer(1)]], device float *dst [[buffer(2)]],
                               uint tgpig [[threadgroup_position_in_grid]],
                               ushort tiitg [[thread_index_in_threadgroup]],
                               ushort ntg [[threads_per_threadgroup]],
                               ushort sgitg [[simdgroup_index_in_threadgroup]],
                               ushort tiisg [[thread_index_in_simdgroup]],
                               ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint g = args.group;
    const ulong base = ulong(tgpig) * g;
    float s = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        s += x[base + i] * x[base + i];
    }
    const float inv = 1.0f / max(sqrt(tg_sum(s, partial, sgitg, tiisg, nsg)), args.eps);
    for (uint i = tiitg; i < g; i += ntg) {
        dst[base + i] = x[base + i] * inv;
    }
}

// dst = v * sum_j r_j k_j r_k[j] over each head
kernel void kernel_wkv7_bonus_f32(
    constant kargs_rwkv &args [[buffer(0)]], device const float *r [[buffer(1)]],
    device const float *k [[buffer(2)]], device const float *v [[buffer(3)]],
    device const float *r_k [[buffer(4)]], device float *dst [[buffer(5)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]],
    ushort ntg [[threads_per_threadgroup]], ushort sgitg [[simdgroup_index_in_threadgroup]],
    ushort tiisg [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint g = args.group;
    const ulong base = ulong(tgpig) * g;
    device const float *rk = r_k + (tgpig % (args.n_cols / g)) * g;
    float s = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        s += r[base + i] * k[base + i] * rk[i];
    }
    const float d = tg_sum(s, partial, sgitg, tiisg, nsg);
    for (uint i = tiitg; i < g; i += ntg) {
        dst[base + i] = v[base + i] * d;
    }
}

// -- unary: one thread per value ------------------------------------------------------------
// exp's arguments are clamped where the result has already reached its f32 limit, so no result
// depends on exp overflowing to inf (which fast math, should a build enable it, does not keep).

enum { U_TANH, U_SIGMOID, U_SILU, U_RELU_SQR, U_EXP_NEG_EXP, U_DECAY7, U_SOFTPLUS };

inline float sigmoid_f(float x) {
    return 1.0f / (1.0f + exp(-clamp(x, -88.0f, 88.0f)));
}

template <int F>
kernel void kernel_unary(constant kargs_unary &args [[buffer(0)]],
                         device const float *x [[buffer(1)]], device float *dst [[buffer(2)]],
                         uint i [[thread_position_in_grid]]) {
    if (i >= args.n) {
        return;
    }
    const float v = x[i];
    float r;
    if (F == U_TANH) {
        r = precise::tanh(clamp(v, -15.0f, 15.0f));  // tanh(15) == 1 in f32
    } else if (F == U_SIGMOID) {
        r = sigmoid_f(v);
    } else if (F == U_SILU) {
        r = v * sigmoid_f(v);
    } else if (F == U_RELU_SQR) {
        const float p = max(v, 0.0f);
        r = p * p;
    } else if (F == U_EXP_NEG_EXP) {
        r = exp(-exp(min(v, 88.0f)));
    } else if (F == U_SOFTPLUS) {
        r = v > 20.0f ? v : log(1.0f + exp(min(v, 20.0f)));  // ggml's op_softplus
    } else {
        r = exp(-0.606531f * sigmoid_f(v));  // exp(-1/2) as rwkv.cpp and llama.cpp write it
    }
    dst[i] = r;
}

typedef decltype(kernel_unary<U_TANH>) unary_t;

template [[host_name("kernel_unary_tanh_f32")]] kernel unary_t kernel_unary<U_TANH>;
template [[host_name("kernel_unary_sigmoid_f32")]] kernel unary_t kernel_unary<U_SIGMOID>;
template [[host_name("kernel_unary_silu_f32")]] kernel unary_t kernel_unary<U_SILU>;
template [[host_name("kernel_unary_relu_sqr_f32")]] kernel unary_t kernel_unary<U_RELU_SQR>;
template [[host_name("kernel_unary_exp_neg_exp_f32")]] kernel unary_t kernel_unary<U_EXP_NEG_EXP>;
template [[host_name("kernel_unary_decay7_f32")]] kernel unary_t kernel_unary<U_DECAY7>;
template [[host_name("kernel_unary_softplus_f32")]] kernel unary_t kernel_unary<U_SOFTPLUS>;

// -- lerp: a + (b - a) * (mu + mu_v); an absent mu or mu_v is bound to a and not read ---------

kernel void kernel_lerp_f32(constant kargs_lerp &args [[buffer(0)]],
                            device const float *a [[buffer(1)]],
                            device const float *b [[buffer(2)]],
                            device const float *mu [[buffer(3)]],
                            device const float *mu_v [[buffer(4)]], device float *dst [[buffer(5)]],
                            uint i [[thread_position_in_grid]]) {
    const uint d = args.n_cols;
    if (i >= args.n_rows * d) {
        return;
    }
    const uint row = i / d;
    const uint c = i % d;
    float m = args.has_mu ? mu[args.mu_off + c] : 0.0f;
    if (args.has_mu_v) {
        m += mu_v[ulong(row) * args.mu_v_cols + args.mu_col + c];
    }
    dst[i] = a[i] + (b[i] - a[i]) * m;
}

// -- token_shift: one thread per column walks the rows in order (the state is that column's last
// value, read before and written after, by the same thread) ----------------------------------
// The state buffers hold the slots (sequences) one after another. A run of one sequence
// (ROWS false) uses slot step.slot; in rows mode (backends/base.py's Graph.rows: a decode step of
// several sequences, kernel_*_rows_f32) row t is one token of the sequence in slot rows[t].x.
// Both variants bind both buffers (rows mode: the step is unused; a run of one sequence binds the
// step in place of rows, unread).

template <bool ROWS>
kernel void kernel_token_shift(constant kargs_rwkv &args [[buffer(0)]],
                               device const float *x [[buffer(1)]],
                               device float *state [[buffer(2)]], device float *dst [[buffer(3)]],
                               constant kargs_step &step [[buffer(4)]],
                               device const uint2 *rows [[buffer(5)]],
                               uint c [[thread_position_in_grid]]) {
    const uint d = args.n_cols;
    if (c >= d) {
        return;
    }
    if (ROWS) {  // one step of its own slot's sequence per row
        for (uint t = 0; t < args.n_rows; ++t) {
            device float *st = state + ulong(rows[t].x) * d + c;
            dst[ulong(t) * d + c] = *st;
            *st = x[ulong(t) * d + c];
        }
        return;
    }
    device float *st = state + ulong(step.slot) * d + c;
    float prev = *st;
    for (uint t = 0; t < args.n_rows; ++t) {
        const float cur = x[ulong(t) * d + c];
        dst[ulong(t) * d + c] = prev;
        prev = cur;
    }
    *st = prev;
}

typedef decltype(kernel_token_shift<false>) token_shift_t;
template [[host_name("kernel_token_shift_f32")]] kernel token_shift_t kernel_token_shift<false>;
template [[host_name("kernel_token_shift_rows_f32")]] kernel token_shift_t kernel_token_shift<true>;

// -- wkv6 / wkv7: the recurrence over all rows in one dispatch. Thread c (a channel: head c / S,
// index c % S) keeps one row of its head's state in registers; each row's inputs for the
// threadgroup's heads pass through threadgroup memory. Grid: ceil(n_cols / WKV_TG). The slot's
// state, or each row's own in rows mode, as token_shift. -------------------------------------

// thread (h, j) keeps s[h, :, j] (i indexes keys, j values)
template <bool ROWS>
kernel void kernel_wkv6(
    constant kargs_rwkv &args [[buffer(0)]], device const float *r [[buffer(1)]],
    device const float *k [[buffer(2)]], device const float *v [[buffer(3)]],
    device const float *w [[buffer(4)]], device const float *u [[buffer(5)]],
    device float *state [[buffer(6)]], device float *dst [[buffer(7)]],
    constant kargs_step &step [[buffer(8)]], device const uint2 *rows [[buffer(9)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]]) {
    threadgroup float sh_r[WKV_TG], sh_k[WKV_TG], sh_w[WKV_TG], sh_u[WKV_TG];
    const uint S = args.group;
    const uint C = args.n_cols;
    const uint c = tgpig * WKV_TG + tiitg;
    const bool live = c < C;
    const uint j = tiitg % S;
    const uint hb = tiitg - j;                        // the head's first slot in threadgroup memory
    const ulong own = ulong(c - j) * S + j;  // s[h, i, j] = sp[i * S], sp = the slot's state + own
    float s[WKV_MAX];
    sh_u[tiitg] = live ? u[c] : 0.0f;
    for (uint t = 0; t < args.n_rows; ++t) {
        const ulong e = ulong(t) * C + c;
        // a run of one sequence keeps the state in registers from its first row to its last;
        // in rows mode each row loads and stores its own slot's
        device float *sp = state + ulong(ROWS ? rows[t].x : step.slot) * C * S + own;
        if (live && (ROWS || t == 0)) {
            for (uint i = 0; i < S; ++i) {
                s[i] = sp[i * S];
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        sh_r[tiitg] = live ? r[e] : 0.0f;
        sh_k[tiitg] = live ? k[e] : 0.0f;
        sh_w[tiitg] = live ? w[e] : 0.0f;
        const float vj = live ? v[e] : 0.0f;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float o = 0.0f;
        for (uint i = 0; i < S; ++i) {
            const float kv = sh_k[hb + i] * vj;
            o += sh_r[hb + i] * (sh_u[hb + i] * kv + s[i]);
            s[i] = s[i] * sh_w[hb + i] + kv;
        }
        if (live) {
            dst[e] = o;
        }
        if (live && (ROWS || t + 1 == args.n_rows)) {
            for (uint i = 0; i < S; ++i) {
                sp[i * S] = s[i];
            }
        }
    }
}

typedef decltype(kernel_wkv6<false>) wkv6_t;
template [[host_name("kernel_wkv6_f32")]] kernel wkv6_t kernel_wkv6<false>;
template [[host_name("kernel_wkv6_rows_f32")]] kernel wkv6_t kernel_wkv6<true>;

// thread (h, i) keeps s[h, i, :] (i indexes values, j keys)
template <bool ROWS>
kernel void kernel_wkv7(
    constant kargs_rwkv &args [[buffer(0)]], device const float *r [[buffer(1)]],
    device const float *w [[buffer(2)]], device const float *k [[buffer(3)]],
    device const float *v [[buffer(4)]], device const float *a [[buffer(5)]],
    device const float *b [[buffer(6)]], device float *state [[buffer(7)]],
    device float *dst [[buffer(8)]], constant kargs_step &step [[buffer(9)]],
    device const uint2 *rows [[buffer(10)]], uint tgpig [[threadgroup_position_in_grid]],
    ushort tiitg [[thread_index_in_threadgroup]]) {
    threadgroup float sh_r[WKV_TG], sh_w[WKV_TG], sh_k[WKV_TG], sh_a[WKV_TG], sh_b[WKV_TG];
    const uint S = args.group;
    const uint C = args.n_cols;
    const uint c = tgpig * WKV_TG + tiitg;
    const bool live = c < C;
    const uint hb = tiitg - tiitg % S;
    // s[h, i, j] = state[(h * S + i) * S + j] of the slot's state
    float s[WKV_MAX];
    for (uint t = 0; t < args.n_rows; ++t) {
        const ulong e = ulong(t) * C + c;
        // as wkv6: one load and store per run, or per row in rows mode
        device float *sp = state + (ulong(ROWS ? rows[t].x : step.slot) * C + c) * S;
        if (live && (ROWS || t == 0)) {
            for (uint j = 0; j < S; ++j) {
                s[j] = sp[j];
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        sh_r[tiitg] = live ? r[e] : 0.0f;
        sh_w[tiitg] = live ? w[e] : 0.0f;
        sh_k[tiitg] = live ? k[e] : 0.0f;
        sh_a[tiitg] = live ? a[e] : 0.0f;
        sh_b[tiitg] = live ? b[e] : 0.0f;
        const float vi = live ? v[e] : 0.0f;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float sa = 0.0f;  // with the state before this row
        for (uint j = 0; j < S; ++j) {
            sa += sh_a[hb + j] * s[j];
        }
        float o = 0.0f;
        for (uint j = 0; j < S; ++j) {
            s[j] = s[j] * sh_w[hb + j] + vi * sh_k[hb + j] + sa * sh_b[hb + j];
            o += s[j] * sh_r[hb + j];
        }
        if (live) {
            dst[e] = o;
        }
        if (live && (ROWS || t + 1 == args.n_rows)) {
            for (uint j = 0; j < S; ++j) {
                sp[j] = s[j];
            }
        }
    }
}

typedef decltype(kernel_wkv7<false>) wkv7_t;
template [[host_name("kernel_wkv7_f32")]] kernel wkv7_t kernel_wkv7<false>;
template [[host_name("kernel_wkv7_rows_f32")]] kernel wkv7_t kernel_wkv7<true>;

// -- mul_mat_blocks: dst[t, row] = dot(x[t, b*k : (b+1)*k], W[row, :]) with b = row / m, W
// (n_blocks * m rows of k values) in any weight type. One SIMD group per output; lanes take the
// 16-value chunks of the row in turn. Grid: (ceil(n_blocks * m / MB_NSG), M). ----------------

template <typename Q>
kernel void kernel_mmb(constant kargs_mul_mat_blocks &args [[buffer(0)]],
                       device const char *w [[buffer(1)]], device const float *x [[buffer(2)]],
                       device float *dst [[buffer(3)]],
                       uint2 tgpig [[threadgroup_position_in_grid]],
                       ushort sgitg [[simdgroup_index_in_threadgroup]],
                       ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint K = args.k;
    const uint N = args.n_blocks * args.m;
    const uint t = tgpig.y;
    // a row past N repeats the last one (its sum is dropped): no read past the buffer
    const uint row = tgpig.x * MB_NSG + sgitg;
    const uint rr = min(row, N - 1);
    device const char *wr = w + ulong(rr) * Q::row_bytes(K);
    device const float *xr = x + (ulong(t) * args.n_blocks + rr / args.m) * K;
    float acc = 0.0f;
    for (uint kk = uint(tiisg) * 16; kk < K; kk += 32 * 16) {
        float4 xv[4], wv[4];
        load16_f32(xr, kk, K, xv);
        Q::load16(wr, kk, K, wv);
        acc += dot(wv[0], xv[0]) + dot(wv[1], xv[1]) + dot(wv[2], xv[2]) + dot(wv[3], xv[3]);
    }
    acc = simd_sum(acc);
    if (tiisg == 0 && row < N) {
        dst[ulong(t) * N + row] = acc;
    }
}

typedef decltype(kernel_mmb<type_f32>) mmb_t;

template [[host_name("kernel_mul_mat_blocks_f32_f32")]] kernel mmb_t kernel_mmb<type_f32>;
template [[host_name("kernel_mul_mat_blocks_f16_f32")]] kernel mmb_t kernel_mmb<type_f16>;
template [[host_name("kernel_mul_mat_blocks_bf16_f32")]] kernel mmb_t kernel_mmb<type_bf16>;
template [[host_name("kernel_mul_mat_blocks_q4_0_f32")]] kernel mmb_t kernel_mmb<type_q4_0>;
template [[host_name("kernel_mul_mat_blocks_q4_1_f32")]] kernel mmb_t kernel_mmb<type_q4_1>;
template [[host_name("kernel_mul_mat_blocks_q5_0_f32")]] kernel mmb_t kernel_mmb<type_q5_0>;
template [[host_name("kernel_mul_mat_blocks_q5_1_f32")]] kernel mmb_t kernel_mmb<type_q5_1>;
template [[host_name("kernel_mul_mat_blocks_q8_0_f32")]] kernel mmb_t kernel_mmb<type_q8_0>;
template [[host_name("kernel_mul_mat_blocks_q2_K_f32")]] kernel mmb_t kernel_mmb<type_q2_K>;
template [[host_name("kernel_mul_mat_blocks_q3_K_f32")]] kernel mmb_t kernel_mmb<type_q3_K>;
template [[host_name("kernel_mul_mat_blocks_q4_K_f32")]] kernel mmb_t kernel_mmb<type_q4_K>;
template [[host_name("kernel_mul_mat_blocks_q5_K_f32")]] kernel mmb_t kernel_mmb<type_q5_K>;
template [[host_name("kernel_mul_mat_blocks_q6_K_f32")]] kernel mmb_t kernel_mmb<type_q6_K>;
template [[host_name("kernel_mul_mat_blocks_mxfp4_f32")]] kernel mmb_t kernel_mmb<type_mxfp4>;
