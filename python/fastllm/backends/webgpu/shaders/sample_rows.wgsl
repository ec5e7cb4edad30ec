// Sampling for the B rows of a batched decode step on the device, each row with its own chain
// (fastllm.sampling.sample_row, the host reference): logit_bias, the penalties over the row's
// window (repeat as CTRL, frequency times the id's count, presence), top_k, top_p, min_p,
// temperature, then a draw with the row's uniform number; greedy rows take the first largest
// logit after bias and penalties. Rows that ask also get the chosen token's log-probability and
// the top alternatives of the raw logits' log-softmax. All rows in two dispatches:
// kernel_sample_rows_part on a grid (n_parts, B): one chunk of one row per workgroup, which
// applies the bias and the penalties to its chunk and keeps its top_k candidates (and, for rows
// asking for log-probabilities, the chunk's raw maximum, its sum of exponentials and its top
// raw values); kernel_sample_rows_final on (B): one row per workgroup, which keeps the row's
// top_k of its parts' candidates, runs the chain and writes the token (and the log-
// probabilities). backends/webgpu/sample_rows.py drives it.
//
// The k-th largest of n values is found as in sample.wgsl: two bits a round on order-preserving
// u32 keys, 16 rounds; every value equal to the k-th is kept (up to KMAX), as the host's top_k.
//
// A row with an allowed-token bitmask (kargs_sample_row.mask = 1: a grammar's constraint) has
// ceil(n_cols / 32) words at masks[r * that ..], bit c % 32 of word c / 32 set where column c may
// be chosen; the part kernel gives the other columns key 0 (no value: never a candidate) after
// the bias and the penalties, before its top_k, so constrained and free rows share one batch
// (sampling.sample_row sets them to -inf, which gives them no share of the draw either).
//
// Output (out, u32 words): row r's token at out[r] (as i32; -1 for a row the host samples);
// with log-probabilities asked, out[lp_base + r * LPW ..] holds the chosen token's (f32 bits),
// the count n of alternatives, then n (id, f32 bits) pairs, largest first.

const WG: u32 = 256u;
const CHUNK: u32 = 2048u;  // the most columns of a part workgroup (kargs chunk <= CHUNK)
const NPART: u32 = 64u;  // the most parts of a row
const KMAX: u32 = 64u;  // the largest top_k (fastllm.sampling.DEVICE_TOP_K)
const LPC: u32 = 32u;  // raw candidates a part keeps for the top alternatives (>= 20)
const NK: u32 = max(CHUNK, NPART * KMAX);
const LMAX: u32 = 64u;  // the longest penalty window (fastllm.sampling.DEVICE_LAST_N)
const BMAX: u32 = 64u;  // the most logit_bias entries of a row (fastllm.sampling.DEVICE_BIAS)
const LPW: u32 = 42u;  // output words of a row's log-probabilities: 2 + 2 * 20
const NONE: u32 = 0xFFFFFFFFu;  // an empty candidate's column; a host row's token (-1)

@group(0) @binding(0) var<uniform> hdr: kargs_sample_rows;
@group(0) @binding(1) var<storage, read> x: array<f32>;  // B rows of n_cols logits
@group(0) @binding(2) var<storage, read> rows: array<kargs_sample_row>;
@group(0) @binding(3) var<storage, read> windows: array<u32>;  // LMAX ids a row
@group(0) @binding(4) var<storage, read> bias: array<vec2<u32>>;  // BMAX (id, f32 bits) a row
// (key, column): KMAX a part of a row, at (r * n_parts + part) * KMAX
@group(0) @binding(5) var<storage, read_write> cands: array<vec2<u32>>;
// raw (key, column): LPC a part of a row, at (r * n_parts + part) * LPC
@group(0) @binding(6) var<storage, read_write> lpc: array<vec2<u32>>;
// a part's raw maximum m and sum of exp(x - m), at r * n_parts + part
@group(0) @binding(7) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> out: array<u32>;
@group(0) @binding(9) var<storage, read> masks: array<u32>;  // allowed-token bits, by row

var<workgroup> sk: array<u32, NK>;
var<workgroup> nkept: atomic<u32>;
var<workgroup> wmax: atomic<u32>;
var<workgroup> wid: array<u32, LMAX>;
var<workgroup> bid: array<u32, BMAX>;
var<workgroup> bval: array<f32, BMAX>;
var<workgroup> ck: array<u32, KMAX>;  // kept candidates, in no order
var<workgroup> ci: array<u32, KMAX>;
var<workgroup> by_value: array<u32, KMAX>;  // their slots, largest first (ties: column)
var<workgroup> by_col: array<u32, KMAX>;  // the survivors' slots by column
var<workgroup> tw: array<f32, KMAX>;  // the survivors' weights by column
var<workgroup> ev: array<f32, KMAX>;  // exp(v - largest v) of the kept, largest first
var<workgroup> survivors: u32;
var<workgroup> chosen: u32;
var<workgroup> uni: vec4<u32>;

