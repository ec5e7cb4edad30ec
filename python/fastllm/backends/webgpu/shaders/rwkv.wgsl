// RWKV-6 / RWKV-7 ops (the "recurrent-model ops" of backends/base.py; their NumPy meaning is in
// backends/reference.py). Bindings are shared by every entry point of this file: the arguments
// at 0, the output at 1, a state buffer (read and written) at 2, inputs at 3.. in the order the
// op lists them. An optional input that is absent is bound to the backend's dummy buffer.

const WG: u32 = 64u;
// wkv6 / wkv7: a thread keeps one row of its head's S x S state in registers, so S <= WKV_MAX,
// and a workgroup holds WG / S whole heads (S a power of two).
const WKV_MAX: u32 = 64u;

@group(0) @binding(0) var<uniform> ln_args: kargs_layer_norm;
@group(0) @binding(0) var<uniform> un_args: kargs_unary;
@group(0) @binding(0) var<uniform> lerp_args: kargs_lerp;
@group(0) @binding(0) var<uniform> rw_args: kargs_rwkv;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> st: array<f32>;
@group(0) @binding(3) var<storage, read> i0: array<f32>;
@group(0) @binding(4) var<storage, read> i1: array<f32>;
@group(0) @binding(5) var<storage, read> i2: array<f32>;
@group(0) @binding(6) var<storage, read> i3: array<f32>;
@group(0) @binding(7) var<storage, read> i4: array<f32>;
@group(0) @binding(8) var<storage, read> i5: array<f32>;
// the state ops' slot: one for the whole run (the step's), or in rows mode (backends/base.py,
// Graph.rows) each row's own; a state buffer holds the slots one after another
@group(0) @binding(9) var<storage, read> rw_step: kargs_step;
@group(0) @binding(10) var<storage, read> rw_rows: array<vec2<u32>>;
const ROWS: bool = false;

// the first state value of row t's slot, for states of per_slot values
fn slot_base(t: u32, per_slot: u32) -> u32 {
    if (ROWS) {
        return rw_rows[t].x * per_slot;
    }
    return rw_step.slot * per_slot;
}

fn gidx(ids: Ids) -> u32 {
    return (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
}

// -- layer_norm, l2_norm, wkv7_bonus: one workgroup per (group, row); grid (n_cols / group, rows)

@compute @workgroup_size(WG)
fn kernel_layer_norm_f32(ids: Ids) {
    let g = ln_args.group;
    let base = ids.wg.y * ln_args.n_cols + ids.wg.x * g;
    var s = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        s += i0[base + k];
    }
    let mean = wg_sum(s, ids) / f32(g);
    // the variance of the centred values (two passes): no cancellation when |mean| >> std
    var q = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        let d = i0[base + k] - mean;
        q += d * d;
    }
    let inv = 1.0 / sqrt(wg_sum(q, ids) / f32(g) + ln_args.eps);
    for (var k = ids.lid; k < g; k += WG) {
        let c = ids.wg.x * g + k;  // w and b hold a whole row's values
        var v = (i0[base + k] - mean) * inv;
        if (ln_args.has_weight != 0u) {
            v *= i1[c];
        }
        if (ln_args.has_bias != 0u) {
            v += i2[c];
        }
        y[base + k] = v;
    }
}

@compute @workgroup_size(WG)
fn kernel_l2_norm_f32(ids: Ids) {
    let g = rw_args.group;
    let base = ids.wg.y * rw_args.n_cols + ids.wg.x * g;
    var s = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        let v = i0[base + k];
        s += v * v;
    }
    let inv = 1.0 / max(sqrt(wg_sum(s, ids)), rw_args.eps);
    for (var k = ids.lid; k < g; k += WG) {
        y[base + k] = i0[base + k] * inv;
    }
}

// y = v * sum_j r_j k_j r_k[j] per head; inputs r, k, v, r_k
@compute @workgroup_size(WG)
fn kernel_wkv7_bonus_f32(ids: Ids) {
    let g = rw_args.group;
    let c0 = ids.wg.x * g;
    let base = ids.wg.y * rw_args.n_cols + c0;
    var s = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        s += i0[base + k] * i1[base + k] * i3[c0 + k];
    }
    let d = wg_sum(s, ids);
    for (var k = ids.lid; k < g; k += WG) {
        y[base + k] = i2[base + k] * d;
    }
}

