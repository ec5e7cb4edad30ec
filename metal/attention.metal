// KV cache writes and causal GQA attention over the cache.
//
// The cache of a layer holds the slots (sequences) one after another, `ring` rows each of
// kv_dim = n_kv_head * head_dim values of type T (half or float: the kernel name's suffix); the
// run's sequence is slot step.slot, whose position p lives in row step.slot * ring + p % ring
// (ring == n_ctx unless the layer has a sliding window). Query row i of a run is at position
// p = step.pos + i and attends to positions lo..p, lo = max(0, p - window + 1) with a window,
// else 0; query head h reads KV head h / (n_head / n_kv_head).
#include <metal_simdgroup_matrix>
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "attn.h"

#define AP_Q 8          // prefill: query rows per SIMD group
#define AP_KV 16        // prefill: cache positions per step

// Loops over the output matrices run to the compile-time bound with a uniform guard, so that
// mo[] is only ever indexed by constants: arrays of simdgroup matrices must stay in registers.
#define FOR_UNROLL _Pragma("clang loop unroll(full)") for

// --------------------------------------------------------------------------------------------
// kv_store: rows of k and v (n_rows x kv_dim, f32) into the cache at positions pos..pos+n-1.
// The grid is (ceil(kv_dim / threads), n_rows); ntg is a vector like tgpig (MSL spec 5.2.3.6).
template <typename T>
kernel void kernel_kv_store(constant kargs_kv_store &args [[buffer(0)]],
                            constant kargs_step &step [[buffer(1)]],
                            device const float *k [[buffer(2)]],
                            device const float *v [[buffer(3)]], device T *kc [[buffer(4)]],
                            device T *vc [[buffer(5)]],
                            uint2 tgpig [[threadgroup_position_in_grid]],
                            ushort tiitg [[thread_index_in_threadgroup]],
                            ushort2 ntg [[threads_per_threadgroup]]) {
    const uint row = tgpig.y;
    const uint d = tgpig.x * ntg.x + tiitg;
    if (row >= args.n_rows || d >= args.kv_dim) {
        return;
    }
    const ulong dst =
        (ulong(step.slot) * args.ring + (step.pos + row) % args.ring) * args.kv_dim + d;
    const ulong src = ulong(row) * args.kv_dim + d;
    kc[dst] = T(k[src]);
    vc[dst] = T(v[src]);
}

// the parameter types depend on T: one function type per instantiation
typedef decltype(kernel_kv_store<half>) kv_store_f16_t;
typedef decltype(kernel_kv_store<float>) kv_store_f32_t;
template [[host_name("kernel_kv_store_f16")]] kernel kv_store_f16_t kernel_kv_store<half>;
template [[host_name("kernel_kv_store_f32")]] kernel kv_store_f32_t kernel_kv_store<float>;

// --------------------------------------------------------------------------------------------
// Decode attention, split over the cache length. Grid (n_splits, n_head, n_rows), one SIMD group
// per threadgroup: split s of a query row takes an equal share of its visible positions and
// writes its partial softmax state [m, l, o[head_dim]] (running max, sum of exp, unnormalised
// output) to part; kernel_attn_reduce_f32 joins the splits (attn.h's attn_split, which
// metal/rows.metal's batched decode shares).
template <typename T, typename T4>
kernel void kernel_attn_decode(constant kargs_attention &args [[buffer(0)]],
                               constant kargs_step &step [[buffer(1)]],
                               device const float *q [[buffer(2)]],
                               device const T *kc [[buffer(3)]], device const T *vc [[buffer(4)]],
                               device float *part [[buffer(5)]],
                               uint3 tgpig [[threadgroup_position_in_grid]],
                               uint3 tgpg [[threadgroups_per_grid]],
                               ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup float4 sq[ATTN_MAX_D / 4];  // the query head, pre-scaled
    threadgroup float sp[32];               // probabilities of the current block

    const uint split = tgpig.x;
    const uint h = tgpig.y;
    const uint row = tgpig.z;
    const uint ns = tgpg.x;
    const uint D = args.head_dim;
    const ulong slot0 = ulong(step.slot) * args.ring * args.n_kv_head * D;  // the slot's first row
    attn_split<T, T4>(args, q + (ulong(row) * args.n_head + h) * D, kc + slot0, vc + slot0,
                      part + ((ulong(row) * args.n_head + h) * ns + split) * (D + 2),
                      step.pos + row, split, ns, h, tiisg, sq, sp);
}

typedef decltype(kernel_attn_decode<half, half4>) attn_decode_f16_t;
typedef decltype(kernel_attn_decode<float, float4>) attn_decode_f32_t;
// clang-format off
template [[host_name("kernel_attn_decode_f16")]] kernel attn_decode_f16_t kernel_attn_decode<half, half4>;
template [[host_name("kernel_attn_decode_f32")]] kernel attn_decode_f32_t kernel_attn_decode<float, float4>;
// clang-format on

