// Rotary position embedding of each head of x (n_rows x n_head*head_dim) at positions
// step.pos + row.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// One thread per pair of a head: thread i < n_rot/2 rotates pair i (values (2i, 2i+1), or
// (i, i + n_rot/2) in NeoX mode) by theta = p * freq_scale * base^(-2i/n_rot) / ff[i]; threads
// past n_rot/2 copy the two unrotated values 2i, 2i+1. The grid is
// (ceil(head_dim/2 / threads), n_head, n_rows). ff is bound to x when has_freq_factors is 0.
kernel void kernel_rope_f32(constant kargs_rope &args [[buffer(0)]],
                            constant kargs_step &step [[buffer(1)]],
                            device const float *x [[buffer(2)]],
                            device const float *ff [[buffer(3)]], device float *dst [[buffer(4)]],
                            uint3 tgpig [[threadgroup_position_in_grid]],
                            ushort tiitg [[thread_index_in_threadgroup]],
                            ushort ntg [[threads_per_threadgroup]]) {
    const uint i = tgpig.x * ntg + tiitg;
    const uint hd = args.head_dim;
    if (i >= hd / 2) {
        return;
    }
    const uint row = tgpig.z;
    const ulong base = (ulong(row) * args.n_head + tgpig.y) * hd;
    device const float *xh = x + base;
    device float *oh = dst + base;
    const uint half_rot = args.n_rot / 2;
    if (i >= half_rot) {
        oh[2 * i] = xh[2 * i];
        oh[2 * i + 1] = xh[2 * i + 1];
        return;
    }
    const float p = float(step.pos + row);
    float theta = p * args.freq_scale * pow(args.base, -2.0f * float(i) / float(args.n_rot));
    if (args.has_freq_factors) {
        theta /= ff[i];
    }
    const float c = cos(theta);
    const float s = sin(theta);
    const uint a = args.neox ? i : 2 * i;
    const uint b = args.neox ? i + half_rot : 2 * i + 1;
    const float x0 = xh[a];
    const float x1 = xh[b];
    oh[a] = x0 * c - x1 * s;
    oh[b] = x0 * s + x1 * c;
}
