// C[M,N] = A[M,K] * B[K,N] (half in, float accumulate) with simdgroup_matrix.
// One SIMD-group computes one 8x8 tile of C; 4 SIMD-groups per threadgroup.
#include <metal_simdgroup_matrix>
#include <metal_stdlib>
using namespace metal;

struct GemmParams {
    uint M, N, K;
};

kernel void gemm_sg8x8(device const half *A [[buffer(0)]], device const half *B [[buffer(1)]],
                       device float *C [[buffer(2)]], constant GemmParams &p [[buffer(3)]],
                       uint2 tg [[threadgroup_position_in_grid]],
                       ushort sgid [[simdgroup_index_in_threadgroup]]) {
    const uint tile_row = tg.y * 8;               // one row of tiles per threadgroup.y
    const uint tile_col = (tg.x * 4 + sgid) * 8;  // 4 tiles per threadgroup along N
    if (tile_col >= p.N)
        return;  // whole SIMD-group leaves together
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_half8x8 a, b;
    for (uint k = 0; k < p.K; k += 8) {
        simdgroup_load(a, A + tile_row * p.K + k, p.K);
        simdgroup_load(b, B + k * p.N + tile_col, p.N);
        simdgroup_multiply_accumulate(acc, a, b, acc);
    }
    simdgroup_store(acc, C + tile_row * p.N + tile_col, p.N);
}

// Same, staging B^T through threadgroup memory and loading it transposed.
kernel void gemm_sg8x8_tgT(device const half *A [[buffer(0)]],
                           device const half *BT [[buffer(1)]],  // B transposed: [N, K]
                           device float *C [[buffer(2)]], constant GemmParams &p [[buffer(3)]],
                           uint2 tg [[threadgroup_position_in_grid]],
                           ushort sgid [[simdgroup_index_in_threadgroup]],
                           ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup half bt_tile[4][8 * 8];
    const uint tile_row = tg.y * 8;
    const uint tile_col = (tg.x * 4 + sgid) * 8;
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_half8x8 a, b;
    for (uint k = 0; k < p.K; k += 8) {
        for (uint e = lane; e < 64; e += 32) {  // stage an 8x8 block of B^T
            uint n = e / 8, kk = e % 8;
            bt_tile[sgid][e] = BT[(tile_col + n) * p.K + k + kk];
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
        simdgroup_load(a, A + tile_row * p.K + k, p.K);
        simdgroup_load(b, &bt_tile[sgid][0], 8, ulong2(0, 0), true);  // transpose on load
        simdgroup_multiply_accumulate(acc, a, b, acc);
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
    simdgroup_store(acc, C + tile_row * p.N + tile_col, p.N);
}