// -- unary: one thread per value over a 2-D grid ----------------------------------------------
// Arguments of exp are clamped where the result has reached its limit in f32: an exp that
// overflows is not guaranteed to give inf on every WebGPU implementation.

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -88.0, 88.0)));
}

fn unary_apply(x: f32, f: u32) -> f32 {
    switch f {
        case 0u: {
            return tanh(clamp(x, -15.0, 15.0));  // tanh(15) == 1 in f32
        }
        case 1u: {
            return sigmoid(x);
        }
        case 2u: {
            return x * sigmoid(x);
        }
        case 3u: {
            let r = max(x, 0.0);
            return r * r;
        }
        case 4u: {
            return exp(-exp(min(x, 88.0)));
        }
        case 6u: {
            // ggml's op_softplus: x itself above 20
            return select(log(1.0 + exp(min(x, 20.0))), x, x > 20.0);
        }
        default: {
            // exp(-1/2) as rwkv.cpp and llama.cpp write it
            return exp(-0.606531 * sigmoid(x));
        }
    }
}

fn unary_run(ids: Ids, f: u32) {
    let i = gidx(ids);
    if (i < un_args.n) {
        y[i] = unary_apply(i0[i], f);
    }
}

@compute @workgroup_size(WG)
fn kernel_unary_tanh_f32(ids: Ids) {
    unary_run(ids, 0u);
}

@compute @workgroup_size(WG)
fn kernel_unary_sigmoid_f32(ids: Ids) {
    unary_run(ids, 1u);
}

@compute @workgroup_size(WG)
fn kernel_unary_silu_f32(ids: Ids) {
    unary_run(ids, 2u);
}

@compute @workgroup_size(WG)
fn kernel_unary_relu_sqr_f32(ids: Ids) {
    unary_run(ids, 3u);
}

@compute @workgroup_size(WG)
fn kernel_unary_exp_neg_exp_f32(ids: Ids) {
    unary_run(ids, 4u);
}

@compute @workgroup_size(WG)
fn kernel_unary_decay7_f32(ids: Ids) {
    unary_run(ids, 5u);
}

@compute @workgroup_size(WG)
fn kernel_unary_softplus_f32(ids: Ids) {
    unary_run(ids, 6u);
}

// -- lerp: a + (b - a) * (mu + mu_v); inputs a, b, mu, mu_v; one thread per value ------------

@compute @workgroup_size(WG)
fn kernel_lerp_f32(ids: Ids) {
    let i = gidx(ids);
    let d = lerp_args.n_cols;
    if (i >= lerp_args.n_rows * d) {
        return;
    }
    let row = i / d;
    let c = i % d;
    var m = 0.0;
    if (lerp_args.has_mu != 0u) {
        m = i2[lerp_args.mu_off + c];
    }
    if (lerp_args.has_mu_v != 0u) {
        m += i3[row * lerp_args.mu_v_cols + lerp_args.mu_col + c];
    }
    let a = i0[i];
    y[i] = a + (i1[i] - a) * m;
}

// -- token_shift: one thread per column walks the rows in order (the state is that column's
// last value, read before and written after, by the same thread) ----------------------------

@compute @workgroup_size(WG)
fn kernel_token_shift_f32(ids: Ids) {
    let c = gidx(ids);
    let d = rw_args.n_cols;
    if (c >= d) {
        return;
    }
    if (ROWS) {  // each row one step of its own slot's sequence
        for (var t = 0u; t < rw_args.n_rows; t++) {
            let at = slot_base(t, d) + c;
            y[t * d + c] = st[at];
            st[at] = i0[t * d + c];
        }
        return;
    }
    let at = slot_base(0u, d) + c;
    var prev = st[at];
    for (var t = 0u; t < rw_args.n_rows; t++) {
        let cur = i0[t * d + c];
        y[t * d + c] = prev;
        prev = cur;
    }
    st[at] = prev;
}

// -- wkv6 / wkv7: the recurrence over all rows in one dispatch. Thread c (a channel: head
// c / S, index c % S) keeps one row of its head's state in registers; each row's inputs of the
// workgroup's heads pass through workgroup memory. Grid: ceil(n_cols / WG) workgroups.

var<workgroup> sh_r: array<f32, WG>;
var<workgroup> sh_w: array<f32, WG>;
var<workgroup> sh_k: array<f32, WG>;
var<workgroup> sh_a: array<f32, WG>;
var<workgroup> sh_b: array<f32, WG>;

