// The gated activations of the feed-forward block, shared by the element-wise kernels and the
// mat-vec / mat-mat that apply them as they load x or store y (backends/fuse.py).
#pragma once

// silu(g) * u. exp(-g) overflows to inf for g < -88 and g / inf = -0: the right limit.
inline float swiglu1(float g, float u) {
    return g / (1.0f + exp(-g)) * u;
}

// gpt-oss's clamped SwiGLU (ggml's swiglu_oai): the gate clamped above, up on both sides.
inline float swiglu_oai1(float g, float u, float alpha, float limit) {
    const float x = min(g, limit);
    return x / (1.0f + exp(alpha * -x)) * (clamp(u, -limit, limit) + 1.0f);
}

// gelu(g) * u with ggml's tanh approximation of GELU.
inline float geglu1(float g, float u) {
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.0f + precise::tanh(c * (g + 0.044715f * g * g * g))) * u;
}
