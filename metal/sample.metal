// Sampling on the device, the WebGPU backend's shaders/sample.wgsl in MSL (its head says how):
// kernel_sample_part applies the repetition penalty to each chunk of the row and keeps its top_k
// largest logits, kernel_sample_final keeps the top_k of those, applies fastllm.sampling's chain
// (top_p, min_p, temperature), draws with the step's uniform number and ends the step as
// kernel_argmax_greedy does (the token also goes into the penalty's ids). The k-th largest
// value is found two bits at a time on order-preserving keys; the counts of a round are joined
// by simd_sum and per-SIMD-group partials (two sets, so one barrier a round).
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

#define SAMPLE_TG 256  // threads per threadgroup: the lowering dispatches exactly this many
#define SAMPLE_NSG (SAMPLE_TG / 32)
#define SAMPLE_KMAX 64  // the largest top_k (fastllm.sampling.DEVICE_TOP_K)
#define SAMPLE_NK 4096  // values a threadgroup holds: chunk <= 4096, parts * KMAX <= 4096
#define SAMPLE_LMAX 64  // the longest penalty window (fastllm.sampling.DEVICE_LAST_N)
constant uint NONE = 0xFFFFFFFFu;  // an empty candidate's column

// a > b as floats <=> order_key(a) > order_key(b) (finite values and -inf; key 0 is no value)
inline uint order_key(float v) {
    const uint b = as_type<uint>(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

inline float key_value(uint k) {
    return as_type<float>((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The k-th largest of sk[0..n) (0 when n < k), for every thread; starts with a barrier, so the
// caller's stores of sk need none of their own. Two bits a round (as sample.wgsl): the keys at
// or above prefix | d << s for d = 1, 2, 3 counted together, the largest d whose count reaches
// k kept; partial holds 2 sets x SAMPLE_NSG x 3 counts.
inline uint kth_key(threadgroup const uint *sk, uint n, uint k, threadgroup uint *partial,
                    ushort tiitg, ushort sgitg, ushort tiisg) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint prefix = 0;
    for (uint r = 0; r < 16; ++r) {
        const uint s = 30 - 2 * r;
        const uint c1 = prefix | (1u << s);
        const uint c2 = prefix | (2u << s);
        const uint c3 = prefix | (3u << s);
        uint n1 = 0, n2 = 0, n3 = 0;
        for (uint i = tiitg; i < n; i += SAMPLE_TG) {
            const uint key = sk[i];
            n1 += key >= c1 ? 1u : 0u;
            n2 += key >= c2 ? 1u : 0u;
            n3 += key >= c3 ? 1u : 0u;
        }
        n1 = simd_sum(n1);
        n2 = simd_sum(n2);
        n3 = simd_sum(n3);
        threadgroup uint *p = partial + (r & 1) * 3 * SAMPLE_NSG;
        if (tiisg == 0) {
            p[3 * sgitg] = n1;
            p[3 * sgitg + 1] = n2;
            p[3 * sgitg + 2] = n3;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        uint t1 = 0, t2 = 0, t3 = 0;
        for (short g = 0; g < SAMPLE_NSG; ++g) {
            t1 += p[3 * g];
            t2 += p[3 * g + 1];
            t3 += p[3 * g + 2];
        }
        prefix = t3 >= k ? c3 : t2 >= k ? c2 : t1 >= k ? c1 : prefix;
    }
    return prefix;
}

// Grid: ceil(n_cols / chunk) threadgroups; cands: SAMPLE_KMAX (key, column) slots each. Step i
// (position pos0 + i) penalizes the ids recent[i .. i + last_n).
kernel void kernel_sample_part(constant kargs_sample &args [[buffer(0)]],
                               device const float *x [[buffer(1)]],
                               device uint2 *cands [[buffer(2)]],
                               device const kargs_step *step [[buffer(3)]],
                               device const uint *recent [[buffer(4)]],
                               uint tgpig [[threadgroup_position_in_grid]],
                               ushort tiitg [[thread_index_in_threadgroup]],
                               ushort sgitg [[simdgroup_index_in_threadgroup]],
                               ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup uint sk[SAMPLE_NK];
    threadgroup uint partial[2 * 3 * SAMPLE_NSG];
    threadgroup atomic_uint nkept;
    threadgroup uint window[SAMPLE_LMAX];
    const uint c0 = tgpig * args.chunk;
    const uint n = min(args.chunk, args.n_cols - min(c0, args.n_cols));
    const uint i0 = step->pos - args.pos0;
    for (uint j = tiitg; j < args.last_n; j += SAMPLE_TG) {
        window[j] = recent[i0 + j];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tiitg; i < n; i += SAMPLE_TG) {
        float v = x[c0 + i];
        for (uint j = 0; j < args.last_n; ++j) {  // as sampling.apply_repeat_penalty
            if (window[j] == c0 + i) {
                v = v > 0.0f ? v / args.penalty : v * args.penalty;
                break;
            }
        }
        sk[i] = order_key(v);
    }
    if (tiitg == 0) {
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    const uint th = kth_key(sk, n, args.top_k, partial, tiitg, sgitg, tiisg);
    device uint2 *out = cands + tgpig * SAMPLE_KMAX;
    for (uint i = tiitg; i < n; i += SAMPLE_TG) {
        if (sk[i] >= th) {
            const uint s = atomic_fetch_add_explicit(&nkept, 1u, memory_order_relaxed);
            if (s < SAMPLE_KMAX) {
                out[s] = uint2(sk[i], c0 + i);
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint m = min(atomic_load_explicit(&nkept, memory_order_relaxed), uint(SAMPLE_KMAX));
    for (uint s = m + tiitg; s < SAMPLE_KMAX; s += SAMPLE_TG) {
        out[s] = uint2(0u, NONE);
    }
}

// One threadgroup: the chain over the parts' candidates, the draw, the step's end.
kernel void kernel_sample_final(constant kargs_sample &args [[buffer(0)]],
                                device const uint2 *cands [[buffer(1)]],
                                device const float *uniforms [[buffer(2)]],
                                device int *dst [[buffer(3)]],
                                device kargs_step *step [[buffer(4)]],
                                device int *history [[buffer(5)]],
                                device uint *recent [[buffer(6)]],
                                ushort tiitg [[thread_index_in_threadgroup]],
                                ushort sgitg [[simdgroup_index_in_threadgroup]],
                                ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup uint sk[SAMPLE_NK];
    threadgroup uint partial[2 * 3 * SAMPLE_NSG];
    threadgroup atomic_uint nkept;
    threadgroup uint ck[SAMPLE_KMAX];  // kept candidates, in no order
    threadgroup uint ci[SAMPLE_KMAX];
    threadgroup uint by_value[SAMPLE_KMAX];  // their slots, largest first (ties: column)
    threadgroup uint by_col[SAMPLE_KMAX];  // the survivors' slots by column
    threadgroup float tw[SAMPLE_KMAX];  // the survivors' weights by column
    threadgroup float ev[SAMPLE_KMAX];  // exp(v - largest v) of the kept, largest first
    threadgroup uint survivors;
    const uint t = tiitg;
    const uint n = (args.n_cols + args.chunk - 1) / args.chunk * SAMPLE_KMAX;
    for (uint i = t; i < n; i += SAMPLE_TG) {
        sk[i] = cands[i].x;
    }
    if (t == 0) {
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    const uint th = kth_key(sk, n, args.top_k, partial, tiitg, sgitg, tiisg);
    for (uint i = t; i < n; i += SAMPLE_TG) {
        const uint2 c = cands[i];
        if (c.x >= th && c.y != NONE) {
            const uint s = atomic_fetch_add_explicit(&nkept, 1u, memory_order_relaxed);
            if (s < SAMPLE_KMAX) {
                ck[s] = c.x;
                ci[s] = c.y;
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint m = min(atomic_load_explicit(&nkept, memory_order_relaxed), uint(SAMPLE_KMAX));
    // largest first, equal values by column (the host's stable sort of the probabilities)
    if (t < m) {
        uint r = 0;
        for (uint j = 0; j < m; ++j) {
            r += (ck[j] > ck[t] || (ck[j] == ck[t] && ci[j] < ci[t])) ? 1u : 0u;
        }
        by_value[r] = t;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const float v0 = key_value(ck[by_value[0]]);
    if (t < m) {  // the exponentials in parallel: one thread walking them waited on each
        ev[t] = exp(key_value(ck[by_value[t]]) - v0);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (t == 0) {
        // top_p: the fewest largest whose probabilities reach top_p; min_p: of those, the ones
        // with probability >= min_p times the largest, i.e. exp(v - v0) >= min_p (a prefix)
        uint keep = m;
        if (args.top_p < 1.0f) {
            float total = 0.0f;
            for (uint j = 0; j < m; ++j) {
                total += ev[j];
            }
            float acc = 0.0f;
            for (uint j = 0; j < m; ++j) {
                acc += ev[j];
                if (acc / total >= args.top_p) {
                    keep = j + 1;
                    break;
                }
            }
        }
        if (args.min_p > 0.0f) {
            uint j = 1;
            while (j < keep && ev[j] >= args.min_p) {
                ++j;
            }
            keep = j;
        }
        survivors = keep;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint keep = survivors;
    // the draw walks the survivors by column, as the host's cumulative sum over the vocabulary
    if (t < keep) {
        const uint c = ci[by_value[t]];
        uint r = 0;
        for (uint j = 0; j < keep; ++j) {
            r += ci[by_value[j]] < c ? 1u : 0u;
        }
        by_col[r] = by_value[t];
        tw[r] = exp((key_value(ck[by_value[t]]) - v0) / args.temperature);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (t == 0) {
        float total = 0.0f;
        for (uint j = 0; j < keep; ++j) {
            total += tw[j];
        }
        // the first survivor whose share of the cumulative sum passes u
        const float u = uniforms[step->pos - args.pos0] * total;
        uint pick = keep - 1;
        float acc = 0.0f;
        for (uint j = 0; j < keep; ++j) {
            acc += tw[j];
            if (acc > u) {
                pick = j;
                break;
            }
        }
        const int tok = int(ci[by_col[pick]]);
        dst[0] = tok;
        history[step->pos - args.pos0] = tok;
        if (args.last_n > 0) {
            recent[step->pos - args.pos0 + args.last_n] = uint(tok);
        }
        step->pos += 1;
        step->n_kv += 1;
    }
}
