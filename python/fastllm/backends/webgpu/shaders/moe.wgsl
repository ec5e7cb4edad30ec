// Mixture of experts (llama.cpp's build_moe_ffn; the ops' meaning is in backends/base.py):
//   kernel_moe_route_f32   the router: probabilities, top-k, the chosen experts' weights
//   kernel_moe_group_f32   the pairs (row, chosen expert) listed expert by expert, for the
//                          grouped mat-vec of a prefill (mul_mv_id.wgsl)
//   kernel_add_id_f32, kernel_mul_id_f32   per-expert biases and multipliers
//   kernel_moe_sum_f32     the weighted sum of each row's expert outputs

const WG: u32 = 64u;
const MAX_E: u32 = 512u;  // llama.cpp's LLAMA_MAX_EXPERTS
const MAX_K: u32 = 64u;

// -- kernel_moe_route_f32: one workgroup per row ----------------------------------------------
@group(0) @binding(0) var<uniform> rargs: kargs_moe_route;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> sel_bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_ids: array<i32>;
@group(0) @binding(4) var<storage, read_write> out_w: array<f32>;

var<workgroup> probs: array<f32, MAX_E>;
var<workgroup> sel: array<f32, MAX_E>;
var<workgroup> taken: array<u32, MAX_E>;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> chosen: array<u32, MAX_K>;

