// Rotary position embedding of one pair of a head: the rotation shared by metal/rope.metal (the
// positions of one sequence) and metal/rows.metal (a position per row).
#pragma once
#include <metal_stdlib>
using namespace metal;

// Pair i of one head, xh -> oh: i < n_rot/2 rotates pair i (values (2i, 2i+1), or
// (i, i + n_rot/2) in NeoX mode) by theta = p * freq_scale * base^(-2i/n_rot) / ff[i]; past
// n_rot/2 the two unrotated values 2i, 2i+1 are copied. T is the element type of oh.
template <typename T>
inline void rope_pair(device const float *xh, device T *oh, uint i, float p, uint n_rot,
                      float base, float freq_scale, uint neox, uint has_ff,
                      device const float *ff) {
    const uint half_rot = n_rot / 2;
    if (i >= half_rot) {
        oh[2 * i] = T(xh[2 * i]);
        oh[2 * i + 1] = T(xh[2 * i + 1]);
        return;
    }
    float theta = p * freq_scale * pow(base, -2.0f * float(i) / float(n_rot));
    if (has_ff) {
        theta /= ff[i];
    }
    const float c = cos(theta);
    const float s = sin(theta);
    const uint a = neox ? i : 2 * i;
    const uint b = neox ? i + half_rot : 2 * i + 1;
    const float x0 = xh[a];
    const float x1 = xh[b];
    oh[a] = T(x0 * c - x1 * s);
    oh[b] = T(x0 * s + x1 * c);
}
