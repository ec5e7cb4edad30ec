// Sampling on the device, so that a sampled decoding loop stays on the GPU as greedy decoding
// does (loops.py): fastllm.sampling's chain, the repetition penalty over the last
// last_n ids, top_k, top_p, min_p, temperature, then a draw with the step's uniform number u
// (the host's generator makes them, so a seed gives the host sampler's tokens).
// kernel_sample_part: each workgroup penalizes its CHUNK columns and keeps their top_k largest;
// kernel_sample_final (one workgroup) keeps the top_k of those, applies the chain and writes
// the token as the next step's input, into the history and into the penalty's ids, and moves
// the step one position on (as kernel_argmax_greedy).
//
// The k-th largest of n values is found two bits at a time on order-preserving u32 keys (16
// rounds, each counting the keys at or above three candidate prefixes): no sort of the n
// values, only the <= KMAX kept ones are ranked. As the host's top_k, every value equal to the
// k-th is kept (up to KMAX).

const WG: u32 = 256u;
const CHUNK: u32 = 2048u;  // columns per kernel_sample_part workgroup
const NPART: u32 = 64u;  // most kernel_sample_part workgroups (the final one reads NPART KMAX)
const KMAX: u32 = 64u;  // the largest top_k (fastllm.sampling.DEVICE_TOP_K)
const NK: u32 = max(CHUNK, NPART * KMAX);
const NONE: u32 = 0xFFFFFFFFu;  // an empty candidate's column
const LMAX: u32 = 64u;  // the longest penalty window (fastllm.sampling.DEVICE_LAST_N)

@group(0) @binding(0) var<uniform> args: kargs_sample;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;  // the next step's input
@group(0) @binding(3) var<storage, read_write> step: kargs_step;
@group(0) @binding(4) var<storage, read_write> history: array<i32>;
@group(0) @binding(5) var<storage, read_write> cands: array<vec2<u32>>;  // (key, column)
@group(0) @binding(6) var<storage, read> uniforms: array<f32>;  // index: position - pos0
// the penalty's ids: step i (position pos0 + i) reads recent[i .. i + last_n), the last of them
// its input, and its token goes to recent[i + last_n]
@group(0) @binding(7) var<storage, read_write> recent: array<u32>;

var<workgroup> sk: array<u32, NK>;
var<workgroup> nkept: atomic<u32>;
var<workgroup> ck: array<u32, KMAX>;  // kept candidates, in no order
var<workgroup> ci: array<u32, KMAX>;
var<workgroup> by_value: array<u32, KMAX>;  // their slots, largest first (ties: column)
var<workgroup> by_col: array<u32, KMAX>;  // the survivors' slots by column
var<workgroup> tw: array<f32, KMAX>;  // the survivors' weights by column
var<workgroup> ev: array<f32, KMAX>;  // exp(v - largest v) of the kept, largest first
var<workgroup> survivors: u32;
var<workgroup> window: array<u32, LMAX>;

// a > b as floats <=> key(a) > key(b) as u32 (finite values and -inf; key 0 is no value)
fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7FFFFFFFu, (k & 0x80000000u) != 0u));
}

// The k-th largest of sk[0..n) (0 when n < k), for every thread. Two bits a round: the keys at
// or above prefix | d << s for d = 1, 2, 3 counted together (one group_sum4; counts <= 4096
// are exact in f32), the largest d whose count reaches k kept: 16 rounds, each paying a
// reduction's barriers (one bit and one atomic count a round took 32; H100 1B Q8_0 sampling
// tail part / final 17.7 / 32.4 us with them).
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

