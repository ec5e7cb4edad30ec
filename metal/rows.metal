// Rows mode (backends/base.py's Graph.rows): a decode step of several sequences at once, row r
// being one token of the sequence in slot rows[r].x at position rows[r].y. These are the ops that
// depend on where a row is: rope at each row's own position, the KV store into each row's own
// slot, and attention of each row over its own slot's cache (the RWKV state ops have their rows
// variants in rwkv.metal). A layer's cache holds the slots one after another: slot s at rows
// s * ring.., its position p in row s * ring + p % ring (as attention.metal).
#include <metal_stdlib>
using namespace metal;
#include "attn.h"
#include "kargs.h"
#include "rope.h"

// --------------------------------------------------------------------------------------------
// rope as kernel_rope_f32, the angle from the row's own position. Grid (ceil(head_dim/2 /
// threads), n_head, n_rows); ff is bound to x when has_freq_factors is 0.
kernel void kernel_rope_rows_f32(constant kargs_rope &args [[buffer(0)]],
                                 device const uint2 *rows [[buffer(1)]],
                                 device const float *x [[buffer(2)]],
                                 device const float *ff [[buffer(3)]],
                                 device float *dst [[buffer(4)]],
                                 uint3 tgpig [[threadgroup_position_in_grid]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort3 ntg [[threads_per_threadgroup]]) {
    const uint i = tgpig.x * ntg.x + tiitg;
    const uint hd = args.head_dim;
    if (i >= hd / 2) {
        return;
    }
    const uint row = tgpig.z;
    const ulong base = (ulong(row) * args.n_head + tgpig.y) * hd;
    rope_pair<float>(x + base, dst + base, i, float(rows[row].y), args.n_rot, args.base,
                     args.freq_scale, args.neox, args.has_freq_factors, ff);
}

// --------------------------------------------------------------------------------------------
// kv_store: row r of k and v (n_rows x kv_dim, f32) into its slot's cache row for its position.
// Grid (ceil(kv_dim / threads), n_rows).
template <typename T>
kernel void kernel_kv_store_rows(constant kargs_kv_store &args [[buffer(0)]],
                                 device const uint2 *rows [[buffer(1)]],
                                 device const float *k [[buffer(2)]],
                                 device const float *v [[buffer(3)]], device T *kc [[buffer(4)]],
                                 device T *vc [[buffer(5)]],
                                 uint3 tgpig [[threadgroup_position_in_grid]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort3 ntg [[threads_per_threadgroup]]) {
    const uint row = tgpig.y;
    const uint d = tgpig.x * ntg.x + tiitg;
    if (row >= args.n_rows || d >= args.kv_dim) {
        return;
    }
    const uint2 at = rows[row];
    const ulong dst = (ulong(at.x) * args.ring + at.y % args.ring) * args.kv_dim + d;
    const ulong src = ulong(row) * args.kv_dim + d;
    kc[dst] = T(k[src]);
    vc[dst] = T(v[src]);
}

typedef decltype(kernel_kv_store_rows<half>) kv_store_rows_f16_t;
typedef decltype(kernel_kv_store_rows<float>) kv_store_rows_f32_t;
// clang-format off
template [[host_name("kernel_kv_store_rows_f16")]] kernel kv_store_rows_f16_t kernel_kv_store_rows<half>;
template [[host_name("kernel_kv_store_rows_f32")]] kernel kv_store_rows_f32_t kernel_kv_store_rows<float>;
// clang-format on

// --------------------------------------------------------------------------------------------
// Attention of each row over its own slot's cache: kernel_attn_decode with the row's (slot,
// position) in place of the run's. Grid (n_splits, n_head, n_rows), one SIMD group per
// threadgroup; split s of row r takes an equal share of the row's visible positions (rows at
// different positions split different lengths) and writes its partial softmax state to part,
// which kernel_attn_reduce_f32 (attention.metal) joins as for a decode step.
template <typename T, typename T4>
kernel void kernel_attn_rows(constant kargs_attention &args [[buffer(0)]],
                             device const uint2 *rows [[buffer(1)]],
                             device const float *q [[buffer(2)]], device const T *kc [[buffer(3)]],
                             device const T *vc [[buffer(4)]], device float *part [[buffer(5)]],
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
    const uint2 at = rows[row];
    const ulong slot0 = ulong(at.x) * args.ring * args.n_kv_head * D;  // the slot's first row
    attn_split<T, T4>(args, q + (ulong(row) * args.n_head + h) * D, kc + slot0, vc + slot0,
                      part + ((ulong(row) * args.n_head + h) * ns + split) * (D + 2), at.y,
                      split, ns, h, tiisg, sq, sp);
}

typedef decltype(kernel_attn_rows<half, half4>) attn_rows_f16_t;
typedef decltype(kernel_attn_rows<float, float4>) attn_rows_f32_t;
// clang-format off
template [[host_name("kernel_attn_rows_f16")]] kernel attn_rows_f16_t kernel_attn_rows<half, half4>;
template [[host_name("kernel_attn_rows_f32")]] kernel attn_rows_f32_t kernel_attn_rows<float, float4>;
// clang-format on