// a > b as floats <=> key(a) > key(b) as u32 (finite values and -inf; key 0 is no value)
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7FFFFFFFu, (k & 0x80000000u) != 0u));
}

// The k-th largest of sk[0..n) (0 when n < k), for every thread (sample.wgsl's kth_key).
fn kth_key(t: u32, n: u32, k: u32, ids: Ids) -> u32 {
    workgroupBarrier();  // the caller's stores of sk
    var prefix = 0u;
    for (var r = 0u; r < 16u; r++) {
        let s = 30u - 2u * r;
        let c1 = prefix | (1u << s);
        let c2 = prefix | (2u << s);
        let c3 = prefix | (3u << s);
        var c = vec4<f32>(0.0);
        for (var i = t; i < n; i += WG) {
            let key = sk[i];
            c += vec4<f32>(select(0.0, 1.0, key >= c1), select(0.0, 1.0, key >= c2),
                           select(0.0, 1.0, key >= c3), 0.0);
        }
        let total = group_sum4(c, WG, ids);
        let kf = f32(k);
        if (total.z >= kf) {
            prefix = c3;
        } else if (total.y >= kf) {
            prefix = c2;
        } else if (total.x >= kf) {
            prefix = c1;
        }
    }
    return prefix;
}

// The largest of sk[0..n), for every thread: k = 1 (greedy rows, top_k 1, one alternative)
// needs one atomic maximum, not kth_key's 16 rounds (H100, both dispatches for 32 greedy rows
// of 128,256 logits: 139 us with the rounds, 37 us with this).
fn max_key(t: u32, n: u32) -> u32 {
    if (t == 0u) {
        atomicStore(&wmax, 0u);
    }
    workgroupBarrier();  // the caller's stores of sk, and the reset
    var m = 0u;
    for (var i = t; i < n; i += WG) {
        m = max(m, sk[i]);
    }
    atomicMax(&wmax, m);
    workgroupBarrier();
    return atomicLoad(&wmax);
}

// The k-th largest key of sk[0..n) (0 when n < k)
fn top_key(t: u32, n: u32, k: u32, ids: Ids) -> u32 {
    if (k == 1u) {
        return max_key(t, n);
    }
    return kth_key(t, n, k, ids);
}

// Row r's (mode, candidates kept k, logprobs + 1 (0: none), 0), uniform across the workgroup:
// the branches around barriers depend on them, and naga takes the row index (a member of the
// Ids argument) for a non-uniform value.
fn row_info(t: u32, r: u32) -> vec4<u32> {
    if (t == 0u) {
        let a = rows[r];
        uni = vec4<u32>(a.mode, select(a.top_k, 1u, a.mode == 1u), u32(a.logprobs + 1), 0u);
    }
    return workgroupUniformLoad(&uni);
}

// Keys at or above th of sk[0..n) (columns c0 + i) into dst[base ..] (cap slots; the rest
// empty); key 0 (a column a mask leaves out) never. nkept is 0 before the call.
fn keep_above(t: u32, n: u32, th: u32, c0: u32, base: u32, cap: u32, raw: bool) {
    let th1 = max(th, 1u);
    for (var i = t; i < n; i += WG) {
        if (sk[i] >= th1) {
            let s = atomicAdd(&nkept, 1u);
            if (s < cap) {
                if (raw) {
                    lpc[base + s] = vec2<u32>(sk[i], c0 + i);
                } else {
                    cands[base + s] = vec2<u32>(sk[i], c0 + i);
                }
            }
        }
    }
    workgroupBarrier();
    for (var s = min(atomicLoad(&nkept), cap) + t; s < cap; s += WG) {
        if (raw) {
            lpc[base + s] = vec2<u32>(0u, NONE);
        } else {
            cands[base + s] = vec2<u32>(0u, NONE);
        }
    }
}