// Joins the splits of kernel_attn_decode: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
// Grid (n_head, n_rows), one SIMD group each. Empty splits carry m = NO_SCORE, l = 0, o = 0 and
// weigh nothing. With has_sinks the head's sink logit joins M and the denominator (gpt-oss).
kernel void kernel_attn_reduce_f32(constant kargs_attn_reduce &args [[buffer(0)]],
                                   device const float *part [[buffer(1)]],
                                   device float *dst [[buffer(2)]],
                                   device const float *sinks [[buffer(3)]],
                                   uint2 tgpig [[threadgroup_position_in_grid]],
                                   ushort tiisg [[thread_index_in_simdgroup]]) {
    const uint h = tgpig.x;
    const uint row = tgpig.y;
    const uint D = args.head_dim;
    const uint ns = args.n_splits;
    const uint stride = D + 2;
    device const float *pr = part + (ulong(row) * args.n_head + h) * ns * stride;
    float M = NO_SCORE;
    for (uint s = 0; s < ns; ++s) {
        M = max(M, pr[s * stride]);
    }
    float L = 0.0f;
    if (args.has_sinks) {
        M = max(M, sinks[h]);
        L = exp(sinks[h] - M);
    }
    for (uint s = 0; s < ns; ++s) {
        L += exp(pr[s * stride] - M) * pr[s * stride + 1];
    }
    device float *out = dst + (ulong(row) * args.n_head + h) * D;
    for (uint d = tiisg; d < D; d += 32) {
        float acc = 0.0f;
        for (uint s = 0; s < ns; ++s) {
            acc += exp(pr[s * stride] - M) * pr[s * stride + 2 + d];
        }
        out[d] = acc / L;
    }
}

