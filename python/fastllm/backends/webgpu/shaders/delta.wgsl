// Gated DeltaNet ops (Qwen3.5; backends/base.py's slice_cols, ssm_conv, gated_delta, with their
// NumPy meaning in backends/reference.py). Bindings as rwkv.wgsl: the arguments at 0, the output
// at 1, a state buffer (read and written) at 2, inputs at 3.., the step at 9 and in rows mode the
// rows' (slot, position) pairs at 10.

const WG: u32 = 64u;
// ssm_conv: a thread keeps the K-1 previous inputs of its channel in registers (K <= CONV_MAX)
const CONV_MAX: u32 = 8u;
// gated_delta: the head size (a pipeline constant, so the loops over a state row unroll). A
// thread keeps one value row of its head's S x S state (S key values) in registers; a head's
// rows are split over ceil(S / WG) workgroups, so no workgroup holds a whole 64 KiB state.
const GD_S: u32 = 128u;

@group(0) @binding(0) var<uniform> sc_args: kargs_slice_cols;
@group(0) @binding(0) var<uniform> cv_args: kargs_rwkv;
@group(0) @binding(0) var<uniform> gd_args: kargs_gated_delta;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> st: array<f32>;
@group(0) @binding(3) var<storage, read> i0: array<f32>;
@group(0) @binding(4) var<storage, read> i1: array<f32>;
@group(0) @binding(5) var<storage, read> i2: array<f32>;
@group(0) @binding(6) var<storage, read> i3: array<f32>;
@group(0) @binding(7) var<storage, read> i4: array<f32>;
@group(0) @binding(9) var<storage, read> d_step: kargs_step;
@group(0) @binding(10) var<storage, read> d_rows: array<vec2<u32>>;
const ROWS: bool = false;
const SILU: bool = false;  // ssm_conv: silu of its output

// the first state value of row t's slot, for states of per_slot values
fn slot_base(t: u32, per_slot: u32) -> u32 {
    if (ROWS) {
        return d_rows[t].x * per_slot;
    }
    return d_step.slot * per_slot;
}

fn gidx(ids: Ids) -> u32 {
    return (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
}

// -- slice_cols: one thread per output value; input x ----------------------------------------

@compute @workgroup_size(WG)
fn kernel_slice_cols_f32(ids: Ids) {
    let i = gidx(ids);
    let oc = sc_args.out_cols;
    if (i >= sc_args.n_rows * oc) {
        return;
    }
    let t = i / oc;
    let c = i % oc;
    let g = c / sc_args.width;
    y[i] = i0[t * sc_args.n_cols + g * sc_args.period + sc_args.start + c % sc_args.width];
}

// -- dot_gate: y = x * sigmoid(h . w) row by row; inputs x, h, w. One workgroup per row, the
// dot product by a workgroup reduction. ------------------------------------------------------

@compute @workgroup_size(WG)
fn kernel_dot_gate_f32(ids: Ids) {
    let t = ids.wg.y * ids.nwg.x + ids.wg.x;
    if (t >= sc_args.n_rows) {  // uniform in the workgroup
        return;
    }
    let d = sc_args.n_cols;  // x's row length
    let e = sc_args.width;  // h's row length
    var p = 0.0;
    for (var i = ids.lid; i < e; i += WG) {
        p += i1[t * e + i] * i2[i];
    }
    let gate = 1.0 / (1.0 + exp(-clamp(wg_sum(p, ids), -88.0, 88.0)));
    for (var i = ids.lid; i < d; i += WG) {
        y[t * d + i] = i0[t * d + i] * gate;
    }
}

// -- norm_gate: rms_norm(x, w) * silu(z) over each group of a row; inputs x, w, z. One
// workgroup per (group, row): grid (n_cols / group, rows); kargs_rwkv (group, eps). ----------

@compute @workgroup_size(WG)
fn kernel_norm_gate_f32(ids: Ids) {
    let g = cv_args.group;
    let base = ids.wg.y * cv_args.n_cols + ids.wg.x * g;
    var q = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        let v = i0[base + k];
        q += v * v;
    }
    let inv = 1.0 / sqrt(wg_sum(q, ids) / f32(g) + cv_args.eps);
    for (var k = ids.lid; k < g; k += WG) {
        let z = i2[base + k];
        y[base + k] = i0[base + k] * inv * i1[k] * (z / (1.0 + exp(-clamp(z, -88.0, 88.0))));
    }
}

// -- ssm_conv: one thread per channel walks the rows in order; inputs x, w (C x K). The state
// holds channel c's K-1 previous inputs at c * (K-1).., the oldest first. ----------------------