@compute @workgroup_size(WG)
fn kernel_sample_part(ids: Ids) {
    let t = ids.lid;
    let c0 = ids.wg.x * CHUNK;
    let n = min(CHUNK, args.n_cols - min(c0, args.n_cols));
    let i0 = step.pos - args.pos0;
    for (var j = t; j < args.last_n; j += WG) {
        window[j] = recent[i0 + j];
    }
    workgroupBarrier();
    for (var i = t; i < n; i += WG) {
        var v = x[c0 + i];
        for (var j = 0u; j < args.last_n; j++) {  // as sampling.apply_repeat_penalty
            if (window[j] == c0 + i) {
                v = select(v * args.penalty, v / args.penalty, v > 0.0);
                break;
            }
        }
        sk[i] = key(v);
    }
    if (t == 0u) {
        atomicStore(&nkept, 0u);
    }
    let th = kth_key(t, n, args.top_k, ids);
    let base = ids.wg.x * KMAX;
    for (var i = t; i < n; i += WG) {
        if (sk[i] >= th) {
            let s = atomicAdd(&nkept, 1u);
            if (s < KMAX) {
                cands[base + s] = vec2<u32>(sk[i], c0 + i);
            }
        }
    }
    workgroupBarrier();
    for (var s = min(atomicLoad(&nkept), KMAX) + t; s < KMAX; s += WG) {
        cands[base + s] = vec2<u32>(0u, NONE);
    }
}

@compute @workgroup_size(WG)
fn kernel_sample_final(ids: Ids) {
    let t = ids.lid;
    let n = (args.n_cols + CHUNK - 1u) / CHUNK * KMAX;
    for (var i = t; i < n; i += WG) {
        sk[i] = cands[i].x;
    }
    if (t == 0u) {
        atomicStore(&nkept, 0u);
    }
    let th = kth_key(t, n, args.top_k, ids);
    for (var i = t; i < n; i += WG) {
        let c = cands[i];
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
    // largest first, equal values by column (the host's stable sort of the probabilities)
    if (t < m) {
        var r = 0u;
        for (var j = 0u; j < m; j++) {
            r += select(0u, 1u, ck[j] > ck[t] || (ck[j] == ck[t] && ci[j] < ci[t]));
        }
        by_value[r] = t;
    }
    workgroupBarrier();
    let v0 = value(ck[by_value[0]]);
    if (t < m) {  // the exponentials in parallel: one thread walking them waited on each
        ev[t] = exp(value(ck[by_value[t]]) - v0);
    }
    workgroupBarrier();
    if (t == 0u) {
        // top_p: the fewest largest whose probabilities reach top_p; min_p: of those, the ones
        // with probability >= min_p times the largest, i.e. exp(v - v0) >= min_p (a prefix)
        var keep = m;
        if (args.top_p < 1.0) {
            var total = 0.0;
            for (var j = 0u; j < m; j++) {
                total += ev[j];
            }
            var acc = 0.0;
            for (var j = 0u; j < m; j++) {
                acc += ev[j];
                if (acc / total >= args.top_p) {
                    keep = j + 1u;
                    break;
                }
            }
        }
        if (args.min_p > 0.0) {
            var j = 1u;
            while (j < keep && ev[j] >= args.min_p) {
                j++;
            }
            keep = j;
        }
        survivors = keep;
    }
    workgroupBarrier();
    let keep = survivors;
    // the draw walks the survivors by column, as the host's cumulative sum over the vocabulary
    if (t < keep) {
        let c = ci[by_value[t]];
        var r = 0u;
        for (var j = 0u; j < keep; j++) {
            r += select(0u, 1u, ci[by_value[j]] < c);
        }
        by_col[r] = by_value[t];
        tw[r] = exp((value(ck[by_value[t]]) - v0) / args.temperature);
    }
    workgroupBarrier();
    if (t == 0u) {
        var total = 0.0;
        for (var j = 0u; j < keep; j++) {
            total += tw[j];
        }
        // the first survivor whose share of the cumulative sum passes u
        let u = uniforms[step.pos - args.pos0] * total;
        var pick = keep - 1u;
        var acc = 0.0;
        for (var j = 0u; j < keep; j++) {
            acc += tw[j];
            if (acc > u) {
                pick = j;
                break;
            }
        }
        let tok = i32(ci[by_col[pick]]);
        out[0] = tok;
        history[step.pos - args.pos0] = tok;
        if (args.last_n > 0u) {
            recent[step.pos - args.pos0 + args.last_n] = u32(tok);
        }
        step.pos += 1u;
        step.n_kv += 1u;
    }
}
