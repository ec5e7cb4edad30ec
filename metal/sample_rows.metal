// Sampling for the B rows of a batched decode step, the WebGPU backend's
// shaders/sample_rows.wgsl in MSL (its head says what and how; backends/metal/sample_rows.py
// drives it): kernel_sample_rows_part on a grid (n_parts, B), one chunk of one row per
// threadgroup, applies the row's logit_bias and penalties and keeps the chunk's top_k
// candidates (and, for rows asking for log-probabilities, the chunk's raw maximum, sum of
// exponentials and top raw values); kernel_sample_rows_final on (B), one row per threadgroup,
// keeps the row's top_k, runs its chain (or takes the first largest for a greedy row), writes
// the token and the log-probabilities. Every row's arguments in kargs_sample_row, by row.
//
// A row whose kargs_sample_row.mask is 1 (a grammar's constraint) has an allowed-token bitmask
// of ceil(n_cols / 32) words at masks[r * that ..] (bit c % 32 of word c / 32: column c may be
// chosen); the part kernel gives the other columns key 0 (never a candidate) after the bias and
// the penalties (sample_rows.wgsl says why not -inf).
//
// Output (out, 32-bit words): row r's token at out[r] (-1 for a row the host samples); with
// log-probabilities asked, out[lp_base + r * SR_LPW ..]: the chosen token's (float bits), the
// count n of alternatives, n (id, float bits) pairs, largest first.
#include <metal_stdlib>
using namespace metal;
#include "kargs.h"

#define SR_TG 256  // threads per threadgroup: the sampler dispatches exactly this many
#define SR_NSG (SR_TG / 32)
#define SR_KMAX 64  // the largest top_k (fastllm.sampling.DEVICE_TOP_K)
#define SR_NK 4096  // keys a threadgroup holds: chunk <= 4096, n_parts * SR_KMAX <= 4096
#define SR_LPC 32  // raw candidates a part keeps for the top alternatives (>= 20)
#define SR_LMAX 64  // the longest penalty window (fastllm.sampling.DEVICE_LAST_N)
#define SR_BMAX 64  // the most logit_bias entries of a row (fastllm.sampling.DEVICE_BIAS)
#define SR_LPW 42  // output words of a row's log-probabilities: 2 + 2 * 20
#define SR_NONE 0xFFFFFFFFu  // an empty candidate's column; a host row's token (-1)
#define SR_MASKED (-3.0e38f)  // below every logit but -inf (a finite "no value yet")