@compute @workgroup_size(WG)
fn kernel_ssm_conv_f32(ids: Ids) {
    let c = gidx(ids);
    let C = cv_args.n_cols;
    let K = cv_args.group;
    if (c >= C) {
        return;
    }
    let per = C * (K - 1u);
    var win: array<f32, CONV_MAX>;  // the K-1 inputs before row t, the oldest first
    for (var t = 0u; t < cv_args.n_rows; t++) {
        let at = slot_base(t, per) + c * (K - 1u);
        if (t == 0u || ROWS) {  // rows mode: each row its own slot's state
            for (var k = 0u; k + 1u < K; k++) {
                win[k] = st[at + k];
            }
        }
        let xt = i0[t * C + c];
        var s = 0.0;
        for (var k = 0u; k + 1u < K; k++) {
            s += win[k] * i1[c * K + k];
        }
        s += xt * i1[c * K + K - 1u];
        if (SILU) {
            s = s / (1.0 + exp(-clamp(s, -88.0, 88.0)));
        }
        y[t * C + c] = s;
        for (var k = 0u; k + 2u < K; k++) {
            win[k] = win[k + 1u];
        }
        win[K - 2u] = xt;
        if (t + 1u == cv_args.n_rows || ROWS) {
            for (var k = 0u; k + 1u < K; k++) {
                st[at + k] = win[k];
            }
        }
    }
}

// -- gated_delta: inputs qkv (q | k | v of each row), alpha, beta, dt_bias, a. Grid
// (ceil(S / WG), n_v_heads): thread j of head h keeps s[h, j, :] (value row j over the S keys);
// each row's q and k of the head pass through workgroup memory, and every thread sums their
// squares itself for the l2 norms (S values: no reduction, no more barriers). The recurrence
// over all rows of a run is one dispatch. ----------------------------------------------------

var<workgroup> sh_q: array<f32, GD_S>;
var<workgroup> sh_k: array<f32, GD_S>;

fn softplus(x: f32) -> f32 {
    return select(log(1.0 + exp(min(x, 20.0))), x, x > 20.0);  // ggml's op_softplus
}

@compute @workgroup_size(WG)
fn kernel_gated_delta_f32(ids: Ids) {
    let hv = gd_args.n_v_heads;
    let h = ids.wg.y;
    let j = ids.wg.x * WG + ids.lid;
    let live = j < GD_S;
    let nk = gd_args.n_k_heads * GD_S;  // q's columns, and k's
    let rc = 2u * nk + hv * GD_S;  // row length of qkv
    let vc = hv * GD_S;  // row length of the output
    let q0 = (h % gd_args.n_k_heads) * GD_S;  // value head h reads key head h % Hk
    let dt_bias = i3[h];
    let a = i4[h];
    var s: array<f32, GD_S>;
    for (var t = 0u; t < gd_args.n_rows; t++) {
        let sb = slot_base(t, vc * GD_S) + (h * GD_S + min(j, GD_S - 1u)) * GD_S;
        if (live && (t == 0u || ROWS)) {
            for (var i = 0u; i < GD_S; i++) {
                s[i] = st[sb + i];
            }
        }
        workgroupBarrier();  // the previous row's q and k are read
        for (var i = ids.lid; i < GD_S; i += WG) {
            sh_q[i] = i0[t * rc + q0 + i];
            sh_k[i] = i0[t * rc + nk + q0 + i];
        }
        workgroupBarrier();
        var qq = 0.0;
        var kk = 0.0;
        for (var i = 0u; i < GD_S; i++) {
            qq += sh_q[i] * sh_q[i];
            kk += sh_k[i] * sh_k[i];
        }
        let qn = gd_args.scale / sqrt(qq + gd_args.eps);
        let kn = 1.0 / sqrt(kk + gd_args.eps);
        let decay = exp(softplus(i1[t * hv + h] + dt_bias) * a);
        let beta = 1.0 / (1.0 + exp(-clamp(i2[t * hv + h], -88.0, 88.0)));
        var sk = 0.0;
        for (var i = 0u; i < GD_S; i++) {
            s[i] *= decay;
            sk += s[i] * sh_k[i];
        }
        var vj = 0.0;
        if (live) {
            vj = i0[t * rc + 2u * nk + h * GD_S + j];
        }
        let d = (vj - sk * kn) * beta * kn;  // the update along the normalized k
        var o = 0.0;
        for (var i = 0u; i < GD_S; i++) {
            s[i] += sh_k[i] * d;
            o += s[i] * sh_q[i];
        }
        if (live) {
            y[t * vc + h * GD_S + j] = o * qn;
        }
        if (live && (t + 1u == gd_args.n_rows || ROWS)) {
            for (var i = 0u; i < GD_S; i++) {
                st[sb + i] = s[i];
            }
        }
    }
}
