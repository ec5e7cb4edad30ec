// Element-wise ops over n floats: add, mul (b repeats every b_period values: a bias row, or the
// full tensor), scale, and the gated activations of the feed-forward block.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "act.h"

// One thread per value; the grid is ceil(n / threads) threadgroups.
kernel void kernel_add_f32(constant kargs_binary &args [[buffer(0)]],
                           device const float *a [[buffer(1)]], device const float *b [[buffer(2)]],
                           device float *dst [[buffer(3)]], uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = a[i] + b[i % args.b_period];
    }
}

kernel void kernel_mul_f32(constant kargs_binary &args [[buffer(0)]],
                           device const float *a [[buffer(1)]], device const float *b [[buffer(2)]],
                           device float *dst [[buffer(3)]], uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = a[i] * b[i % args.b_period];
    }
}

kernel void kernel_scale_f32(constant kargs_binary &args [[buffer(0)]],
                             device const float *a [[buffer(1)]], device float *dst [[buffer(2)]],
                             uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = a[i] * args.s;
    }
}

// silu(g) * u (act.h)
kernel void kernel_swiglu_f32(constant kargs_unary &args [[buffer(0)]],
                              device const float *gate [[buffer(1)]],
                              device const float *up [[buffer(2)]], device float *dst [[buffer(3)]],
                              uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = swiglu1(gate[i], up[i]);
    }
}

// gpt-oss's clamped SwiGLU (act.h)
kernel void kernel_swiglu_oai_f32(constant kargs_swiglu_oai &args [[buffer(0)]],
                                  device const float *gate [[buffer(1)]],
                                  device const float *up [[buffer(2)]],
                                  device float *dst [[buffer(3)]],
                                  uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = swiglu_oai1(gate[i], up[i], args.alpha, args.limit);
    }
}

// gelu(g) * u (act.h)
kernel void kernel_geglu_f32(constant kargs_unary &args [[buffer(0)]],
                             device const float *gate [[buffer(1)]],
                             device const float *up [[buffer(2)]], device float *dst [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
    if (i < args.n) {
        dst[i] = geglu1(gate[i], up[i]);
    }
}
