// GGUF weight types as the kernels read them: the block structs exactly as ggml stores them (the
// weights are used in place, straight from the mapped file), and one reader per type.
//
// Every type provides the same interface, so one kernel template serves all of them:
//   QK                       values per block (1 for the plain float types)
//   row_bytes(K)             bytes of a row of K values
//   load16(row, k, K, v)     values k..k+15 of a row as four float4 (k is a multiple of 16;
//                            values at or past K read as 0)
// For the block types K is a multiple of QK (the GGUF loader checks it), so load16 never crosses
// a row's end. The formulas follow ggml's dequantize_row_* (ggml-quants.c), one 16-value chunk at
// a time: chunk `il` of a 256-value K-quant block is the unit its scales are stored for.
#pragma once
#include <metal_stdlib>
using namespace metal;

#define QK_K 256

struct block_q4_0 {
    half d;
    uint8_t qs[16];  // value j: low nibble of qs[j]; value j + 16: high nibble
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 is 18 bytes in GGUF");

struct block_q4_1 {
    half d;
    half m;
    uint8_t qs[16];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 is 20 bytes in GGUF");

struct block_q5_0 {
    half d;
    uint8_t qh[4];  // fifth bits, a little-endian uint32 (bytes: the struct is only 2-aligned)
    uint8_t qs[16];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 is 22 bytes in GGUF");

struct block_q5_1 {
    half d;
    half m;
    uint8_t qh[4];
    uint8_t qs[16];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 is 24 bytes in GGUF");

struct block_q8_0 {
    half d;
    int8_t qs[32];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 is 34 bytes in GGUF");

struct block_q2_K {
    uint8_t scales[16];  // low nibble: scale, high nibble: min, per 16 values
    uint8_t qs[QK_K / 4];
    half d;
    half dmin;
};
static_assert(sizeof(block_q2_K) == 84, "block_q2_K is 84 bytes in GGUF");

struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];  // sixteen 6-bit scales
    half d;
};
static_assert(sizeof(block_q3_K) == 110, "block_q3_K is 110 bytes in GGUF");

struct block_q4_K {
    half d;
    half dmin;
    uint8_t scales[12];  // eight 6-bit scales and eight 6-bit mins
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K is 144 bytes in GGUF");

struct block_q5_K {
    half d;
    half dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K is 176 bytes in GGUF");

struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    half d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K is 210 bytes in GGUF");

// MXFP4 (OCP microscaling): an E8M0 exponent and 32 E2M1 values, element j in the low nibble of
// qs[j], element j + 16 in the high one
struct block_mxfp4 {
    uint8_t e;
    uint8_t qs[16];
};
static_assert(sizeof(block_mxfp4) == 17, "block_mxfp4 is 17 bytes in GGUF");

// --------------------------------------------------------------------------------------------
// helpers

// bf16 is the high half of an f32; read as raw bits because not every Metal version (nor the
// emulator) has a bfloat type.
inline float bf16_to_f32(ushort h) {
    return as_type<float>(uint(h) << 16);
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block (ggml's
// get_scale_min_k4): j < 4 keep both in the low 6 bits of bytes j and j + 4; j >= 4 split them
// into a nibble of bytes 8..11 and the top two bits of bytes 0..7.
inline void scale_min_k4(device const uint8_t *s, short j, thread float &sc, thread float &mn) {
    if (j < 4) {
        sc = float(s[j] & 63);
        mn = float(s[j + 4] & 63);
    } else {
        sc = float((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        mn = float((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// 16 floats of an f32 row (activations), zero past n. The vector path needs a 16-byte aligned
// row, which a row of a multiple of 4 floats in a 16-byte aligned buffer is.
inline void load16_f32(device const float *p, uint k, uint n, thread float4 *v) {
    if (k + 16 <= n && (n & 3) == 0) {
        device const float4 *p4 = (device const float4 *)(p + k);
        for (short i = 0; i < 4; ++i) {
            v[i] = p4[i];
        }
    } else {
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = k + i < n ? p[k + i] : 0.0f;
        }
    }
}

// --------------------------------------------------------------------------------------------
// plain float types

struct type_f32 {
    enum { QK = 1 };
    static uint row_bytes(uint K) { return K * 4; }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        load16_f32((device const float *)row, k, K, v);
    }
};

struct type_f16 {
    enum { QK = 1 };
    static uint row_bytes(uint K) { return K * 2; }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const half *p = (device const half *)row;
        if (k + 16 <= K && (K & 3) == 0) {
            device const half4 *p4 = (device const half4 *)(p + k);
            for (short i = 0; i < 4; ++i) {
                v[i] = float4(p4[i]);
            }
        } else {
            for (short i = 0; i < 16; ++i) {
                v[i / 4][i % 4] = k + i < K ? float(p[k + i]) : 0.0f;
            }
        }
    }
};

struct type_bf16 {
    enum { QK = 1 };
    static uint row_bytes(uint K) { return K * 2; }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const ushort *p = (device const ushort *)row;
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = k + i < K ? bf16_to_f32(p[k + i]) : 0.0f;
        }
    }
};

// --------------------------------------------------------------------------------------------
// 32-value block types

struct type_q4_0 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q4_0); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q4_0 *b = (device const block_q4_0 *)row + k / QK;
        const short shift = (k % QK) ? 4 : 0;
        const float d = b->d;
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = d * (float((b->qs[i] >> shift) & 0x0F) - 8.0f);
        }
    }
};

struct type_q4_1 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q4_1); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q4_1 *b = (device const block_q4_1 *)row + k / QK;
        const short shift = (k % QK) ? 4 : 0;
        const float d = b->d;
        const float m = b->m;
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = d * float((b->qs[i] >> shift) & 0x0F) + m;
        }
    }
};

