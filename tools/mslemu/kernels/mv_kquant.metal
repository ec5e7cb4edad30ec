// Decode-path mat-vec for GGUF k-quants: y = W x, W [nrows, ncols] in Q4_K / Q6_K, x and y float.
// Each SIMD group owns NR consecutive rows; x is loaded once per lane and reused for all NR rows.
// Launch: threads_per_threadgroup = 32 * nsg, threadgroups = ceil(nrows / (NR * nsg)).
#include <metal_stdlib>
using namespace metal;

#define QK_K 256

typedef struct {
    half d;                // scale of the 6-bit sub-block scales
    half dmin;             // scale of the 6-bit sub-block mins
    uint8_t scales[12];    // 8 x (scale, min), 6 bits each, packed
    uint8_t qs[QK_K / 2];  // 4-bit quants, 2 per byte
} block_q4_K;
static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");

typedef struct {
    uint8_t ql[QK_K / 2];      // low 4 bits
    uint8_t qh[QK_K / 4];      // high 2 bits
    int8_t scales[QK_K / 16];  // 8-bit sub-block scales
    half d;
} block_q6_K;
static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");

struct mv_args {
    int32_t nrows;
    int32_t ncols;  // multiple of QK_K
    uint64_t nb1;   // bytes per row of W
};

// Scales and mins of the sub-block pair (2*iq, 2*iq+1) of a Q4_K block, one per byte.
static inline void q4k_scale_min_pair(device const uint8_t *scales, short iq, thread uchar2 &sc,
                                      thread uchar2 &mn) {
    device const uint16_t *s16 = (device const uint16_t *)scales;
    if (iq < 2) {
        sc = as_type<uchar2>(ushort(s16[iq] & 0x3F3F));
        mn = as_type<uchar2>(ushort(s16[iq + 2] & 0x3F3F));
    } else {
        sc = as_type<uchar2>(ushort((s16[iq + 2] & 0x0F0F) | ((s16[iq - 2] & 0xC0C0) >> 2)));
        mn = as_type<uchar2>(ushort(((s16[iq + 2] >> 4) & 0x0F0F) | ((s16[iq] & 0xC0C0) >> 2)));
    }
}

