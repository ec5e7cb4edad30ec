// ggml-style Q4_0 mat-vec: each block = 32 weights, one half scale + 16 bytes
// of nibbles (low nibbles = weights 0..15, high nibbles = 16..31), w = (q-8)*d.
#include <metal_stdlib>
using namespace metal;

#define QK4_0 32
typedef struct {
    half d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;

kernel void mul_mv_q4_0_f32(device const block_q4_0 *W [[buffer(0)]],
                            device const float *x [[buffer(1)]], device float *y [[buffer(2)]],
                            constant uint &ncols [[buffer(3)]],
                            uint tg [[threadgroup_position_in_grid]],
                            ushort sgid [[simdgroup_index_in_threadgroup]],
                            ushort lane [[thread_index_in_simdgroup]],
                            ushort nsg [[simdgroups_per_threadgroup]]) {
    const uint row = tg * nsg + sgid;
    const uint nb = ncols / QK4_0;
    device const block_q4_0 *wr = W + row * nb;
    // two lanes per block: lane&1 picks which 8 bytes (16 weights' worth of nibbles)
    float acc = 0.0f;
    for (uint ib = lane / 2; ib < nb; ib += 16) {
        const float d = float(wr[ib].d);
        const uint off = (lane & 1) * 8;
        device const float *xb = x + ib * QK4_0;
        float s = 0.0f;
        for (uint j = 0; j < 8; ++j) {
            const uint8_t q = wr[ib].qs[off + j];
            s += float(int(q & 0x0F) - 8) * xb[off + j];
            s += float(int(q >> 4) - 8) * xb[off + j + 16];
        }
        acc += d * s;
    }
    acc = simd_sum(acc);
    if (lane == 0)
        y[row] = acc;
}