// (v, i) before (bv, bi) in the selection order: larger first, the lower index among equals;
// bi == none marks "nothing yet"
fn before(v: f32, i: u32, bv: f32, bi: u32, none: u32) -> bool {
    return bi == none || v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(WG)
fn kernel_moe_route_f32(ids: Ids) {
    let row = ids.wg.y * ids.nwg.x + ids.wg.x;
    if (row >= rargs.n_rows) {
        return;  // the grid's tail: uniform over the workgroup
    }
    let E = rargs.n_expert;
    let t = ids.lid;
    let base = row * E;
    var mx = MASKED;
    for (var e = t; e < E; e += WG) {
        mx = max(mx, logits[base + e]);
    }
    mx = wg_max(mx, ids);
    var s = 0.0;
    for (var e = t; e < E; e += WG) {
        let l = logits[base + e];
        var p = l;  // gating 2 chooses by the logits themselves
        if (rargs.gating == 0u) {
            p = exp(l - mx);
            s += p;
        } else if (rargs.gating == 1u) {
            p = 1.0 / (1.0 + exp(-l));
        }
        probs[e] = p;
    }
    let total = wg_sum(s, ids);
    for (var e = t; e < E; e += WG) {  // each thread its own entries: no barrier needed
        var p = probs[e];
        if (rargs.gating == 0u) {
            p = p / total;
            probs[e] = p;
        }
        if (rargs.has_bias != 0u) {
            p += sel_bias[e];  // chooses, does not weigh
        }
        sel[e] = p;
        taken[e] = 0u;
    }
    workgroupBarrier();
    for (var j = 0u; j < rargs.k; j++) {
        var bv = 0.0;
        var bi = E;
        for (var e = t; e < E; e += WG) {
            let v = sel[e];
            if (taken[e] == 0u && before(v, e, bv, bi, E)) {
                bv = v;
                bi = e;
            }
        }
        best_v[t] = bv;
        best_i[t] = bi;
        workgroupBarrier();
        for (var o = WG / 2u; o > 0u; o >>= 1u) {
            if (t < o && best_i[t + o] != E
                && before(best_v[t + o], best_i[t + o], best_v[t], best_i[t], E)) {
                best_v[t] = best_v[t + o];
                best_i[t] = best_i[t + o];
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            let c = min(best_i[0], E - 1u);  // NaN logits choose nothing: stay in range
            chosen[j] = c;
            taken[c] = 1u;
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let k = rargs.k;
        var wmax = MASKED;
        for (var j = 0u; j < k; j++) {
            wmax = max(wmax, probs[chosen[j]]);
        }
        var sum = 0.0;
        for (var j = 0u; j < k; j++) {
            var w = probs[chosen[j]];
            if (rargs.gating == 2u) {
                w = exp(w - wmax);
            }
            out_w[row * k + j] = w;
            sum += w;
        }
        var div = 1.0;
        if (rargs.gating == 2u) {
            div = sum;
        }
        if (rargs.norm != 0u) {
            // the normalized weights sum to 1 (a softmax's already do: its sum is 1 up to
            // rounding, and llama.cpp divides by it all the same); ggml clamps the sum to the
            // smallest normal f16
            var s2 = 0.0;
            for (var j = 0u; j < k; j++) {
                s2 += out_w[row * k + j] / div;
            }
            div = div * max(s2, 6.103515625e-5);
        }
        for (var j = 0u; j < k; j++) {
            out_ids[row * k + j] = i32(chosen[j]);
            out_w[row * k + j] = out_w[row * k + j] / div * rargs.scale;
        }
    }
}

// -- kernel_moe_group_f32: one workgroup; groups[e] is the first entry of expert e's pairs in
// the list at groups[E + 1 ..] (groups[E]: the pair count), and after the list, the chunk table:
// n_chunks slots of (expert, first entry), expert e's pairs in runs of `chunk`, the unused slots
// (E, 0). The order within an expert does not matter: each pair's product is written to its own
// place.
@group(0) @binding(0) var<uniform> gargs: kargs_mul_mv_id;
@group(0) @binding(1) var<storage, read> gids: array<i32>;
@group(0) @binding(2) var<storage, read_write> groups: array<u32>;

var<workgroup> counts: array<atomic<u32>, MAX_E>;
var<workgroup> firsts: array<u32, MAX_E>;

fn expert_of(p: u32) -> u32 {
    return u32(clamp(gids[p], 0, i32(gargs.n_expert) - 1));
}

@compute @workgroup_size(WG)
fn kernel_moe_group_f32(ids: Ids) {
    let t = ids.lid;
    let E = gargs.n_expert;
    for (var e = t; e < E; e += WG) {
        atomicStore(&counts[e], 0u);
    }
    workgroupBarrier();
    for (var p = t; p < gargs.n_pairs; p += WG) {
        atomicAdd(&counts[expert_of(p)], 1u);
    }
    workgroupBarrier();
    if (t == 0u) {
        var run = 0u;
        for (var e = 0u; e < E; e++) {
            firsts[e] = run;
            groups[e] = run;
            run += atomicLoad(&counts[e]);
            atomicStore(&counts[e], 0u);
        }
        groups[E] = run;
        // the chunk table: a grouped mat-vec workgroup per slot, none left idle past the pairs
        let table = E + 1u + gargs.n_pairs;
        var slot = 0u;
        for (var e = 0u; e < E; e++) {
            let end = select(firsts[min(e + 1u, E - 1u)], run, e + 1u == E);
            for (var f = firsts[e]; f < end; f += gargs.chunk) {
                groups[table + 2u * slot] = e;
                groups[table + 2u * slot + 1u] = f;
                slot++;
            }
        }
        for (; slot < gargs.n_chunks; slot++) {
            groups[table + 2u * slot] = E;
            groups[table + 2u * slot + 1u] = 0u;
        }
    }
    workgroupBarrier();
    for (var p = t; p < gargs.n_pairs; p += WG) {
        let e = expert_of(p);
        groups[E + 1u + firsts[e] + atomicAdd(&counts[e], 1u)] = p;
    }
}

// -- element-wise: one thread per value -------------------------------------------------------
@group(0) @binding(0) var<uniform> eargs: kargs_moe_ew;
@group(0) @binding(1) var<storage, read> ea: array<f32>;
@group(0) @binding(2) var<storage, read> eb: array<f32>;
@group(0) @binding(3) var<storage, read> eids: array<i32>;
@group(0) @binding(4) var<storage, read_write> ey: array<f32>;

fn gidx(ids: Ids) -> u32 {
    return (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
}

// b's value for value i of pair row i / m: b[e * b_cols + (i % m) % b_cols]
fn per_expert(i: u32) -> f32 {
    let p = i / eargs.m;
    let e = u32(max(eids[p], 0));
    return eb[e * eargs.b_cols + (i % eargs.m) % eargs.b_cols];
}

@compute @workgroup_size(WG)
fn kernel_add_id_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < eargs.n_pairs * eargs.m) {
        ey[i] = ea[i] + per_expert(i);
    }
}

@compute @workgroup_size(WG)
fn kernel_mul_id_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < eargs.n_pairs * eargs.m) {
        ey[i] = ea[i] * per_expert(i);
    }
}