@compute @workgroup_size(WG)
fn kernel_sample_rows_part(ids: Ids) {
    let t = ids.lid;
    let part = ids.wg.x;
    let r = ids.wg.y;
    let info = row_info(t, r);
    if (info.x == 0u) {
        return;
    }
    let a = rows[r];
    let c0 = part * hdr.chunk;
    let n = min(hdr.chunk, hdr.n_cols - min(c0, hdr.n_cols));
    let row0 = r * hdr.n_cols + c0;
    for (var i = t; i < n; i += WG) {
        sk[i] = bitcast<u32>(x[row0 + i]);
    }
    if (t < a.n_window) {
        wid[t] = windows[r * LMAX + t];
    }
    if (t < a.n_bias) {
        let b = bias[r * BMAX + t];
        bid[t] = b.x;
        bval[t] = bitcast<f32>(b.y);
    }
    workgroupBarrier();
    // logit_bias: the first entry of an id in this chunk adds that id's biases in their order
    // (one thread per id: no two threads write one value)
    if (t < a.n_bias && bid[t] >= c0 && bid[t] - c0 < n) {
        let id = bid[t];
        var first = true;
        for (var j = 0u; j < t; j++) {
            first = first && bid[j] != id;
        }
        if (first) {
            var v = bitcast<f32>(sk[id - c0]);
            for (var j = t; j < a.n_bias; j++) {
                if (bid[j] == id) {
                    v += bval[j];
                }
            }
            sk[id - c0] = bitcast<u32>(v);
        }
    }
    workgroupBarrier();
    // the penalties (sampling.apply_penalties): the first occurrence of an id in the window
    // counts the id's occurrences and penalizes it once
    if (t < a.n_window && wid[t] >= c0 && wid[t] - c0 < n) {
        let id = wid[t];
        var first = true;
        var count = 0u;
        for (var j = 0u; j < a.n_window; j++) {
            first = first && (j >= t || wid[j] != id);
            count += select(0u, 1u, wid[j] == id);
        }
        if (first) {
            var v = bitcast<f32>(sk[id - c0]);
            v = select(v / a.repeat_penalty, v * a.repeat_penalty, v <= 0.0);
            v -= f32(count) * a.frequency_penalty + a.presence_penalty;
            sk[id - c0] = bitcast<u32>(v);
        }
    }
    workgroupBarrier();
    if (a.mask != 0u) {
        // the constraint: a column the row's bitmask leaves out gets key 0, which no threshold
        // counts and keep_above never keeps (as -inf it could crowd allowed columns out of a
        // chunk's KMAX slots where fewer than top_k are allowed)
        let mb = r * ((hdr.n_cols + 31u) / 32u);
        for (var i = t; i < n; i += WG) {
            let c = c0 + i;
            let allowed = (masks[mb + c / 32u] & (1u << (c % 32u))) != 0u;
            sk[i] = select(0u, key(bitcast<f32>(sk[i])), allowed);
        }
    } else {
        for (var i = t; i < n; i += WG) {
            sk[i] = key(bitcast<f32>(sk[i]));
        }
    }
    if (t == 0u) {
        atomicStore(&nkept, 0u);
    }
    let th = top_key(t, n, info.y, ids);
    let pi = r * hdr.n_parts + part;
    keep_above(t, n, th, c0, pi * KMAX, KMAX, false);
    if (info.z == 0u) {
        return;
    }
    // the raw distribution's pieces: the chunk's maximum and sum of exponentials (a chunk of
    // -inf alone gives m = MASKED and s = 0), and its top raw values
    var m = MASKED;
    for (var i = t; i < n; i += WG) {
        m = max(m, x[row0 + i]);
    }
    m = wg_max(m, ids);
    var s = 0.0;
    for (var i = t; i < n; i += WG) {
        s += exp(x[row0 + i] - m);
    }
    s = wg_sum(s, ids);
    if (t == 0u) {
        stats[pi] = vec2<f32>(m, s);
        atomicStore(&nkept, 0u);
    }
    if (info.z > 1u) {
        for (var i = t; i < n; i += WG) {
            sk[i] = key(x[row0 + i]);
        }
        let th_raw = top_key(t, n, info.z - 1u, ids);
        keep_above(t, n, th_raw, c0, pi * LPC, LPC, true);
    }
}

// The kept candidates of sk[0..n) at or above th into ck/ci, ranked into by_value (largest
// first, equal values by column: the host's stable sort); returns how many. nkept is 0 before.
fn rank_above(t: u32, n: u32, th: u32, cb: u32, raw: bool) -> u32 {
    for (var i = t; i < n; i += WG) {
        var c: vec2<u32>;
        if (raw) {
            c = lpc[cb + i];
        } else {
            c = cands[cb + i];
        }
        if (c.x >= th && c.y != NONE) {
            let s = atomicAdd(&nkept, 1u);
            if (s < KMAX) {
                ck[s] = c.x;
                ci[s] = c.y;
            }
        }
    }
    workgroupBarrier();
    let m = min(atomicLoad(&nkept), KMAX);
    if (t < m) {
        var r = 0u;
        for (var j = 0u; j < m; j++) {
            r += select(0u, 1u, ck[j] > ck[t] || (ck[j] == ck[t] && ci[j] < ci[t]));
        }
        by_value[r] = t;
    }
    workgroupBarrier();
    return m;
}

