// What metal/attention.metal (one sequence's rows at consecutive positions) and metal/rows.metal
// (each row its own sequence) share: the visible range of a query position and one split of a
// decode query row's attention over its sequence's cache.
#pragma once
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

#define ATTN_MAX_D 256  // head_dim limit: thread arrays and threadgroup tiles are sized for it

// "no score yet": finite so that exp(m_old - m_new) stays 0 or 1 without inf arithmetic
#define NO_SCORE (-FLT_MAX)

inline uint first_visible(uint p, uint window) {
    return (window && p + 1 > window) ? p + 1 - window : 0;
}

// Split `split` of `ns` of query head h at position p over the cache rows of its sequence (kc
// and vc start at the sequence's first row; position j lives in row j % ring): an equal share
// of the visible positions lo..p, written to out as the partial softmax state
// [m, l, o[head_dim]] (running max, sum of exp, unnormalised output) that kernel_attn_reduce_f32
// joins. One SIMD group: each lane scores one position of a block of 32, then the lanes split
// head_dim to accumulate the values. sq (ATTN_MAX_D / 4) and sp (32) are the kernel's
// threadgroup arrays.
template <typename T, typename T4>
inline void attn_split(constant kargs_attention &args, device const float *qh,
                       device const T *kc, device const T *vc, device float *out, uint p,
                       uint split, uint ns, uint h, ushort tiisg, threadgroup float4 *sq,
                       threadgroup float *sp) {
    const uint D = args.head_dim;
    const uint D4 = D / 4;
    const uint kv_dim = args.n_kv_head * D;
    const uint kv_off = h / (args.n_head / args.n_kv_head) * D;
    const uint lo = first_visible(p, args.window);
    const uint per = (p + 1 - lo + ns - 1) / ns;
    const uint start = lo + split * per;
    const uint end = min(start + per, p + 1);  // start >= end: an empty split

    device const float4 *q4 = (device const float4 *)qh;
    for (uint c = tiisg; c < D4; c += 32) {
        sq[c] = q4[c] * args.scale;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);

    float m = NO_SCORE;
    float l = 0.0f;
    float o[ATTN_MAX_D / 32];
    for (short c = 0; c < ATTN_MAX_D / 32; ++c) {
        o[c] = 0.0f;
    }
    for (uint j0 = start; j0 < end; j0 += 32) {
        const uint j = j0 + tiisg;
        const bool valid = j < end;
        float s = NO_SCORE;
        if (valid) {
            device const T4 *k4 = (device const T4 *)(kc + ulong(j % args.ring) * kv_dim + kv_off);
            float acc = 0.0f;
            for (uint c = 0; c < D4; ++c) {
                acc += dot(sq[c], float4(k4[c]));
            }
            if (args.softcap > 0.0f) {
                acc = args.softcap * precise::tanh(acc / args.softcap);
            }
            s = acc;
        }
        const float m_new = max(m, simd_max(s));
        const float alpha = exp(m - m_new);
        const float pj = valid ? exp(s - m_new) : 0.0f;
        l = l * alpha + simd_sum(pj);
        m = m_new;
        sp[tiisg] = pj;
        simdgroup_barrier(mem_flags::mem_threadgroup);

        for (short c = 0; c < ATTN_MAX_D / 32; ++c) {
            o[c] *= alpha;
        }
        const uint nj = min(32u, end - j0);
        for (uint jj = 0; jj < nj; ++jj) {
            device const T *vr = vc + ulong((j0 + jj) % args.ring) * kv_dim + kv_off;
            const float w = sp[jj];
            for (short c = 0; c < ATTN_MAX_D / 32; ++c) {
                const uint d = tiisg + 32 * c;
                if (d < D) {
                    o[c] += w * float(vr[d]);
                }
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);  // sp is rewritten next block
    }

    if (tiisg == 0) {
        out[0] = m;
        out[1] = l;
    }
    for (short c = 0; c < ATTN_MAX_D / 32; ++c) {
        const uint d = tiisg + 32 * c;
        if (d < D) {
            out[2 + d] = o[c];
        }
    }
}
