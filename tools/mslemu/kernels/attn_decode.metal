// Single-token (decode) attention over a half-precision KV cache with grouped-query attention.
// One threadgroup per KV head; it serves the G query heads that share that KV head.
//   q   : [n_head][D] float          (n_head = n_kv_head * G)
//   k,v : [n_kv_head][n_ctx][D] half (first kv_len positions valid; strides in bytes in args)
//   out : [n_head][D] float
// Keys are split over SIMD groups in chunks of 32 (one key per lane for the scores, then the values
// accumulated with the lanes split over D), online softmax per SIMD group, and the NSG partial
// results merged through threadgroup memory.
#include <metal_stdlib>
using namespace metal;

struct attn_args {
    int32_t n_kv_head;
    int32_t kv_len;
    float scale;     // usually 1/sqrt(D)
    uint64_t nb_k1;  // bytes between positions in k
    uint64_t nb_k2;  // bytes between kv heads in k
    uint64_t nb_v1;
    uint64_t nb_v2;
};

// optional tanh soft-capping of the scores (Gemma-2 style); defined => enabled
constant float FC_attn_softcap [[function_constant(0)]];
constant bool FC_attn_has_softcap = is_function_constant_defined(FC_attn_softcap);
// optional additive mask/bias per position: float mask[kv_len] in buffer 5
constant bool FC_attn_has_mask [[function_constant(1)]];

template <int D, int G, int NSG>
kernel void kernel_attn_decode(
    constant attn_args &args [[buffer(0)]], device const float *q [[buffer(1)]],
    device const char *kc [[buffer(2)]], device const char *vc [[buffer(3)]],
    device float *out [[buffer(4)]],
    device const float *mask [[buffer(5), function_constant(FC_attn_has_mask)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]],
    ushort sgitg [[simdgroup_index_in_threadgroup]], ushort tiisg [[thread_index_in_simdgroup]]) {
    static_assert(D % 128 == 0 || D == 64, "D must be 64 or a multiple of 128");
    constexpr int D4 = D / 4;           // float4 chunks per head
    constexpr int DL = (D4 + 31) / 32;  // float4 chunks per lane for the value accumulation

    threadgroup float4 sq[G * D4];       // the G query vectors (pre-scaled)
    threadgroup float sp[NSG][G][32];    // probabilities of the current chunk, per SIMD group
    threadgroup float sm[NSG][G];        // per SIMD group running max
    threadgroup float sl[NSG][G];        // per SIMD group running sum
    threadgroup float4 so[NSG][G * D4];  // per SIMD group unnormalized outputs

    const int kvh = tgpig;
    device const float4 *q4 = (device const float4 *)(q + kvh * G * D);
    for (int i = tiitg; i < G * D4; i += NSG * 32) {
        sq[i] = q4[i] * args.scale;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    device const char *kh = kc + kvh * args.nb_k2;
    device const char *vh = vc + kvh * args.nb_v2;

    float M[G], L[G];
    float4 O[G][DL];
    for (int g = 0; g < G; ++g) {
        M[g] = -INFINITY;
        L[g] = 0.f;
        for (int c = 0; c < DL; ++c)
            O[g][c] = 0.f;
    }

    for (int t0 = sgitg * 32; t0 < args.kv_len; t0 += NSG * 32) {
        const int t = t0 + tiisg;
        const bool valid = t < args.kv_len;

        // scores: one key per lane
        float s[G];
        for (int g = 0; g < G; ++g)
            s[g] = 0.f;
        if (valid) {
            device const half4 *k4 = (device const half4 *)(kh + t * args.nb_k1);
            for (int c = 0; c < D4; ++c) {
                const float4 kf = float4(k4[c]);
                for (int g = 0; g < G; ++g) {
                    s[g] += dot(sq[g * D4 + c], kf);
                }
            }
        }
        for (int g = 0; g < G; ++g) {
            float sg = s[g];
            if (FC_attn_has_softcap) {
                sg = FC_attn_softcap * precise::tanh(sg / FC_attn_softcap);
            }
            if (FC_attn_has_mask && valid) {
                sg += mask[t];
            }
            sg = valid ? sg : -INFINITY;

            const float m_new = max(M[g], simd_max(sg));
            const float alpha = exp(M[g] - m_new);
            const float p = valid ? exp(sg - m_new) : 0.f;
            L[g] = L[g] * alpha + simd_sum(p);
            M[g] = m_new;
            sp[sgitg][g][tiisg] = p;
            for (int c = 0; c < DL; ++c)
                O[g][c] *= alpha;
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // values: lanes split over D
        const int nt = min(32, args.kv_len - t0);
        for (int j = 0; j < nt; ++j) {
            device const half4 *v4 = (device const half4 *)(vh + (t0 + j) * args.nb_v1);
            for (int c = 0; c < DL; ++c) {
                const int cc = tiisg + 32 * c;
                if (cc < D4) {
                    const float4 vf = float4(v4[cc]);
                    for (int g = 0; g < G; ++g) {
                        O[g][c] += sp[sgitg][g][j] * vf;
                    }
                }
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }

    // merge the NSG partial softmaxes
    for (int g = 0; g < G; ++g) {
        if (tiisg == 0) {
            sm[sgitg][g] = M[g];
            sl[sgitg][g] = L[g];
        }
        for (int c = 0; c < DL; ++c) {
            const int cc = tiisg + 32 * c;
            if (cc < D4)
                so[sgitg][g * D4 + cc] = O[g][c];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (int i = tiitg; i < G * D4; i += NSG * 32) {
        const int g = i / D4;
        float m = -INFINITY;
        for (int s = 0; s < NSG; ++s)
            m = max(m, sm[s][g]);
        float l = 0.f;
        float4 o = 0.f;
        for (int s = 0; s < NSG; ++s) {
            const float w = sm[s][g] == -INFINITY ? 0.f : exp(sm[s][g] - m);
            l += w * sl[s][g];
            o += w * so[s][i];
        }
        device float4 *o4 = (device float4 *)(out + kvh * G * D);
        o4[i] = o / l;
    }
}

#define INSTANTIATE_ATTN(D, G, NSG)                                                                \
    template [[host_name("kernel_attn_decode_d" #D "_g" #G "_nsg" #NSG)]] kernel void              \
    kernel_attn_decode<D, G, NSG>(                                                                 \
        constant attn_args & args [[buffer(0)]], device const float *q [[buffer(1)]],              \
        device const char *kc [[buffer(2)]], device const char *vc [[buffer(3)]],                  \
        device float *out [[buffer(4)]],                                                           \
        device const float *mask [[buffer(5), function_constant(FC_attn_has_mask)]],               \
        uint tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]], \
        ushort sgitg [[simdgroup_index_in_threadgroup]],                                           \
        ushort tiisg [[thread_index_in_simdgroup]]);

INSTANTIATE_ATTN(128, 4, 4)
INSTANTIATE_ATTN(128, 1, 4)
INSTANTIATE_ATTN(64, 8, 2)