@compute @workgroup_size(WG)
fn kernel_sample_rows_final(ids: Ids) {
    let t = ids.lid;
    let r = ids.wg.x;
    let info = row_info(t, r);
    if (info.x == 0u) {
        if (t == 0u) {
            out[r] = NONE;
        }
        return;
    }
    let a = rows[r];
    let n = hdr.n_parts * KMAX;
    let cb = r * n;
    for (var i = t; i < n; i += WG) {
        sk[i] = cands[cb + i].x;
    }
    if (t == 0u) {
        atomicStore(&nkept, 0u);
    }
    let th = top_key(t, n, info.y, ids);
    let m = rank_above(t, n, th, cb, false);
    if (info.x == 1u) {
        if (t == 0u) {  // greedy: the first largest
            chosen = ci[by_value[0]];
        }
    } else {
        let v0 = value(ck[by_value[0]]);
        if (t < m) {
            ev[t] = exp(value(ck[by_value[t]]) - v0);
        }
        workgroupBarrier();
        if (t == 0u) {
            // top_p: the fewest largest whose probabilities reach top_p; min_p: of those, the
            // ones with probability >= min_p times the largest, i.e. exp(v - v0) >= min_p
            var keep = m;
            if (a.top_p < 1.0) {
                var total = 0.0;
                for (var j = 0u; j < m; j++) {
                    total += ev[j];
                }
                var acc = 0.0;
                for (var j = 0u; j < m; j++) {
                    acc += ev[j];
                    if (acc / total >= a.top_p) {
                        keep = j + 1u;
                        break;
                    }
                }
            }
            if (a.min_p > 0.0) {
                var j = 1u;
                while (j < keep && ev[j] >= a.min_p) {
                    j++;
                }
                keep = j;
            }
            survivors = keep;
        }
        workgroupBarrier();
        let keep = survivors;
        // the draw walks the survivors by column, as the host's cumulative sum over the row
        if (t < keep) {
            let c = ci[by_value[t]];
            var q = 0u;
            for (var j = 0u; j < keep; j++) {
                q += select(0u, 1u, ci[by_value[j]] < c);
            }
            by_col[q] = by_value[t];
            tw[q] = exp((value(ck[by_value[t]]) - v0) / a.temperature);
        }
        workgroupBarrier();
        if (t == 0u) {
            var total = 0.0;
            for (var j = 0u; j < keep; j++) {
                total += tw[j];
            }
            // the first survivor whose share of the cumulative sum passes u
            let u = a.u * total;
            var pick = keep - 1u;
            var acc = 0.0;
            for (var j = 0u; j < keep; j++) {
                acc += tw[j];
                if (acc > u) {
                    pick = j;
                    break;
                }
            }
            chosen = ci[by_col[pick]];
        }
    }
    if (t == 0u) {
        out[r] = chosen;
    }
    if (info.z == 0u) {
        return;
    }
    // log-probabilities under the raw logits: log-sum-exp from the parts' pieces
    let sb = r * hdr.n_parts;
    var pm = MASKED;
    if (t < hdr.n_parts) {
        pm = stats[sb + t].x;
    }
    let big = wg_max(pm, ids);
    var ps = 0.0;
    if (t < hdr.n_parts) {
        ps = stats[sb + t].y * exp(stats[sb + t].x - big);
    }
    let lse = big + log(wg_sum(ps, ids));
    let ob = hdr.lp_base + r * LPW;
    let n_top = info.z - 1u;
    if (t == 0u) {
        out[ob] = bitcast<u32>(x[r * hdr.n_cols + chosen] - lse);
        out[ob + 1u] = n_top;
        atomicStore(&nkept, 0u);
    }
    if (n_top > 0u) {
        let nl = hdr.n_parts * LPC;
        let lb = r * nl;
        for (var i = t; i < nl; i += WG) {
            sk[i] = lpc[lb + i].x;
        }
        let th_raw = top_key(t, nl, n_top, ids);
        let ml = rank_above(t, nl, th_raw, lb, true);
        if (t < min(n_top, ml)) {
            let j = by_value[t];
            out[ob + 2u + 2u * t] = ci[j];
            out[ob + 3u + 2u * t] = bitcast<u32>(value(ck[j]) - lse);
        }
    }
}