template <short NR>
kernel void kernel_mul_mv_q4_K_f32(
    constant mv_args &args [[buffer(0)]], device const char *src0 [[buffer(1)]],
    device const float *src1 [[buffer(2)]], device float *dst [[buffer(3)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort sgitg [[simdgroup_index_in_threadgroup]],
    ushort tiisg [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
    const int nb = args.ncols / QK_K;
    const int first_row = (int(tgpig) * nsg + sgitg) * NR;

    // lane layout: 4 blocks in flight per SIMD group, 8 lanes per block;
    // lane (iq, ir) handles bytes [32*iq + 16*ir, +16) of qs = 16 weights of sub-block 2*iq (low
    // nibbles) and 16 weights of sub-block 2*iq+1 (high nibbles)
    const short ix = tiisg / 8;
    const short it = tiisg % 8;
    const short iq = it / 2;
    const short ir = it % 2;

    device const block_q4_K *w[NR];
    for (short r = 0; r < NR; ++r) {
        const int row = min(first_row + r, args.nrows - 1);  // clamp: never read past the last row
        w[r] = (device const block_q4_K *)(src0 + row * args.nb1);
    }

    float sumf[NR] = {0.f};

    for (int ib = ix; ib < nb; ib += 4) {
        device const float4 *y4 = (device const float4 *)(src1 + ib * QK_K + 64 * iq + 16 * ir);
        float4 ylo[4], yhi[4];
        float4 slo = 0.f, shi = 0.f;
        for (short i = 0; i < 4; ++i) {
            ylo[i] = y4[i];
            yhi[i] = y4[i + 8];
            slo += ylo[i];
            shi += yhi[i];
        }
        const float sum_lo = slo.x + slo.y + slo.z + slo.w;
        const float sum_hi = shi.x + shi.y + shi.z + shi.w;

        for (short r = 0; r < NR; ++r) {
            device const block_q4_K &b = w[r][ib];
            uchar2 sc, mn;
            q4k_scale_min_pair(b.scales, iq, sc, mn);
            device const uchar4 *q4 = (device const uchar4 *)(b.qs + 32 * iq + 16 * ir);
            float acc_lo = 0.f, acc_hi = 0.f;
            for (short i = 0; i < 4; ++i) {
                const uchar4 q = q4[i];
                acc_lo += dot(float4(q & uchar(0x0F)), ylo[i]);
                acc_hi += dot(float4(q >> 4), yhi[i]);
            }
            const float d = b.d;
            const float dmin = b.dmin;
            sumf[r] += d * (float(sc.x) * acc_lo + float(sc.y) * acc_hi) -
                       dmin * (float(mn.x) * sum_lo + float(mn.y) * sum_hi);
        }
    }

    for (short r = 0; r < NR; ++r) {
        const float tot = simd_sum(sumf[r]);
        if (tiisg == 0 && first_row + r < args.nrows) {
            dst[first_row + r] = tot;
        }
    }
}

template <short NR>
kernel void kernel_mul_mv_q6_K_f32(
    constant mv_args &args [[buffer(0)]], device const char *src0 [[buffer(1)]],
    device const float *src1 [[buffer(2)]], device float *dst [[buffer(3)]],
    uint tgpig [[threadgroup_position_in_grid]], ushort sgitg [[simdgroup_index_in_threadgroup]],
    ushort tiisg [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
    const int nb = args.ncols / QK_K;
    const int first_row = (int(tgpig) * nsg + sgitg) * NR;

    // 2 blocks in flight, 16 lanes per block: lane (ih, l0) handles weights l0..l0+3 of the
    // four 32-wide quarters of half ih (128 weights) of the block.
    const short ix = tiisg / 16;
    const short tid = tiisg % 16;
    const short ih = tid / 8;
    const short l0 = 4 * (tid % 8);
    const short is = 8 * ih + l0 / 16;  // scale index of quarter 0; quarter k uses is + 2k

    device const block_q6_K *w[NR];
    for (short r = 0; r < NR; ++r) {
        const int row = min(first_row + r, args.nrows - 1);
        w[r] = (device const block_q6_K *)(src0 + row * args.nb1);
    }

    float sumf[NR] = {0.f};

    for (int ib = ix; ib < nb; ib += 2) {
        device const float *y = src1 + ib * QK_K + 128 * ih + l0;
        float4 yk[4];
        for (short k = 0; k < 4; ++k) {
            yk[k] = *((device const float4 *)(y + 32 * k));
        }
        for (short r = 0; r < NR; ++r) {
            device const block_q6_K &b = w[r][ib];
            device const uint8_t *ql = b.ql + 64 * ih + l0;
            device const uint8_t *qh = b.qh + 32 * ih + l0;
            float4 s = 0.f;
            for (short i = 0; i < 4; ++i) {
                const uint8_t h = qh[i];
                s[0] += yk[0][i] * float(char((ql[i] & 0x0F) | ((h << 4) & 0x30)) - 32);
                s[1] += yk[1][i] * float(char((ql[i + 32] & 0x0F) | ((h << 2) & 0x30)) - 32);
                s[2] += yk[2][i] * float(char((ql[i] >> 4) | (h & 0x30)) - 32);
                s[3] += yk[3][i] * float(char((ql[i + 32] >> 4) | ((h >> 2) & 0x30)) - 32);
            }
            const float d = b.d;
            sumf[r] += d * (s[0] * b.scales[is] + s[1] * b.scales[is + 2] +
                            s[2] * b.scales[is + 4] + s[3] * b.scales[is + 6]);
        }
    }

    for (short r = 0; r < NR; ++r) {
        const float tot = simd_sum(sumf[r]);
        if (tiisg == 0 && first_row + r < args.nrows) {
            dst[first_row + r] = tot;
        }
    }
}

typedef decltype(kernel_mul_mv_q4_K_f32<4>) mul_mv_q4_K_t;
typedef decltype(kernel_mul_mv_q6_K_f32<2>) mul_mv_q6_K_t;

template [[host_name("kernel_mul_mv_q4_K_f32_r4")]] kernel mul_mv_q4_K_t kernel_mul_mv_q4_K_f32<4>;
template [[host_name("kernel_mul_mv_q4_K_f32_r1")]] kernel mul_mv_q4_K_t kernel_mul_mv_q4_K_f32<1>;
template [[host_name("kernel_mul_mv_q6_K_f32_r2")]] kernel mul_mv_q6_K_t kernel_mul_mv_q6_K_f32<2>;
template [[host_name("kernel_mul_mv_q6_K_f32_r1")]] kernel mul_mv_q6_K_t kernel_mul_mv_q6_K_f32<1>;