// --------------------------------------------------------------------------------------------
// Prefill attention, tiled (flash-attention style). Grid (ceil(n_rows / AP_Q), n_head), one SIMD
// group per threadgroup holding AP_Q query rows. Per block of AP_KV cache positions: S = Q K^T
// with 8x8 simdgroup matrices, an online-softmax update per row (4 lanes per row), then
// O = diag(alpha) O + P V. K and V tiles share one threadgroup buffer, converted to float.
template <typename T>
kernel void kernel_attn_prefill(constant kargs_attention &args [[buffer(0)]],
                                constant kargs_step &step [[buffer(1)]],
                                device const float *q [[buffer(2)]],
                                device const T *kc [[buffer(3)]], device const T *vc [[buffer(4)]],
                                device float *dst [[buffer(5)]],
                                device const float *sinks [[buffer(6)]],
                                uint2 tgpig [[threadgroup_position_in_grid]],
                                ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup float sq[AP_Q * ATTN_MAX_D];    // Q tile, pre-scaled: sq[r][d]
    threadgroup float skv[AP_KV * ATTN_MAX_D];  // K tile, then V tile: skv[j][d]; at the end O
    threadgroup float ss[AP_Q * AP_KV];         // scores, then probabilities: ss[r][j]
    threadgroup float sdiag[8 * 8];             // diag(alpha) of the current block
    threadgroup float sm[AP_Q], sl[AP_Q];       // running max and sum per row

    const uint D = args.head_dim;
    const uint nd = D / 8;
    const uint h = tgpig.y;
    const uint r0 = tgpig.x * AP_Q;
    const uint nr = min(uint(AP_Q), args.n_rows - r0);  // query rows of this tile
    const uint kv_dim = args.n_kv_head * D;
    const uint kv_off = h / (args.n_head / args.n_kv_head) * D;
    const uint p_last = step.pos + r0 + nr - 1;
    const uint lo = first_visible(step.pos + r0, args.window);
    const ulong row0 = ulong(step.slot) * args.ring;  // the slot's first cache row

    for (uint e = tiisg; e < AP_Q * D; e += 32) {
        const uint r = e / D;
        sq[e] = r < nr ? q[(ulong(r0 + r) * args.n_head + h) * D + e % D] * args.scale : 0.0f;
    }
    for (short e = tiisg; e < 64; e += 32) {
        sdiag[e] = 0.0f;
    }
    if (tiisg < AP_Q) {
        sm[tiisg] = NO_SCORE;
        sl[tiisg] = 0.0f;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);

    simdgroup_float8x8 mo[ATTN_MAX_D / 8];
    FOR_UNROLL(short c = 0; c < ATTN_MAX_D / 8; ++c) {
        mo[c] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }

    // this lane's part of the softmax: row lr, columns lc..lc+3 of the AP_Q x AP_KV block
    const short lr = tiisg / 4;
    const short lc = 4 * (tiisg % 4);
    const uint p_row = step.pos + r0 + lr;
    const uint lo_row = first_visible(p_row, args.window);

    for (uint j0 = lo; j0 <= p_last; j0 += AP_KV) {
        for (uint e = tiisg; e < AP_KV * D; e += 32) {
            const uint j = j0 + e / D;
            skv[e] = j <= p_last ? float(kc[(row0 + j % args.ring) * kv_dim + kv_off + e % D])
                                  : 0.0f;
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        simdgroup_float8x8 s0 = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        simdgroup_float8x8 s1 = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        for (uint c = 0; c < nd; ++c) {
            simdgroup_float8x8 a;
            simdgroup_float8x8 b0;
            simdgroup_float8x8 b1;
            simdgroup_load(a, sq + 8 * c, D);
            // transposed: b[r][j] = K[j0 + j][8c + r]
            simdgroup_load(b0, skv + 8 * c, D, ulong2(0, 0), true);
            simdgroup_load(b1, skv + 8 * D + 8 * c, D, ulong2(0, 0), true);
            simdgroup_multiply_accumulate(s0, a, b0, s0);
            simdgroup_multiply_accumulate(s1, a, b1, s1);
        }
        simdgroup_store(s0, ss, AP_KV);
        simdgroup_store(s1, ss + 8, AP_KV);
        simdgroup_barrier(mem_flags::mem_threadgroup);

        float sv[4];
        bool ok[4];
        float mx = NO_SCORE;
        for (short i = 0; i < 4; ++i) {
            const uint j = j0 + lc + i;
            ok[i] = uint(lr) < nr && j <= p_row && j >= lo_row;
            float s = ss[lr * AP_KV + lc + i];
            if (args.softcap > 0.0f) {
                s = args.softcap * precise::tanh(s / args.softcap);
            }
            sv[i] = s;
            if (ok[i]) {
                mx = max(mx, s);
            }
        }
        // the 4 lanes of a row are tiisg ^ 1, ^ 2 of each other
        mx = max(mx, simd_shuffle_xor(mx, 1));
        mx = max(mx, simd_shuffle_xor(mx, 2));
        const float m_old = sm[lr];
        const float m_new = max(m_old, mx);
        const float alpha = exp(m_old - m_new);
        float psum = 0.0f;
        for (short i = 0; i < 4; ++i) {
            sv[i] = ok[i] ? exp(sv[i] - m_new) : 0.0f;
            psum += sv[i];
        }
        psum += simd_shuffle_xor(psum, 1);
        psum += simd_shuffle_xor(psum, 2);
        simdgroup_barrier(mem_flags::mem_threadgroup);  // every lane has read sm[lr]
        for (short i = 0; i < 4; ++i) {
            ss[lr * AP_KV + lc + i] = sv[i];
        }
        if (tiisg % 4 == 0) {
            sm[lr] = m_new;
            sl[lr] = sl[lr] * alpha + psum;
            sdiag[lr * 9] = alpha;
        }
        for (uint e = tiisg; e < AP_KV * D; e += 32) {
            const uint j = j0 + e / D;
            skv[e] = j <= p_last ? float(vc[(row0 + j % args.ring) * kv_dim + kv_off + e % D])
                                  : 0.0f;
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        simdgroup_float8x8 md;
        simdgroup_float8x8 p0;
        simdgroup_float8x8 p1;
        simdgroup_load(md, sdiag, 8);
        simdgroup_load(p0, ss, AP_KV);
        simdgroup_load(p1, ss + 8, AP_KV);
        FOR_UNROLL(short c = 0; c < ATTN_MAX_D / 8; ++c) {
            if (uint(c) < nd) {
                simdgroup_float8x8 v0;
                simdgroup_float8x8 v1;
                simdgroup_load(v0, skv + 8 * c, D);
                simdgroup_load(v1, skv + 8 * D + 8 * c, D);
                simdgroup_multiply(mo[c], md, mo[c]);
                simdgroup_multiply_accumulate(mo[c], p0, v0, mo[c]);
                simdgroup_multiply_accumulate(mo[c], p1, v1, mo[c]);
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);  // skv, ss, sdiag are rewritten next block
    }

    FOR_UNROLL(short c = 0; c < ATTN_MAX_D / 8; ++c) {
        if (uint(c) < nd) {
            simdgroup_store(mo[c], skv + 8 * c, D);
        }
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = tiisg; e < nr * D; e += 32) {
        const uint r = e / D;
        float inv = 1.0f / sl[r];
        if (args.has_sinks) {  // the sink joins the sum at the larger of it and the row's max
            const float mx = max(sm[r], sinks[h]);
            const float f = exp(sm[r] - mx);
            inv = f / (sl[r] * f + exp(sinks[h] - mx));
        }
        dst[(ulong(r0 + r) * args.n_head + h) * D + e % D] = skv[e] * inv;
    }
}

typedef decltype(kernel_attn_prefill<half>) attn_prefill_f16_t;
typedef decltype(kernel_attn_prefill<float>) attn_prefill_f32_t;
// clang-format off
template [[host_name("kernel_attn_prefill_f16")]] kernel attn_prefill_f16_t kernel_attn_prefill<half>;
template [[host_name("kernel_attn_prefill_f32")]] kernel attn_prefill_f32_t kernel_attn_prefill<float>;
// clang-format on