inline uint q5_high_bits(device const uint8_t *qh) {
    return uint(qh[0]) | (uint(qh[1]) << 8) | (uint(qh[2]) << 16) | (uint(qh[3]) << 24);
}

struct type_q5_0 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q5_0); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q5_0 *b = (device const block_q5_0 *)row + k / QK;
        const short hi = (k % QK) ? 16 : 0;  // value index of the chunk's first value
        const uint qh = q5_high_bits(b->qh);
        const float d = b->d;
        for (short i = 0; i < 16; ++i) {
            const uint q = ((b->qs[i] >> (hi ? 4 : 0)) & 0x0F) | (((qh >> (i + hi)) & 1) << 4);
            v[i / 4][i % 4] = d * (float(q) - 16.0f);
        }
    }
};

struct type_q5_1 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q5_1); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q5_1 *b = (device const block_q5_1 *)row + k / QK;
        const short hi = (k % QK) ? 16 : 0;
        const uint qh = q5_high_bits(b->qh);
        const float d = b->d;
        const float m = b->m;
        for (short i = 0; i < 16; ++i) {
            const uint q = ((b->qs[i] >> (hi ? 4 : 0)) & 0x0F) | (((qh >> (i + hi)) & 1) << 4);
            v[i / 4][i % 4] = d * float(q) + m;
        }
    }
};

struct type_q8_0 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q8_0); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q8_0 *b = (device const block_q8_0 *)row + k / QK;
        device const int8_t *q = b->qs + (k % QK);
        const float d = b->d;
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = d * float(q[i]);
        }
    }
};

// 2^(e - 128): ggml's GGML_E8M0_TO_FP32_HALF (e < 2 are the subnormals 2^-128 and 2^-127)
inline float e8m0_half(uint e) {
    return as_type<float>(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

// ggml's doubled E2M1 level of a nibble (kvalues_mxfp4): the magnitudes 0, 1, 2, 3, 4, 6, 8, 12
// are the nibbles of one word, indexed by the low three bits; bit 3 is the sign
inline float mxfp4_level(uint n) {
    const float m = float((0xC8643210u >> (4 * (n & 7))) & 0x0F);
    return (n & 8) ? -m : m;
}

struct type_mxfp4 {
    enum { QK = 32 };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_mxfp4); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_mxfp4 *b = (device const block_mxfp4 *)row + k / QK;
        const short shift = (k % QK) ? 4 : 0;
        const float d = e8m0_half(b->e);
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = d * mxfp4_level((b->qs[i] >> shift) & 0x0F);
        }
    }
};

// --------------------------------------------------------------------------------------------
// 256-value K-quant types; `il` = chunk of 16 values within the block (0..15)

