// Rotary position embedding of each head of x (n_rows x n_head*head_dim) at positions
// step.pos + row, and its fusion with the KV-cache store (backends/fuse.py's rope_kv_store) into
// the run's slot (rows step.slot * ring.. of the cache).
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "rope.h"

// One thread per pair of a head; the grid is (ceil(head_dim/2 / threads), n_head, n_rows). ff is
// bound to x when has_freq_factors is 0. ntg is a vector as tgpig is: MSL takes the position and
// size inputs all scalars or all vectors of one length (spec 5.2.3.6).
kernel void kernel_rope_f32(constant kargs_rope &args [[buffer(0)]],
                            constant kargs_step &step [[buffer(1)]],
                            device const float *x [[buffer(2)]],
                            device const float *ff [[buffer(3)]], device float *dst [[buffer(4)]],
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
    rope_pair<float>(x + base, dst + base, i, float(step.pos + row), args.n_rot, args.base,
                     args.freq_scale, args.neox, args.has_freq_factors, ff);
}

// rope of q and k and the store of the rotated k and of v into the cache, one dispatch for three
// (kargs_rope_kv_store). The grid is (ceil(head_dim/2 / threads), n_head + k_n_head, n_rows):
// heads past n_head are k's, whose threads also copy their two values of v. The rotated k is
// rounded to the cache type as kernel_kv_store would round it.
template <typename T>
kernel void kernel_rope_kv_store(constant kargs_rope_kv_store &args [[buffer(0)]],
                                 constant kargs_step &step [[buffer(1)]],
                                 device const float *q [[buffer(2)]],
                                 device const float *k [[buffer(3)]],
                                 device const float *v [[buffer(4)]],
                                 device const float *ff [[buffer(5)]],
                                 device float *qo [[buffer(6)]], device T *kc [[buffer(7)]],
                                 device T *vc [[buffer(8)]],
                                 uint3 tgpig [[threadgroup_position_in_grid]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort3 ntg [[threads_per_threadgroup]]) {
    const uint i = tgpig.x * ntg.x + tiitg;
    const uint hd = args.head_dim;
    if (i >= hd / 2) {
        return;
    }
    const uint row = tgpig.z;
    const uint h = tgpig.y;
    const float p = float(step.pos + row);
    if (h < args.n_head) {
        const ulong base = (ulong(row) * args.n_head + h) * hd;
        rope_pair<float>(q + base, qo + base, i, p, args.n_rot, args.base, args.freq_scale,
                         args.neox, args.has_freq_factors, ff);
        return;
    }
    const ulong src = ulong(row) * args.kv_dim + (h - args.n_head) * hd;
    const ulong dst = (ulong(step.slot) * args.ring + (step.pos + row) % args.ring) * args.kv_dim +
                      (h - args.n_head) * hd;
    rope_pair<T>(k + src, kc + dst, i, p, args.n_rot, args.base, args.freq_scale, args.neox,
                 args.has_freq_factors, ff);
    vc[dst + 2 * i] = T(v[src + 2 * i]);
    vc[dst + 2 * i + 1] = T(v[src + 2 * i + 1]);
}

// the parameter types depend on T: one function type per instantiation
typedef decltype(kernel_rope_kv_store<half>) rope_kv_store_f16_t;
typedef decltype(kernel_rope_kv_store<float>) rope_kv_store_f32_t;
template [[host_name("kernel_rope_kv_store_f16")]] kernel rope_kv_store_f16_t
    kernel_rope_kv_store<half>;
template [[host_name("kernel_rope_kv_store_f32")]] kernel rope_kv_store_f32_t
    kernel_rope_kv_store<float>;