// a > b as floats <=> sr_key(a) > sr_key(b) (finite values and -inf; key 0 is no value)
inline uint sr_key(float v) {
    const uint b = as_type<uint>(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

inline float sr_value(uint k) {
    return as_type<float>((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The k-th largest of sk[0..n) (0 when n < k), for every thread (sample.metal's kth_key);
// starts with a barrier, so the caller's stores of sk need none of their own.
inline uint sr_kth_key(threadgroup const uint *sk, uint n, uint k, threadgroup uint *partial,
                       ushort tiitg, ushort sgitg, ushort tiisg) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint prefix = 0;
    for (uint r = 0; r < 16; ++r) {
        const uint s = 30 - 2 * r;
        const uint c1 = prefix | (1u << s);
        const uint c2 = prefix | (2u << s);
        const uint c3 = prefix | (3u << s);
        uint n1 = 0, n2 = 0, n3 = 0;
        for (uint i = tiitg; i < n; i += SR_TG) {
            const uint key = sk[i];
            n1 += key >= c1 ? 1u : 0u;
            n2 += key >= c2 ? 1u : 0u;
            n3 += key >= c3 ? 1u : 0u;
        }
        n1 = simd_sum(n1);
        n2 = simd_sum(n2);
        n3 = simd_sum(n3);
        threadgroup uint *p = partial + (r & 1) * 3 * SR_NSG;
        if (tiisg == 0) {
            p[3 * sgitg] = n1;
            p[3 * sgitg + 1] = n2;
            p[3 * sgitg + 2] = n3;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        uint t1 = 0, t2 = 0, t3 = 0;
        for (short g = 0; g < SR_NSG; ++g) {
            t1 += p[3 * g];
            t2 += p[3 * g + 1];
            t3 += p[3 * g + 2];
        }
        prefix = t3 >= k ? c3 : t2 >= k ? c2 : t1 >= k ? c1 : prefix;
    }
    return prefix;
}

// The largest of sk[0..n), for every thread: k = 1 (greedy rows, top_k 1, one alternative)
// needs one atomic maximum, not sr_kth_key's 16 rounds; starts with a barrier as sr_kth_key.
inline uint sr_max_key(threadgroup const uint *sk, uint n, threadgroup atomic_uint *wmax,
                       ushort tiitg) {
    if (tiitg == 0) {
        atomic_store_explicit(wmax, 0u, memory_order_relaxed);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint m = 0;
    for (uint i = tiitg; i < n; i += SR_TG) {
        m = max(m, sk[i]);
    }
    atomic_fetch_max_explicit(wmax, m, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return atomic_load_explicit(wmax, memory_order_relaxed);
}

// The k-th largest key of sk[0..n) (0 when n < k)
inline uint sr_top_key(threadgroup const uint *sk, uint n, uint k, threadgroup uint *partial,
                       threadgroup atomic_uint *wmax, ushort tiitg, ushort sgitg,
                       ushort tiisg) {
    return k == 1 ? sr_max_key(sk, n, wmax, tiitg)
                  : sr_kth_key(sk, n, k, partial, tiitg, sgitg, tiisg);
}

// The maximum (take_max) or the sum of v over the threadgroup, for every thread
inline float sr_reduce(float v, bool take_max, threadgroup float *red, ushort sgitg,
                       ushort tiisg) {
    v = take_max ? simd_max(v) : simd_sum(v);
    if (tiisg == 0) {
        red[sgitg] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = red[0];
    for (short g = 1; g < SR_NSG; ++g) {
        r = take_max ? max(r, red[g]) : r + red[g];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return r;
}

// Keys at or above th of sk[0..n) (columns c0 + i) into dst[0 .. cap) (the rest empty); key 0
// (a column a mask leaves out) never. nkept is 0 before the call.
inline void sr_keep_above(threadgroup const uint *sk, uint n, uint th, uint c0,
                          device uint2 *dst, uint cap, threadgroup atomic_uint *nkept,
                          ushort tiitg) {
    const uint th1 = max(th, 1u);
    for (uint i = tiitg; i < n; i += SR_TG) {
        if (sk[i] >= th1) {
            const uint s = atomic_fetch_add_explicit(nkept, 1u, memory_order_relaxed);
            if (s < cap) {
                dst[s] = uint2(sk[i], c0 + i);
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint m = min(atomic_load_explicit(nkept, memory_order_relaxed), cap);
    for (uint s = m + tiitg; s < cap; s += SR_TG) {
        dst[s] = uint2(0u, SR_NONE);
    }
}

// Grid (n_parts, B); cands: SR_KMAX (key, column) slots a part, lpc SR_LPC, stats one (m, s).
kernel void kernel_sample_rows_part(constant kargs_sample_rows &hdr [[buffer(0)]],
                                    device const float *x [[buffer(1)]],
                                    device const kargs_sample_row *rows [[buffer(2)]],
                                    device const uint *windows [[buffer(3)]],
                                    device const uint2 *bias [[buffer(4)]],
                                    device uint2 *cands [[buffer(5)]],
                                    device uint2 *lpc [[buffer(6)]],
                                    device float2 *stats [[buffer(7)]],
                                    device const uint *masks [[buffer(8)]],
                                    uint2 tgpig [[threadgroup_position_in_grid]],
                                    ushort tiitg [[thread_index_in_threadgroup]],
                                    ushort sgitg [[simdgroup_index_in_threadgroup]],
                                    ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup uint sk[SR_NK];
    threadgroup uint partial[2 * 3 * SR_NSG];
    threadgroup float red[SR_NSG];
    threadgroup atomic_uint nkept;
    threadgroup atomic_uint wmax;
    threadgroup uint wid[SR_LMAX];
    threadgroup uint bid[SR_BMAX];
    threadgroup float bval[SR_BMAX];
    const uint t = tiitg;
    const uint part = tgpig.x;
    const uint r = tgpig.y;
    device const kargs_sample_row &a = rows[r];
    if (a.mode == 0) {
        return;  // the host samples this row (the whole threadgroup leaves)
    }
    const uint k = a.mode == 1 ? 1u : a.top_k;
    const uint c0 = part * hdr.chunk;
    const uint n = min(hdr.chunk, hdr.n_cols - min(c0, hdr.n_cols));
    device const float *xr = x + ulong(r) * hdr.n_cols + c0;
    for (uint i = t; i < n; i += SR_TG) {
        sk[i] = as_type<uint>(xr[i]);
    }
    if (t < a.n_window) {
        wid[t] = windows[r * SR_LMAX + t];
    }
    if (t < a.n_bias) {
        const uint2 b = bias[r * SR_BMAX + t];
        bid[t] = b.x;
        bval[t] = as_type<float>(b.y);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // logit_bias: the first entry of an id in this chunk adds that id's biases in their order
    // (one thread per id: no two threads write one value)
    if (t < a.n_bias && bid[t] >= c0 && bid[t] - c0 < n) {
        const uint id = bid[t];
        bool first = true;
        for (uint j = 0; j < t; ++j) {
            first = first && bid[j] != id;
        }
        if (first) {
            float v = as_type<float>(sk[id - c0]);
            for (uint j = t; j < a.n_bias; ++j) {
                if (bid[j] == id) {
                    v += bval[j];
                }
            }
            sk[id - c0] = as_type<uint>(v);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // the penalties (sampling.apply_penalties): the first occurrence of an id in the window
    // counts the id's occurrences and penalizes it once
    if (t < a.n_window && wid[t] >= c0 && wid[t] - c0 < n) {
        const uint id = wid[t];
        bool first = true;
        uint count = 0;
        for (uint j = 0; j < a.n_window; ++j) {
            first = first && (j >= t || wid[j] != id);
            count += wid[j] == id ? 1u : 0u;
        }
        if (first) {
            float v = as_type<float>(sk[id - c0]);
            v = v <= 0.0f ? v * a.repeat_penalty : v / a.repeat_penalty;
            v -= float(count) * a.frequency_penalty + a.presence_penalty;
            sk[id - c0] = as_type<uint>(v);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (a.mask != 0) {
        // the constraint: a column the row's bitmask leaves out gets key 0, which no threshold
        // counts and sr_keep_above never keeps
        device const uint *mr = masks + ulong(r) * ((hdr.n_cols + 31) / 32);
        for (uint i = t; i < n; i += SR_TG) {
            const uint c = c0 + i;
            const bool allowed = (mr[c / 32] & (1u << (c % 32))) != 0;
            sk[i] = allowed ? sr_key(as_type<float>(sk[i])) : 0u;
        }
    } else {
        for (uint i = t; i < n; i += SR_TG) {
            sk[i] = sr_key(as_type<float>(sk[i]));
        }
    }
    if (t == 0) {
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    const uint th = sr_top_key(sk, n, k, partial, &wmax, tiitg, sgitg, tiisg);
    const uint pi = r * hdr.n_parts + part;
    sr_keep_above(sk, n, th, c0, cands + pi * SR_KMAX, SR_KMAX, &nkept, tiitg);
    if (a.logprobs < 0) {
        return;
    }
    // the raw distribution's pieces: the chunk's maximum and sum of exponentials (a chunk of
    // -inf alone gives m = SR_MASKED and s = 0), and its top raw values
    float m = SR_MASKED;
    for (uint i = t; i < n; i += SR_TG) {
        m = max(m, xr[i]);
    }
    m = sr_reduce(m, true, red, sgitg, tiisg);
    float s = 0.0f;
    for (uint i = t; i < n; i += SR_TG) {
        s += exp(xr[i] - m);
    }
    s = sr_reduce(s, false, red, sgitg, tiisg);
    if (t == 0) {
        stats[pi] = float2(m, s);
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    if (a.logprobs > 0) {
        for (uint i = t; i < n; i += SR_TG) {
            sk[i] = sr_key(xr[i]);
        }
        const uint th_raw =
            sr_top_key(sk, n, uint(a.logprobs), partial, &wmax, tiitg, sgitg, tiisg);
        sr_keep_above(sk, n, th_raw, c0, lpc + pi * SR_LPC, SR_LPC, &nkept, tiitg);
    }
}

// The candidates of src[0..n) at or above th (and not empty) into ck/ci, ranked into by_value
// (largest first, equal values by column: the host's stable sort); returns how many. nkept is
// 0 before the call.
inline uint sr_rank_above(device const uint2 *src, uint n, uint th, threadgroup uint *ck,
                          threadgroup uint *ci, threadgroup uint *by_value,
                          threadgroup atomic_uint *nkept, ushort tiitg) {
    const uint t = tiitg;
    for (uint i = t; i < n; i += SR_TG) {
        const uint2 c = src[i];
        if (c.x >= th && c.y != SR_NONE) {
            const uint s = atomic_fetch_add_explicit(nkept, 1u, memory_order_relaxed);
            if (s < SR_KMAX) {
                ck[s] = c.x;
                ci[s] = c.y;
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint m = min(atomic_load_explicit(nkept, memory_order_relaxed), uint(SR_KMAX));
    if (t < m) {
        uint q = 0;
        for (uint j = 0; j < m; ++j) {
            q += (ck[j] > ck[t] || (ck[j] == ck[t] && ci[j] < ci[t])) ? 1u : 0u;
        }
        by_value[q] = t;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return m;
}

// Grid (B): row r's chain over its parts' candidates, the draw, the log-probabilities.
kernel void kernel_sample_rows_final(constant kargs_sample_rows &hdr [[buffer(0)]],
                                     device const float *x [[buffer(1)]],
                                     device const kargs_sample_row *rows [[buffer(2)]],
                                     device const uint2 *cands [[buffer(3)]],
                                     device const uint2 *lpc [[buffer(4)]],
                                     device const float2 *stats [[buffer(5)]],
                                     device uint *out [[buffer(6)]],
                                     uint tgpig [[threadgroup_position_in_grid]],
                                     ushort tiitg [[thread_index_in_threadgroup]],
                                     ushort sgitg [[simdgroup_index_in_threadgroup]],
                                     ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup uint sk[SR_NK];
    threadgroup uint partial[2 * 3 * SR_NSG];
    threadgroup float red[SR_NSG];
    threadgroup atomic_uint nkept;
    threadgroup atomic_uint wmax;
    threadgroup uint ck[SR_KMAX];  // kept candidates, in no order
    threadgroup uint ci[SR_KMAX];
    threadgroup uint by_value[SR_KMAX];  // their slots, largest first (ties: column)
    threadgroup uint by_col[SR_KMAX];  // the survivors' slots by column
    threadgroup float tw[SR_KMAX];  // the survivors' weights by column
    threadgroup float ev[SR_KMAX];  // exp(v - largest v) of the kept, largest first
    threadgroup uint survivors;
    threadgroup uint chosen;
    const uint t = tiitg;
    const uint r = tgpig;
    device const kargs_sample_row &a = rows[r];
    if (a.mode == 0) {
        if (t == 0) {
            out[r] = SR_NONE;
        }
        return;
    }
    const uint k = a.mode == 1 ? 1u : a.top_k;
    const uint n = hdr.n_parts * SR_KMAX;
    device const uint2 *rc = cands + ulong(r) * n;
    for (uint i = t; i < n; i += SR_TG) {
        sk[i] = rc[i].x;
    }
    if (t == 0) {
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    const uint th = sr_top_key(sk, n, k, partial, &wmax, tiitg, sgitg, tiisg);
    const uint m = sr_rank_above(rc, n, th, ck, ci, by_value, &nkept, tiitg);
    if (a.mode == 1) {
        if (t == 0) {  // greedy: the first largest
            chosen = ci[by_value[0]];
        }
    } else {
        const float v0 = sr_value(ck[by_value[0]]);
        if (t < m) {
            ev[t] = exp(sr_value(ck[by_value[t]]) - v0);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (t == 0) {
            // top_p: the fewest largest whose probabilities reach top_p; min_p: of those, the
            // ones with probability >= min_p times the largest, i.e. exp(v - v0) >= min_p
            uint keep = m;
            if (a.top_p < 1.0f) {
                float total = 0.0f;
                for (uint j = 0; j < m; ++j) {
                    total += ev[j];
                }
                float acc = 0.0f;
                for (uint j = 0; j < m; ++j) {
                    acc += ev[j];
                    if (acc / total >= a.top_p) {
                        keep = j + 1;
                        break;
                    }
                }
            }
            if (a.min_p > 0.0f) {
                uint j = 1;
                while (j < keep && ev[j] >= a.min_p) {
                    ++j;
                }
                keep = j;
            }
            survivors = keep;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const uint keep = survivors;
        // the draw walks the survivors by column, as the host's cumulative sum over the row
        if (t < keep) {
            const uint c = ci[by_value[t]];
            uint q = 0;
            for (uint j = 0; j < keep; ++j) {
                q += ci[by_value[j]] < c ? 1u : 0u;
            }
            by_col[q] = by_value[t];
            tw[q] = exp((sr_value(ck[by_value[t]]) - v0) / a.temperature);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (t == 0) {
            float total = 0.0f;
            for (uint j = 0; j < keep; ++j) {
                total += tw[j];
            }
            // the first survivor whose share of the cumulative sum passes u
            const float u = a.u * total;
            uint pick = keep - 1;
            float acc = 0.0f;
            for (uint j = 0; j < keep; ++j) {
                acc += tw[j];
                if (acc > u) {
                    pick = j;
                    break;
                }
            }
            chosen = ci[by_col[pick]];
        }
    }
    if (t == 0) {
        out[r] = chosen;
    }
    if (a.logprobs < 0) {
        return;
    }
    // log-probabilities under the raw logits: log-sum-exp from the parts' pieces
    device const float2 *rs = stats + ulong(r) * hdr.n_parts;
    const float pm = t < hdr.n_parts ? rs[t].x : SR_MASKED;
    const float big = sr_reduce(pm, true, red, sgitg, tiisg);
    const float ps = t < hdr.n_parts ? rs[t].y * exp(rs[t].x - big) : 0.0f;
    const float lse = big + log(sr_reduce(ps, false, red, sgitg, tiisg));
    device uint *o = out + hdr.lp_base + r * SR_LPW;
    const uint n_top = uint(a.logprobs);
    if (t == 0) {
        o[0] = as_type<uint>(x[ulong(r) * hdr.n_cols + chosen] - lse);
        o[1] = n_top;
        atomic_store_explicit(&nkept, 0u, memory_order_relaxed);
    }
    if (n_top > 0) {
        const uint nl = hdr.n_parts * SR_LPC;
        device const uint2 *rl = lpc + ulong(r) * nl;
        for (uint i = t; i < nl; i += SR_TG) {
            sk[i] = rl[i].x;
        }
        const uint th_raw = sr_top_key(sk, nl, n_top, partial, &wmax, tiitg, sgitg, tiisg);
        const uint ml = sr_rank_above(rl, nl, th_raw, ck, ci, by_value, &nkept, tiitg);
        if (t < min(n_top, ml)) {
            const uint j = by_value[t];
            o[2 + 2 * t] = ci[j];
            o[3 + 2 * t] = as_type<uint>(sr_value(ck[j]) - lse);
        }
    }
}