struct type_q2_K {
    enum { QK = QK_K };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q2_K); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q2_K *b = (device const block_q2_K *)row + k / QK;
        const short il = (k % QK) / 16;
        // chunk il = half h (128 values), shift group j (2 bits each), 16-byte run s
        const short h = il / 8, j = (il % 8) / 2, s = il % 2;
        device const uint8_t *q = b->qs + 32 * h + 16 * s;
        const uint8_t sc = b->scales[il];
        const float dl = float(b->d) * float(sc & 0x0F);
        const float ml = float(b->dmin) * float(sc >> 4);
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = dl * float((q[i] >> (2 * j)) & 3) - ml;
        }
    }
};

struct type_q3_K {
    enum { QK = QK_K };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q3_K); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q3_K *b = (device const block_q3_K *)row + k / QK;
        const short il = (k % QK) / 16;
        const short h = il / 8, j = (il % 8) / 2, s = il % 2;
        // scale il: low nibble from bytes 0..7 (il < 8) or their high nibble (il >= 8), top two
        // bits from bytes 8..11
        const uint8_t lo = il < 8 ? (b->scales[il] & 0x0F) : (b->scales[il - 8] >> 4);
        const uint8_t top = (b->scales[8 + il % 4] >> (2 * (il / 4))) & 3;
        const float dl = float(b->d) * (float(lo | (top << 4)) - 32.0f);
        device const uint8_t *q = b->qs + 32 * h + 16 * s;
        device const uint8_t *hm = b->hmask + 16 * s;
        const uint8_t mask = uint8_t(1 << (4 * h + j));
        for (short i = 0; i < 16; ++i) {
            const float qv = float((q[i] >> (2 * j)) & 3) - ((hm[i] & mask) ? 0.0f : 4.0f);
            v[i / 4][i % 4] = dl * qv;
        }
    }
};

struct type_q4_K {
    enum { QK = QK_K };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q4_K); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q4_K *b = (device const block_q4_K *)row + k / QK;
        const short il = (k % QK) / 16;
        const short sb = il / 2;  // sub-block of 32 values with its own scale and min
        float sc, mn;
        scale_min_k4(b->scales, sb, sc, mn);
        const float d = float(b->d) * sc;
        const float m = float(b->dmin) * mn;
        device const uint8_t *q = b->qs + 32 * (sb / 2) + 16 * (il % 2);
        const short shift = (sb % 2) ? 4 : 0;
        for (short i = 0; i < 16; ++i) {
            v[i / 4][i % 4] = d * float((q[i] >> shift) & 0x0F) - m;
        }
    }
};

struct type_q5_K {
    enum { QK = QK_K };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q5_K); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q5_K *b = (device const block_q5_K *)row + k / QK;
        const short il = (k % QK) / 16;
        const short sb = il / 2;
        float sc, mn;
        scale_min_k4(b->scales, sb, sc, mn);
        const float d = float(b->d) * sc;
        const float m = float(b->dmin) * mn;
        device const uint8_t *q = b->qs + 32 * (sb / 2) + 16 * (il % 2);
        device const uint8_t *qh = b->qh + 16 * (il % 2);
        const short shift = (sb % 2) ? 4 : 0;
        for (short i = 0; i < 16; ++i) {
            const uint qv = ((q[i] >> shift) & 0x0F) | (((qh[i] >> sb) & 1) << 4);
            v[i / 4][i % 4] = d * float(qv) - m;
        }
    }
};

struct type_q6_K {
    enum { QK = QK_K };
    static uint row_bytes(uint K) { return K / QK * sizeof(block_q6_K); }
    static void load16(device const char *row, uint k, uint K, thread float4 *v) {
        device const block_q6_K *b = (device const block_q6_K *)row + k / QK;
        const short il = (k % QK) / 16;
        // chunk il = half h, quarter j of that half, 16-value run s; its scale is scales[il]
        const short h = il / 8, j = (il % 8) / 2, s = il % 2;
        device const uint8_t *ql = b->ql + 64 * h + 32 * (j % 2) + 16 * s;
        device const uint8_t *qh = b->qh + 32 * h + 16 * s;
        const short shift = j < 2 ? 0 : 4;
        const float d = float(b->d) * float(b->scales[il]);
        for (short i = 0; i < 16; ++i) {
            const int q = int(((ql[i] >> shift) & 0x0F) | (((qh[i] >> (2 * j)) & 3) << 4)) - 32;
            v[i / 4][i % 4] = d * float(q);
        }
    }
};
