// Gated DeltaNet ops (Qwen3.5; backends/base.py's slice_cols, ssm_conv, gated_delta, with their
// NumPy meaning in backends/reference.py). The state buffers hold the slots (sequences) one after
// another; a run of one sequence uses slot step.slot, and in rows mode (kernel_*_rows_f32) row t
// is one token of the sequence in slot rows[t].x, as rwkv.metal's state ops.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

// ssm_conv: a thread keeps the K-1 previous inputs of its channel in registers (K <= CONV_MAX+1)
#define CONV_MAX 8
// gated_delta: a thread keeps one value row of its head's S x S state (S key values) in
// registers, S <= GD_MAX; a head's rows are split over ceil(S / GD_TG) threadgroups. The lowering
// in backends/metal/delta.py uses the same constants.
#define GD_TG 64
#define GD_MAX 128

// -- slice_cols: one thread per output value -------------------------------------------------

kernel void kernel_slice_cols_f32(constant kargs_slice_cols &args [[buffer(0)]],
                                  device const float *x [[buffer(1)]],
                                  device float *dst [[buffer(2)]],
                                  uint i [[thread_position_in_grid]]) {
    const uint oc = args.out_cols;
    if (i >= args.n_rows * oc) {
        return;
    }
    const uint t = i / oc;
    const uint c = i % oc;
    const uint g = c / args.width;
    dst[i] = x[ulong(t) * args.n_cols + g * args.period + args.start + c % args.width];
}

// -- dot_gate: dst = x * sigmoid(h . w) row by row (kargs_slice_cols: n_cols = x's row length,
// width = h's). One threadgroup per row, the dot product by a threadgroup reduction. ---------