// inputs r, k, v, w, u; thread (h, j) keeps s[h, :, j] (i indexes keys, j values)
@compute @workgroup_size(WG)
fn kernel_wkv6_f32(ids: Ids) {
    let S = rw_args.group;
    let C = rw_args.n_cols;
    let c = ids.wg.x * WG + ids.lid;
    let live = c < C;
    let j = ids.lid % S;
    let hb = ids.lid - j;  // the head's first slot in workgroup memory
    let sbase = (c - j) * S + j;  // s[h, i, j] = st[sbase + i * S] (of the slot)
    var s: array<f32, WKV_MAX>;
    if (live) {
        sh_a[ids.lid] = i4[c];  // u
    } else {
        sh_a[ids.lid] = 0.0;
    }
    for (var t = 0u; t < rw_args.n_rows; t++) {
        if (live && (t == 0u || ROWS)) {  // rows mode: each row its own slot's state
            let sb = slot_base(t, C * S) + sbase;
            for (var i = 0u; i < S; i++) {
                s[i] = st[sb + i * S];
            }
        }
        workgroupBarrier();
        var vj = 0.0;
        if (live) {
            sh_r[ids.lid] = i0[t * C + c];
            sh_k[ids.lid] = i1[t * C + c];
            sh_w[ids.lid] = i3[t * C + c];
            vj = i2[t * C + c];
        } else {
            sh_r[ids.lid] = 0.0;
            sh_k[ids.lid] = 0.0;
            sh_w[ids.lid] = 0.0;
        }
        workgroupBarrier();
        var o = 0.0;
        for (var i = 0u; i < S; i++) {
            let kv = sh_k[hb + i] * vj;
            o += sh_r[hb + i] * (sh_a[hb + i] * kv + s[i]);
            s[i] = s[i] * sh_w[hb + i] + kv;
        }
        if (live) {
            y[t * C + c] = o;
        }
        if (live && (t + 1u == rw_args.n_rows || ROWS)) {
            let sb = slot_base(t, C * S) + sbase;
            for (var i = 0u; i < S; i++) {
                st[sb + i * S] = s[i];
            }
        }
    }
}

// inputs r, w, k, v, a, b; thread (h, i) keeps s[h, i, :] (i indexes values, j keys)
@compute @workgroup_size(WG)
fn kernel_wkv7_f32(ids: Ids) {
    let S = rw_args.group;
    let C = rw_args.n_cols;
    let c = ids.wg.x * WG + ids.lid;
    let live = c < C;
    let hb = ids.lid - ids.lid % S;
    let sbase = c * S;  // s[h, i, j] = st[(h * S + i) * S + j] (of the slot), c = h * S + i
    var s: array<f32, WKV_MAX>;
    for (var t = 0u; t < rw_args.n_rows; t++) {
        if (live && (t == 0u || ROWS)) {  // rows mode: each row its own slot's state
            let sb = slot_base(t, C * S) + sbase;
            for (var j = 0u; j < S; j++) {
                s[j] = st[sb + j];
            }
        }
        workgroupBarrier();
        var vi = 0.0;
        let e = t * C + c;
        if (live) {
            sh_r[ids.lid] = i0[e];
            sh_w[ids.lid] = i1[e];
            sh_k[ids.lid] = i2[e];
            vi = i3[e];
            sh_a[ids.lid] = i4[e];
            sh_b[ids.lid] = i5[e];
        } else {
            sh_r[ids.lid] = 0.0;
            sh_w[ids.lid] = 0.0;
            sh_k[ids.lid] = 0.0;
            sh_a[ids.lid] = 0.0;
            sh_b[ids.lid] = 0.0;
        }
        workgroupBarrier();
        var sa = 0.0;  // with the state before this row
        for (var j = 0u; j < S; j++) {
            sa += sh_a[hb + j] * s[j];
        }
        var o = 0.0;
        for (var j = 0u; j < S; j++) {
            let v = s[j] * sh_w[hb + j] + vi * sh_k[hb + j] + sa * sh_b[hb + j];
            s[j] = v;
            o += v * sh_r[hb + j];
        }
        if (live) {
            y[e] = o;
        }
        if (live && (t + 1u == rw_args.n_rows || ROWS)) {
            let sb = slot_base(t, C * S) + sbase;
            for (var j = 0u; j < S; j++) {
                st[sb + j] = s[j];
            }
        }
    }
}