// y[r, c] = sum over j of w[r * k + j] * a[(r * k + j) * m + c], j in order (ea: the experts'
// outputs, eb: the weights); with RES, + res[r, c] (the residual add after the layer's experts,
// one dispatch less a layer: backends/fuse.py's moe_res)
const RES: bool = false;
@group(0) @binding(5) var<storage, read> eres: array<f32>;

// y's value i (row i / m, column i % m), with the residual under RES
fn weighted_sum(i: u32) -> f32 {
    let k = eargs.k;
    let r = i / eargs.m;
    let c = i % eargs.m;
    var s = 0.0;
    for (var j = 0u; j < k; j++) {
        s += eb[r * k + j] * ea[(r * k + j) * eargs.m + c];
    }
    if (RES) {
        s += eres[i];
    }
    return s;
}

@compute @workgroup_size(WG)
fn kernel_moe_sum_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < eargs.n_pairs / eargs.k * eargs.m) {
        ey[i] = weighted_sum(i);
    }
}

// As kernel_moe_sum_f32 with RES, and y * nw also written as the integer mat-vec's x of the
// rms_norm reader that comes next (the next layer's q, k, v), quantized, each block's sum of
// y^2 as its fourth scale: the reader applies 1 / rms itself (mul_mv_multi.wgsl's PRENORM, as
// after mul_mvq.wgsl's resq), so no quantize_x dispatch starts the next layer. A workgroup
// takes WG consecutive values of one row (m a multiple of WG).
@group(0) @binding(6) var<storage, read> qnw: array<f32>;
@group(0) @binding(7) var<storage, read_write> xo: array<vec4<u32>>;
var<workgroup> kept: array<f32, WG>;

@compute @workgroup_size(WG)
fn kernel_moe_sum_q8(ids: Ids) {
    let i = gidx(ids);
    let m = eargs.m;
    let r = i / m;
    let c = i % m;
    var s = 0.0;
    if (i < eargs.n_pairs / eargs.k * m) {
        s = weighted_sum(i);  // RES is on: the host sets it for this kernel
        ey[i] = s;
    }
    kept[ids.lid] = s;
    workgroupBarrier();
    if (ids.lid < WG / 32u && i - ids.lid < eargs.n_pairs / eargs.k * m) {
        let c0 = c - ids.lid + 32u * ids.lid;  // this thread's block's first column
        var v: array<vec4<f32>, 8>;
        var ss = 0.0;
        for (var j = 0u; j < 8u; j++) {
            let e = 32u * ids.lid + 4u * j;
            let y4 = vec4<f32>(kept[e], kept[e + 1u], kept[e + 2u], kept[e + 3u]);
            ss += dot(y4, y4);
            let cc = c0 + 4u * j;
            v[j] = y4 * vec4<f32>(qnw[cc], qnw[cc + 1u], qnw[cc + 2u], qnw[cc + 3u]);
        }
        let q = quant_block(&v);
        let base = r * (m / 16u + m / 32u);
        let b = c0 / 32u;
        xo[base + 2u * b] = q.lo;
        xo[base + 2u * b + 1u] = q.hi;
        xo[base + m / 16u + b] = vec4<u32>(q.scales.xyz, bitcast<u32>(ss));
    }
}
