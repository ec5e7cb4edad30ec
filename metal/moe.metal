// Mixture of experts (llama.cpp's build_moe_ffn; the ops' meaning is in backends/base.py): the
// router, the pairs listed expert by expert for the grouped mat-vec (mul_mv.metal's
// kernel_mul_mv_id_grouped_*), per-expert biases and multipliers, the weighted sum.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

#define MOE_MAX_E 512  // llama.cpp's LLAMA_MAX_EXPERTS
#define MOE_MAX_K 64
#define MOE_GROUP_TG 256  // kernel_moe_group_f32: threads of its one threadgroup

// (v, i) before (bv, bi) in the selection order: larger first, the lower index among equals;
// bi == none marks "nothing yet"
inline bool moe_before(float v, uint i, float bv, uint bi, uint none) {
    return bi == none || v > bv || (v == bv && i < bi);
}

// One SIMD group (32 threads) per row: probabilities (softmax over the row, sigmoid, or the
// logits themselves for gating 2), then k rounds of an argmax over the experts not yet taken
// (of probs + bias), then the chosen experts' weights (gating 2: the softmax over their
// logits), normalized where args.norm, times args.scale. Grid (n_rows).
kernel void kernel_moe_route_f32(constant kargs_moe_route &args [[buffer(0)]],
                                 device const float *logits [[buffer(1)]],
                                 device const float *bias [[buffer(2)]],
                                 device int *ids [[buffer(3)]], device float *wts [[buffer(4)]],
                                 uint row [[threadgroup_position_in_grid]],
                                 ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup float probs[MOE_MAX_E], sel[MOE_MAX_E];
    threadgroup uint taken[MOE_MAX_E], chosen[MOE_MAX_K];
    const uint E = args.n_expert;
    device const float *l = logits + ulong(row) * E;
    float mx = -INFINITY;
    for (uint e = tiisg; e < E; e += 32) {
        mx = max(mx, l[e]);
    }
    mx = simd_max(mx);
    float s = 0.0f;
    for (uint e = tiisg; e < E; e += 32) {
        float p = l[e];
        if (args.gating == 0) {
            p = exp(p - mx);
            s += p;
        } else if (args.gating == 1) {
            p = 1.0f / (1.0f + exp(-p));
        }
        probs[e] = p;
    }
    const float total = simd_sum(s);
    for (uint e = tiisg; e < E; e += 32) {  // each lane its own entries
        float p = probs[e];
        if (args.gating == 0) {
            p /= total;
            probs[e] = p;
        }
        sel[e] = args.has_bias ? p + bias[e] : p;  // the bias chooses, it does not weigh
        taken[e] = 0;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint j = 0; j < args.k; ++j) {
        float bv = 0.0f;
        uint bi = E;
        for (uint e = tiisg; e < E; e += 32) {
            if (!taken[e] && moe_before(sel[e], e, bv, bi, E)) {
                bv = sel[e];
                bi = e;
            }
        }
        for (ushort o = 16; o > 0; o >>= 1) {
            const float ov = simd_shuffle_xor(bv, o);
            const uint oi = simd_shuffle_xor(bi, o);
            if (oi != E && moe_before(ov, oi, bv, bi, E)) {
                bv = ov;
                bi = oi;
            }
        }
        if (tiisg == 0) {
            const uint c = min(bi, E - 1);  // NaN logits choose nothing: stay in range
            chosen[j] = c;
            taken[c] = 1;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tiisg == 0) {
        const uint k = args.k;
        device float *w = wts + ulong(row) * k;
        float wmax = -INFINITY;
        for (uint j = 0; j < k; ++j) {
            wmax = max(wmax, probs[chosen[j]]);
        }
        float sum = 0.0f;
        for (uint j = 0; j < k; ++j) {
            float v = probs[chosen[j]];
            if (args.gating == 2) {
                v = exp(v - wmax);
            }
            w[j] = v;
            sum += v;
        }
        float div = args.gating == 2 ? sum : 1.0f;
        if (args.norm) {
            // ggml clamps the sum to the smallest normal f16
            float s2 = 0.0f;
            for (uint j = 0; j < k; ++j) {
                s2 += w[j] / div;
            }
            div *= max(s2, 6.103515625e-5f);
        }
        for (uint j = 0; j < k; ++j) {
            ids[ulong(row) * k + j] = int(chosen[j]);
            w[j] = w[j] / div * args.scale;
        }
    }
}

// The pairs (row, chosen expert) listed expert by expert: groups[e] is where expert e's pairs
// start in the list at groups[E + 1 ..] (groups[E]: the pair count); after the list, the chunk
// table: n_chunks slots of (expert, first entry), expert e's pairs in runs of `chunk`, the
// unused slots (E, 0). One threadgroup. The order within an expert does not matter: each
// pair's product goes to its own place.
kernel void kernel_moe_group_f32(constant kargs_mul_mv_id &args [[buffer(0)]],
                                 device const int *ids [[buffer(1)]],
                                 device uint *groups [[buffer(2)]],
                                 ushort tiitg [[thread_index_in_threadgroup]]) {
    threadgroup atomic_uint counts[MOE_MAX_E];
    threadgroup uint firsts[MOE_MAX_E];
    const uint E = args.n_expert;
    for (uint e = tiitg; e < E; e += MOE_GROUP_TG) {
        atomic_store_explicit(&counts[e], 0u, memory_order_relaxed);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint p = tiitg; p < args.n_pairs; p += MOE_GROUP_TG) {
        const uint e = uint(clamp(ids[p], 0, int(E) - 1));
        atomic_fetch_add_explicit(&counts[e], 1u, memory_order_relaxed);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tiitg == 0) {
        uint run = 0;
        for (uint e = 0; e < E; ++e) {
            firsts[e] = run;
            groups[e] = run;
            run += atomic_load_explicit(&counts[e], memory_order_relaxed);
            atomic_store_explicit(&counts[e], 0u, memory_order_relaxed);
        }
        groups[E] = run;
        // the chunk table: a grouped mat-vec threadgroup per slot, none left idle past the pairs
        device uint *table = groups + E + 1 + args.n_pairs;
        uint slot = 0;
        for (uint e = 0; e < E; ++e) {
            const uint end = e + 1 == E ? run : firsts[e + 1];
            for (uint f = firsts[e]; f < end; f += args.chunk) {
                table[2 * slot] = e;
                table[2 * slot + 1] = f;
                ++slot;
            }
        }
        for (; slot < args.n_chunks; ++slot) {
            table[2 * slot] = E;
            table[2 * slot + 1] = 0;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint p = tiitg; p < args.n_pairs; p += MOE_GROUP_TG) {
        const uint e = uint(clamp(ids[p], 0, int(E) - 1));
        const uint at = atomic_fetch_add_explicit(&counts[e], 1u, memory_order_relaxed);
        groups[E + 1 + firsts[e] + at] = p;
    }
}

// b's value for value i of pair row i / m: b[e * b_cols + (i % m) % b_cols]
inline float moe_per_expert(constant kargs_moe_ew &args, device const float *b,
                            device const int *ids, uint i) {
    const uint e = uint(max(ids[i / args.m], 0));
    return b[e * args.b_cols + (i % args.m) % args.b_cols];
}

// One thread per value; grid ceil(n_pairs * m / threads).
kernel void kernel_add_id_f32(constant kargs_moe_ew &args [[buffer(0)]],
                              device const float *a [[buffer(1)]],
                              device const float *b [[buffer(2)]],
                              device const int *ids [[buffer(3)]], device float *y [[buffer(4)]],
                              uint i [[thread_position_in_grid]]) {
    if (i < args.n_pairs * args.m) {
        y[i] = a[i] + moe_per_expert(args, b, ids, i);
    }
}

kernel void kernel_mul_id_f32(constant kargs_moe_ew &args [[buffer(0)]],
                              device const float *a [[buffer(1)]],
                              device const float *b [[buffer(2)]],
                              device const int *ids [[buffer(3)]], device float *y [[buffer(4)]],
                              uint i [[thread_position_in_grid]]) {
    if (i < args.n_pairs * args.m) {
        y[i] = a[i] * moe_per_expert(args, b, ids, i);
    }
}

// y[r, c] = sum over j of w[r * k + j] * a[(r * k + j) * m + c], j in order. One thread per
// value of y; grid ceil(n_pairs / k * m / threads).
kernel void kernel_moe_sum_f32(constant kargs_moe_ew &args [[buffer(0)]],
                               device const float *a [[buffer(1)]],
                               device const float *w [[buffer(2)]], device float *y [[buffer(3)]],
                               uint i [[thread_position_in_grid]]) {
    const uint k = args.k, m = args.m;
    if (i < args.n_pairs / k * m) {
        const uint r = i / m, c = i % m;
        float s = 0.0f;
        for (uint j = 0; j < k; ++j) {
            s += w[r * k + j] * a[(ulong(r) * k + j) * m + c];
        }
        y[i] = s;
    }
}
