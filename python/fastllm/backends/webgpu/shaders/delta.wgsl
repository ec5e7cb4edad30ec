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

// 1 / rms of the group of x from base (every thread of the workgroup calls it: a reduction)
fn group_inv_rms(base: u32, ids: Ids) -> f32 {
    let g = cv_args.group;
    var q = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        let v = i0[base + k];
        q += v * v;
    }
    return 1.0 / sqrt(wg_sum(q, ids) / f32(g) + cv_args.eps);
}

// value k of the group from base: x * inv * w * silu(z)
fn norm_gate_at(base: u32, k: u32, inv: f32) -> f32 {
    let z = i2[base + k];
    return i0[base + k] * inv * i1[k] * (z / (1.0 + exp(-clamp(z, -88.0, 88.0))));
}

@compute @workgroup_size(WG)
fn kernel_norm_gate_f32(ids: Ids) {
    let g = cv_args.group;
    let base = ids.wg.y * cv_args.n_cols + ids.wg.x * g;
    let inv = group_inv_rms(base, ids);
    for (var k = ids.lid; k < g; k += WG) {
        y[base + k] = norm_gate_at(base, k, inv);
    }
}

// As kernel_norm_gate_f32, writing the output as the integer mat-vec's x of the projection
// that reads it (quantize_x.wgsl's layout, row after row; the group a multiple of 32 values and
// at most NG_MAX): no quantize_x dispatch before that projection, and the projection, its x
// not in the shared scratch, may write the next norm's x itself (mul_mvq.wgsl's resq)
const NG_MAX: u32 = 256u;
@group(0) @binding(11) var<storage, read_write> yq: array<vec4<u32>>;
var<workgroup> ng: array<f32, NG_MAX>;

