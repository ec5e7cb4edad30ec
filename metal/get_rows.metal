// Embedding lookup: dst[i, :] = table[ids[i], :] as float32, for every weight type.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"
#include "quants.h"

// One threadgroup per token; its threads walk the row in 16-value chunks (the quant readers'
// unit). Ids are clamped into the table so a bad id cannot read outside the buffer.
template <typename Q>
kernel void kernel_get_rows(constant kargs_get_rows &args [[buffer(0)]],
                            device const char *table [[buffer(1)]],
                            device const int *ids [[buffer(2)]], device float *dst [[buffer(3)]],
                            uint tgpig [[threadgroup_position_in_grid]],
                            ushort tiitg [[thread_index_in_threadgroup]],
                            ushort ntg [[threads_per_threadgroup]]) {
    const uint i = tgpig;
    if (i >= args.n_rows) {
        return;
    }
    const uint n = args.n_cols;
    const int id = clamp(ids[i], 0, int(args.n_vocab) - 1);
    device const char *row = table + ulong(id) * Q::row_bytes(n);
    device float *out = dst + ulong(i) * n;
    for (uint k = uint(tiitg) * 16; k < n; k += uint(ntg) * 16) {
        float4 v[4];
        Q::load16(row, k, n, v);
        for (short j = 0; j < 16 && k + j < n; ++j) {
            out[k + j] = v[j / 4][j % 4];
        }
    }
}

typedef decltype(kernel_get_rows<type_f32>) get_rows_t;

template [[host_name("kernel_get_rows_f32")]] kernel get_rows_t kernel_get_rows<type_f32>;
template [[host_name("kernel_get_rows_f16")]] kernel get_rows_t kernel_get_rows<type_f16>;
template [[host_name("kernel_get_rows_bf16")]] kernel get_rows_t kernel_get_rows<type_bf16>;
template [[host_name("kernel_get_rows_q4_0")]] kernel get_rows_t kernel_get_rows<type_q4_0>;
template [[host_name("kernel_get_rows_q4_1")]] kernel get_rows_t kernel_get_rows<type_q4_1>;
template [[host_name("kernel_get_rows_q5_0")]] kernel get_rows_t kernel_get_rows<type_q5_0>;
template [[host_name("kernel_get_rows_q5_1")]] kernel get_rows_t kernel_get_rows<type_q5_1>;
template [[host_name("kernel_get_rows_q8_0")]] kernel get_rows_t kernel_get_rows<type_q8_0>;
template [[host_name("kernel_get_rows_q2_K")]] kernel get_rows_t kernel_get_rows<type_q2_K>;
template [[host_name("kernel_get_rows_q3_K")]] kernel get_rows_t kernel_get_rows<type_q3_K>;
template [[host_name("kernel_get_rows_q4_K")]] kernel get_rows_t kernel_get_rows<type_q4_K>;
template [[host_name("kernel_get_rows_q5_K")]] kernel get_rows_t kernel_get_rows<type_q5_K>;
template [[host_name("kernel_get_rows_q6_K")]] kernel get_rows_t kernel_get_rows<type_q6_K>;
template [[host_name("kernel_get_rows_mxfp4")]] kernel get_rows_t kernel_get_rows<type_mxfp4>;