kernel void kernel_dot_gate_f32(constant kargs_slice_cols &args [[buffer(0)]],
                                device const float *x [[buffer(1)]],
                                device const float *h [[buffer(2)]],
                                device const float *w [[buffer(3)]], device float *dst [[buffer(4)]],
                                uint t [[threadgroup_position_in_grid]],
                                ushort tiitg [[thread_index_in_threadgroup]],
                                ushort ntg [[threads_per_threadgroup]],
                                ushort sgitg [[simdgroup_index_in_threadgroup]],
                                ushort tiisg [[thread_index_in_simdgroup]],
                                ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint d = args.n_cols;
    const uint e = args.width;
    float p = 0.0f;
    for (uint i = tiitg; i < e; i += ntg) {
        p += h[ulong(t) * e + i] * w[i];
    }
    p = simd_sum(p);
    if (tiisg == 0) {
        partial[sgitg] = p;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float dot = 0.0f;
    for (ushort i = 0; i < nsg; ++i) {
        dot += partial[i];
    }
    const float gate = 1.0f / (1.0f + exp(-clamp(dot, -88.0f, 88.0f)));
    for (uint i = tiitg; i < d; i += ntg) {
        dst[ulong(t) * d + i] = x[ulong(t) * d + i] * gate;
    }
}

// -- norm_gate: rms_norm(x, w) * silu(z) over each group of a row (kargs_rwkv: group, eps); one
// threadgroup per (row, group) ----------------------------------------------------------------

kernel void kernel_norm_gate_f32(constant kargs_rwkv &args [[buffer(0)]],
                                 device const float *x [[buffer(1)]],
                                 device const float *w [[buffer(2)]],
                                 device const float *z [[buffer(3)]], device float *dst [[buffer(4)]],
                                 uint tgpig [[threadgroup_position_in_grid]],
                                 ushort tiitg [[thread_index_in_threadgroup]],
                                 ushort ntg [[threads_per_threadgroup]],
                                 ushort sgitg [[simdgroup_index_in_threadgroup]],
                                 ushort tiisg [[thread_index_in_simdgroup]],
                                 ushort nsg [[simdgroups_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint g = args.group;
    const ulong base = ulong(tgpig) * g;
    float q = 0.0f;
    for (uint i = tiitg; i < g; i += ntg) {
        q += x[base + i] * x[base + i];
    }
    q = simd_sum(q);
    if (tiisg == 0) {
        partial[sgitg] = q;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (ushort i = 0; i < nsg; ++i) {
        total += partial[i];
    }
    const float inv = 1.0f / sqrt(total / float(g) + args.eps);
    for (uint i = tiitg; i < g; i += ntg) {
        const float zi = z[base + i];
        dst[base + i] = x[base + i] * inv * w[i] * (zi / (1.0f + exp(-clamp(zi, -88.0f, 88.0f))));
    }
}

// -- ssm_conv: one thread per channel walks the rows in order; w is C x K. The state holds
// channel c's K-1 previous inputs at c * (K-1).., the oldest first. --------------------------

template <bool ROWS, bool SILU>
kernel void kernel_ssm_conv(constant kargs_rwkv &args [[buffer(0)]],
                            device const float *x [[buffer(1)]], device const float *w [[buffer(2)]],
                            device float *state [[buffer(3)]], device float *dst [[buffer(4)]],
                            constant kargs_step &step [[buffer(5)]],
                            device const uint2 *rows [[buffer(6)]],
                            uint c [[thread_position_in_grid]]) {
    const uint C = args.n_cols;
    const uint K = args.group;
    if (c >= C) {
        return;
    }
    device const float *wc = w + ulong(c) * K;
    float win[CONV_MAX];  // the K-1 inputs before row t, the oldest first
    for (uint t = 0; t < args.n_rows; ++t) {
        device float *sp = state + (ulong(ROWS ? rows[t].x : step.slot) * C + c) * (K - 1);
        if (ROWS || t == 0) {
            for (uint k = 0; k + 1 < K; ++k) {
                win[k] = sp[k];
            }
        }
        const float xt = x[ulong(t) * C + c];
        float s = 0.0f;
        for (uint k = 0; k + 1 < K; ++k) {
            s += win[k] * wc[k];
        }
        s += xt * wc[K - 1];
        if (SILU) {
            s = s / (1.0f + exp(-clamp(s, -88.0f, 88.0f)));
        }
        dst[ulong(t) * C + c] = s;
        for (uint k = 0; k + 2 < K; ++k) {
            win[k] = win[k + 1];
        }
        win[K - 2] = xt;
        if (ROWS || t + 1 == args.n_rows) {
            for (uint k = 0; k + 1 < K; ++k) {
                sp[k] = win[k];
            }
        }
    }
}

// the _silu variants apply silu to the output
typedef decltype(kernel_ssm_conv<false, false>) ssm_conv_t;
template [[host_name("kernel_ssm_conv_f32")]] kernel ssm_conv_t kernel_ssm_conv<false, false>;
template [[host_name("kernel_ssm_conv_rows_f32")]] kernel ssm_conv_t kernel_ssm_conv<true, false>;
template [[host_name("kernel_ssm_conv_silu_f32")]] kernel ssm_conv_t kernel_ssm_conv<false, true>;
template [[host_name("kernel_ssm_conv_silu_rows_f32")]] kernel ssm_conv_t kernel_ssm_conv<true, true>;

// -- gated_delta: inputs qkv (q | k | v of each row), alpha, beta, dt_bias, a. Grid
// (ceil(S / GD_TG), n_v_heads): thread j of head h keeps s[h, j, :] (value row j over the S
// keys); each row's q and k of the head pass through threadgroup memory, and every thread sums
// their squares itself for the l2 norms (S values: no reduction, no more barriers). The
// recurrence over all rows of a run is one dispatch. ------------------------------------------

inline float softplus_f(float x) {
    return x > 20.0f ? x : log(1.0f + exp(min(x, 20.0f)));  // ggml's op_softplus
}

template <bool ROWS>
kernel void kernel_gated_delta(
    constant kargs_gated_delta &args [[buffer(0)]], device const float *qkv [[buffer(1)]],
    device const float *alpha [[buffer(2)]], device const float *beta [[buffer(3)]],
    device const float *dt_bias [[buffer(4)]], device const float *a [[buffer(5)]],
    device float *state [[buffer(6)]], device float *dst [[buffer(7)]],
    constant kargs_step &step [[buffer(8)]], device const uint2 *rows [[buffer(9)]],
    uint2 tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]]) {
    threadgroup float sh_q[GD_MAX], sh_k[GD_MAX];
    const uint S = args.head_dim;
    const uint hv = args.n_v_heads;
    const uint h = tgpig.y;
    const uint j = tgpig.x * GD_TG + tiitg;
    const bool live = j < S;
    const uint nk = args.n_k_heads * S;   // q's columns, and k's
    const uint rc = 2 * nk + hv * S;      // row length of qkv
    const uint vc = hv * S;               // row length of the output
    const uint q0 = (h % args.n_k_heads) * S;  // value head h reads key head h % Hk
    float s[GD_MAX];
    for (uint t = 0; t < args.n_rows; ++t) {
        device float *sp = state + ulong(ROWS ? rows[t].x : step.slot) * vc * S +
                           (ulong(h) * S + min(j, S - 1)) * S;
        if (live && (ROWS || t == 0)) {
            for (uint i = 0; i < S; ++i) {
                s[i] = sp[i];
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous row's q and k are read
        device const float *row = qkv + ulong(t) * rc;
        for (uint i = tiitg; i < S; i += GD_TG) {
            sh_q[i] = row[q0 + i];
            sh_k[i] = row[nk + q0 + i];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float qq = 0.0f, kk = 0.0f;
        for (uint i = 0; i < S; ++i) {
            qq += sh_q[i] * sh_q[i];
            kk += sh_k[i] * sh_k[i];
        }
        const float qn = args.scale / sqrt(qq + args.eps);
        const float kn = 1.0f / sqrt(kk + args.eps);
        const float decay = exp(softplus_f(alpha[ulong(t) * hv + h] + dt_bias[h]) * a[h]);
        const float b = 1.0f / (1.0f + exp(-clamp(beta[ulong(t) * hv + h], -88.0f, 88.0f)));
        float sk = 0.0f;
        for (uint i = 0; i < S; ++i) {
            s[i] *= decay;
            sk += s[i] * sh_k[i];
        }
        // the update along the normalized k
        const float d = ((live ? row[2 * nk + h * S + j] : 0.0f) - sk * kn) * b * kn;
        float o = 0.0f;
        for (uint i = 0; i < S; ++i) {
            s[i] += sh_k[i] * d;
            o += s[i] * sh_q[i];
        }
        if (live) {
            dst[ulong(t) * vc + h * S + j] = o * qn;
        }
        if (live && (ROWS || t + 1 == args.n_rows)) {
            for (uint i = 0; i < S; ++i) {
                sp[i] = s[i];
            }
        }
    }
}

typedef decltype(kernel_gated_delta<false>) gated_delta_t;
template [[host_name("kernel_gated_delta_f32")]] kernel gated_delta_t kernel_gated_delta<false>;
template [[host_name("kernel_gated_delta_rows_f32")]] kernel gated_delta_t kernel_gated_delta<true>;

// -- gated_delta, chunked (prefill; sequence mode only): the WY form over chunks of GD_C rows,
// as shaders/delta.wgsl's kernel_gated_delta_prep_f32 / _chunks_f32 (whose comment gives the
// math). The scratch holds per value head h the planes U0, W, Q' and O0 = P U0 (n x S each, at
// (h * n + t) * S + column from plane * Hv * n * S), then kf[h * n + t] = |k_t|^-1 e^(G_last -
// G_t) and el[h * n_chunks + c] = e^G_last. The prep runs all chunks at once, grid (n_chunks,
// Hv) of GD_TG threads; the chunks kernel walks them in order, grid (ceil(S / GD_TG), Hv).
#define GD_C 32

kernel void kernel_gated_delta_prep_f32(
    constant kargs_gated_delta &args [[buffer(0)]], device const float *qkv [[buffer(1)]],
    device const float *alpha [[buffer(2)]], device const float *beta [[buffer(3)]],
    device const float *dt_bias [[buffer(4)]], device const float *a [[buffer(5)]],
    device float *sc [[buffer(6)]],
    uint2 tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]]) {
    threadgroup float sh_l[GD_C * GD_C], sh_p[GD_C * GD_C];
    threadgroup float sh_g[GD_C], sh_b[GD_C], sh_kn[GD_C], sh_qn[GD_C];
    const uint S = args.head_dim;
    const uint n = args.n_rows;
    const uint hv = args.n_v_heads;
    const uint h = tgpig.y;
    const uint c = tgpig.x;
    const uint t0 = c * GD_C;
    const uint m = min(uint(GD_C), n - t0);  // rows of this chunk
    const uint nk = args.n_k_heads * S;
    const uint rc = 2 * nk + hv * S;
    const uint q0 = (h % args.n_k_heads) * S;
    const ulong plane = ulong(hv) * n * S;
    for (uint r = tiitg; r < m; r += GD_TG) {
        device const float *row = qkv + ulong(t0 + r) * rc;
        float qq = 0.0f, kk = 0.0f;
        for (uint i = 0; i < S; ++i) {
            qq += row[q0 + i] * row[q0 + i];
            kk += row[nk + q0 + i] * row[nk + q0 + i];
        }
        sh_qn[r] = args.scale / sqrt(qq + args.eps);
        sh_kn[r] = 1.0f / sqrt(kk + args.eps);
        sh_g[r] = softplus_f(alpha[ulong(t0 + r) * hv + h] + dt_bias[h]) * a[h];
        sh_b[r] = 1.0f / (1.0f + exp(-clamp(beta[ulong(t0 + r) * hv + h], -88.0f, 88.0f)));
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tiitg == 0) {  // the running sums G_t
        float acc = 0.0f;
        for (uint r = 0; r < m; ++r) {
            acc += sh_g[r];
            sh_g[r] = acc;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = tiitg; e < GD_C * GD_C; e += GD_TG) {
        const uint t = e / GD_C, r = e % GD_C;
        float l = 0.0f, p = 0.0f;
        if (r <= t && t < m) {
            device const float *rt = qkv + ulong(t0 + t) * rc;
            device const float *rr = qkv + ulong(t0 + r) * rc;
            float kk = 0.0f, qk = 0.0f;
            for (uint i = 0; i < S; ++i) {
                kk += rt[nk + q0 + i] * rr[nk + q0 + i];
                qk += rt[q0 + i] * rr[nk + q0 + i];
            }
            const float dec = exp(sh_g[t] - sh_g[r]);
            l = r < t ? sh_b[t] * dec * kk * sh_kn[t] * sh_kn[r] : 0.0f;
            p = dec * qk * sh_qn[t] * sh_kn[r];
        }
        sh_l[e] = l;
        sh_p[e] = p;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // columns of [V | K]: (I + L) X = diag(b) V | diag(b e^G) K by forward substitution
    for (uint col = tiitg; col < 2 * S; col += GD_TG) {
        const bool is_v = col < S;
        const uint i = is_v ? col : col - S;
        float x[GD_C];
        for (uint t = 0; t < m; ++t) {
            device const float *row = qkv + ulong(t0 + t) * rc;
            float bt = is_v ? sh_b[t] * row[2 * nk + h * S + i]
                            : sh_b[t] * exp(sh_g[t]) * row[nk + q0 + i] * sh_kn[t];
            for (uint r = 0; r < t; ++r) {
                bt -= sh_l[t * GD_C + r] * x[r];
            }
            x[t] = bt;
        }
        for (uint t = 0; t < m; ++t) {
            float p = 0.0f;
            for (uint r = 0; r <= t; ++r) {
                p += sh_p[t * GD_C + r] * x[r];
            }
            const ulong at = (ulong(h) * n + t0 + t) * S + i;
            if (is_v) {
                sc[at] = x[t];              // U0
                sc[3 * plane + at] = p;     // O0 = P U0
            } else {
                sc[plane + at] = x[t];      // W
                sc[2 * plane + at] = exp(sh_g[t]) * qkv[ulong(t0 + t) * rc + q0 + i] * sh_qn[t] - p;
            }
        }
    }
    const float last = sh_g[m - 1];
    for (uint r = tiitg; r < m; r += GD_TG) {
        sc[4 * plane + ulong(h) * n + t0 + r] = sh_kn[r] * exp(last - sh_g[r]);
    }
    if (tiitg == 0) {
        sc[4 * plane + ulong(hv) * n + h * ((n + GD_C - 1) / GD_C) + c] = exp(last);
    }
}

kernel void kernel_gated_delta_chunks_f32(
    constant kargs_gated_delta &args [[buffer(0)]], device const float *qkv [[buffer(1)]],
    device const float *sc [[buffer(2)]], device float *state [[buffer(3)]],
    device float *dst [[buffer(4)]], constant kargs_step &step [[buffer(5)]],
    uint2 tgpig [[threadgroup_position_in_grid]], ushort tiitg [[thread_index_in_threadgroup]]) {
    const uint S = args.head_dim;
    const uint n = args.n_rows;
    const uint hv = args.n_v_heads;
    const uint h = tgpig.y;
    const uint j = tgpig.x * GD_TG + tiitg;
    if (j >= S) {  // no barriers below
        return;
    }
    const uint nk = args.n_k_heads * S;
    const uint rc = 2 * nk + hv * S;
    const uint vc = hv * S;
    const uint q0 = (h % args.n_k_heads) * S;
    const ulong plane = ulong(hv) * n * S;
    const uint nc = (n + GD_C - 1) / GD_C;
    device float *sp = state + ulong(step.slot) * vc * S + (ulong(h) * S + j) * S;
    float s[GD_MAX];
    for (uint i = 0; i < S; ++i) {
        s[i] = sp[i];
    }
    for (uint c = 0; c < nc; ++c) {
        const uint t0 = c * GD_C;
        const uint m = min(uint(GD_C), n - t0);
        float u[GD_C];
        for (uint r = 0; r < m; ++r) {
            const ulong at = (ulong(h) * n + t0 + r) * S;
            float w = 0.0f, o = 0.0f;
            for (uint i = 0; i < S; ++i) {
                w += sc[plane + at + i] * s[i];
                o += sc[2 * plane + at + i] * s[i];
            }
            u[r] = sc[at + j] - w;
            dst[ulong(t0 + r) * vc + h * S + j] = sc[3 * plane + at + j] + o;
        }
        const float el = sc[4 * plane + ulong(hv) * n + h * nc + c];
        for (uint i = 0; i < S; ++i) {
            s[i] *= el;
        }
        for (uint r = 0; r < m; ++r) {
            const float f = sc[4 * plane + ulong(h) * n + t0 + r] * u[r];
            device const float *kr = qkv + ulong(t0 + r) * rc + nk + q0;
            for (uint i = 0; i < S; ++i) {
                s[i] += f * kr[i];
            }
        }
    }
    for (uint i = 0; i < S; ++i) {
        sp[i] = s[i];
    }
}