@compute @workgroup_size(WG)
fn kernel_norm_gate_q8(ids: Ids) {
    let g = cv_args.group;
    let K = cv_args.n_cols;
    let base = ids.wg.y * K + ids.wg.x * g;
    let inv = group_inv_rms(base, ids);
    for (var k = ids.lid; k < g; k += WG) {
        ng[k] = norm_gate_at(base, k, inv);
    }
    workgroupBarrier();
    let nb = g / 32u;
    let row0 = ids.wg.y * (K / 16u + K / 32u);  // the row's first vec4 in yq
    for (var b = ids.lid; b < nb; b += WG) {
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            let e = 32u * b + 4u * j;
            v[j] = vec4<f32>(ng[e], ng[e + 1u], ng[e + 2u], ng[e + 3u]);
        }
        let qb = quant_block(&v);
        let blk = ids.wg.x * nb + b;  // the block's index in the row
        yq[row0 + 2u * blk] = qb.lo;
        yq[row0 + 2u * blk + 1u] = qb.hi;
        yq[row0 + K / 16u + blk] = qb.scales;
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

// -- gated_delta, chunked (prefill): the same recurrence over chunks of GD_C rows in the WY form
// (flash-linear-attention's chunked gated delta rule, llama.cpp's chunked gated delta net). With
// G_t the running sum of the log decays g within a chunk, k and q normalized (q with the 1/sqrt(S)
// scale), b = sigmoid(beta) and S0 the state the chunk starts from, the recurrence unrolls to
//     u_t = b_t (v_t - e^G_t S0 k_t - sum_{r<t} e^(G_t - G_r) (k_t . k_r) u_r)
//     o_t = e^G_t S0 q_t + sum_{r<=t} e^(G_t - G_r) (q_t . k_r) u_r
//     S   = e^G_last S0 + sum_r e^(G_last - G_r) u_r k_r^T
// so with L[t, r] = b_t e^(G_t - G_r) (k_t . k_r) (r < t) and P[t, r] = e^(G_t - G_r) (q_t . k_r)
// (r <= t): U = U0 - W S0^T, U0 = (I + L)^-1 diag(b) V, W = (I + L)^-1 diag(b e^G) K, and
// O = P U0 + (diag(e^G) Q - P W) S0^T. Every exponent is <= 0 (g <= 0 and r <= t), so no factor
// overflows. kernel_gated_delta_prep_f32 computes U0, W, Q' = diag(e^G) Q - P W and P U0 (into
// the output) for all chunks at once; kernel_gated_delta_chunks_f32 then walks the chunks in
// order, each thread with its value row of the state as the per-row kernel does. The scratch
// (binding 8) holds per value head h: U0, W and Q' (n x S each, at (h * n + t) * S + column from
// [0, 1, 2] * Hv * n * S), then kf[h * n + t] = |k_t|^-1 e^(G_last - G_t) and
// el[h * n_chunks + c] = e^G_last.

const GD_C: u32 = 32u;  // rows of a chunk (a pipeline constant)
@group(0) @binding(8) var<storage, read_write> sc: array<f32>;
var<workgroup> sh_l: array<f32, GD_C * GD_C>;
var<workgroup> sh_p: array<f32, GD_C * GD_C>;
var<workgroup> sh_g: array<f32, GD_C>;
var<workgroup> sh_b: array<f32, GD_C>;
var<workgroup> sh_kn: array<f32, GD_C>;
var<workgroup> sh_qn: array<f32, GD_C>;

// Grid (n_chunks, n_v_heads): one workgroup per chunk of a head. Inputs as kernel_gated_delta_f32.
@compute @workgroup_size(WG)
fn kernel_gated_delta_prep_f32(ids: Ids) {
    let n = gd_args.n_rows;
    let hv = gd_args.n_v_heads;
    let h = ids.wg.y;
    let c = ids.wg.x;
    let t0 = c * GD_C;
    let m = min(GD_C, n - t0);  // rows of this chunk
    let nk = gd_args.n_k_heads * GD_S;
    let rc = 2u * nk + hv * GD_S;
    let vc = hv * GD_S;
    let q0 = (h % gd_args.n_k_heads) * GD_S;
    let plane = hv * n * GD_S;
    for (var r = ids.lid; r < m; r += WG) {
        let t = t0 + r;
        var qq = 0.0;
        var kk = 0.0;
        for (var i = 0u; i < GD_S; i++) {
            let qi = i0[t * rc + q0 + i];
            let ki = i0[t * rc + nk + q0 + i];
            qq += qi * qi;
            kk += ki * ki;
        }
        sh_qn[r] = gd_args.scale / sqrt(qq + gd_args.eps);
        sh_kn[r] = 1.0 / sqrt(kk + gd_args.eps);
        sh_g[r] = softplus(i1[t * hv + h] + i3[h]) * i4[h];
        sh_b[r] = 1.0 / (1.0 + exp(-clamp(i2[t * hv + h], -88.0, 88.0)));
    }
    workgroupBarrier();
    if (ids.lid == 0u) {  // the running sums G_t (GD_C values)
        var acc = 0.0;
        for (var r = 0u; r < m; r++) {
            acc += sh_g[r];
            sh_g[r] = acc;
        }
    }
    workgroupBarrier();
    for (var e = ids.lid; e < GD_C * GD_C; e += WG) {
        let t = e / GD_C;
        let r = e % GD_C;
        var l = 0.0;
        var p = 0.0;
        if (r <= t && t < m) {
            var kk = 0.0;
            var qk = 0.0;
            for (var i = 0u; i < GD_S; i++) {
                let kr = i0[(t0 + r) * rc + nk + q0 + i];
                kk += i0[(t0 + t) * rc + nk + q0 + i] * kr;
                qk += i0[(t0 + t) * rc + q0 + i] * kr;
            }
            let dec = exp(sh_g[t] - sh_g[r]);
            l = select(0.0, sh_b[t] * dec * kk * sh_kn[t] * sh_kn[r], r < t);
            p = dec * qk * sh_qn[t] * sh_kn[r];
        }
        sh_l[e] = l;
        sh_p[e] = p;
    }
    workgroupBarrier();
    // columns of [V | K] (2S): the triangular solve of (I + L) X = diag(b) V | diag(b e^G) K by
    // forward substitution down the chunk, one column per thread at a time
    for (var col = ids.lid; col < 2u * GD_S; col += WG) {
        let is_v = col < GD_S;
        let i = select(col - GD_S, col, is_v);
        var x: array<f32, GD_C>;
        for (var t = 0u; t < m; t++) {
            let row = (t0 + t) * rc;
            var bt: f32;
            if (is_v) {
                bt = sh_b[t] * i0[row + 2u * nk + h * GD_S + i];
            } else {
                bt = sh_b[t] * exp(sh_g[t]) * i0[row + nk + q0 + i] * sh_kn[t];
            }
            for (var r = 0u; r < t; r++) {
                bt -= sh_l[t * GD_C + r] * x[r];
            }
            x[t] = bt;
        }
        for (var t = 0u; t < m; t++) {
            var p = 0.0;
            for (var r = 0u; r <= t; r++) {
                p += sh_p[t * GD_C + r] * x[r];
            }
            let at = (h * n + t0 + t) * GD_S + i;
            if (is_v) {
                sc[at] = x[t];  // U0
                y[(t0 + t) * vc + h * GD_S + i] = p;  // P U0
            } else {
                sc[plane + at] = x[t];  // W
                sc[2u * plane + at] = exp(sh_g[t]) * i0[(t0 + t) * rc + q0 + i] * sh_qn[t] - p;
            }
        }
    }
    let last = sh_g[m - 1u];
    for (var r = ids.lid; r < m; r += WG) {
        sc[3u * plane + h * n + t0 + r] = sh_kn[r] * exp(last - sh_g[r]);
    }
    if (ids.lid == 0u) {
        sc[3u * plane + hv * n + h * ((n + GD_C - 1u) / GD_C) + c] = exp(last);
    }
}

// Grid (ceil(S / WG), n_v_heads) as kernel_gated_delta_f32 (one slot for the run; not rows mode):
// thread j keeps s[h, j, :] and walks the chunks: u = U0 - W s, the output gets Q' s, then the
// state decays by e^G_last and takes the chunk's u k^T.
@compute @workgroup_size(WG)
fn kernel_gated_delta_chunks_f32(ids: Ids) {
    let n = gd_args.n_rows;
    let hv = gd_args.n_v_heads;
    let h = ids.wg.y;
    let j = ids.wg.x * WG + ids.lid;
    if (j >= GD_S) {  // no barriers below
        return;
    }
    let nk = gd_args.n_k_heads * GD_S;
    let rc = 2u * nk + hv * GD_S;
    let vc = hv * GD_S;
    let q0 = (h % gd_args.n_k_heads) * GD_S;
    let plane = hv * n * GD_S;
    let nc = (n + GD_C - 1u) / GD_C;
    let sb = slot_base(0u, vc * GD_S) + (h * GD_S + j) * GD_S;
    var s: array<f32, GD_S>;
    for (var i = 0u; i < GD_S; i++) {
        s[i] = st[sb + i];
    }
    for (var c = 0u; c < nc; c++) {
        let t0 = c * GD_C;
        let m = min(GD_C, n - t0);
        var u: array<f32, GD_C>;
        for (var r = 0u; r < m; r++) {
            let at = (h * n + t0 + r) * GD_S;
            var w = 0.0;
            var o = 0.0;
            for (var i = 0u; i < GD_S; i++) {
                w += sc[plane + at + i] * s[i];
                o += sc[2u * plane + at + i] * s[i];
            }
            u[r] = sc[at + j] - w;
            y[(t0 + r) * vc + h * GD_S + j] += o;
        }
        let el = sc[3u * plane + hv * n + h * nc + c];
        for (var i = 0u; i < GD_S; i++) {
            s[i] *= el;
        }
        for (var r = 0u; r < m; r++) {
            let f = sc[3u * plane + h * n + t0 + r] * u[r];
            let row = (t0 + r) * rc + nk + q0;
            for (var i = 0u; i < GD_S; i++) {
                s[i] += f * i0[row + i];
            }
        }
    }
    for (var i = 0u; i < GD_S; i++) {
        st[sb + i] = s[i];
    }
}
