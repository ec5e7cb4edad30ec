// Mat-vec for decode and short prompts: y[m, row0 + n] = dot(x[m, :], W[n, :]) for the rows n of
// one weight part (quants.wgsl supplies the weight type; TYPE in the entry point's name becomes
// it).
//
// A workgroup is WG / TPR row groups of TPR threads; a group computes R consecutive rows for C
// token rows. Its threads take the row's units in turn (neighbouring threads read neighbouring
// weight vectors). With C = 1 (decode) a unit's 32 x values are loaded once for all R rows and
// the type's dot_unit does the arithmetic on the quantized values; with C > 1 each weight unit
// is decoded once (dq4) and used for all C token rows, so the weights are read once per
// workgroup whatever C is. The backend picks TPR from the row length so that short rows leave no
// thread idle. Grid: ceil(n_rows / (R * WG / TPR)) workgroups as (x, 1, z), x * z of them (a
// huge vocabulary can pass the 65535 a dimension holds).
//
// Variants (a section below each; the backend fuses neighbouring ops into them, one dispatch
// instead of two or three, since a decode step is bound by per-dispatch cost):
//   plain    y = W x
//   res      y = W x + res             (the residual add after an output projection)
//   glu      y = W (silu(x) * up)      (SwiGLU computed while loading x: no gate*up pass)
//   glu_res  y = W (silu(x) * up) + res
//   norm     y = W rms_norm(x) * nw   (one token row; each workgroup reduces x itself first)

const WG: u32 = 64u;
const TPR: u32 = 32u;
const R: u32 = 4u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const C: u32 = 1u;
const UNR: u32 = 1u;  // units a thread takes per pass (their loads can be in flight together)
const RV: u32 = (R + 3u) / 4u;  // vec4 accumulators per token row

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn x_at(m: u32, u: u32, j: u32) -> vec4<f32> {
    let K = args.mm.K;
    let col = unit_col(u, j, (K + 31u) / 32u);
    if (GUARD_K) {
        // padded float rows (the backend sets GUARD_K only for them): a clamped load and a
        // select, no branch around the load, so a unit's eight loads still issue together
        let v = load_x(m * (K / 4u) + min(col, K - 4u) / 4u);
        return select(v, vec4<f32>(0.0), col >= K);
    }
    return load_x(m * (K / 4u) + col / 4u);
}

@compute @workgroup_size(WG)
fn kernel_mul_mv_TYPE_f32(ids: Ids) {
    prepare_x(ids);
    let t = thread_index(ids);
    let U = (args.mm.K + 31u) / 32u;
    let m0 = 0u;  // C covers all token rows (the backend uses this kernel for M <= C)
    let nc = min(C, args.mm.M - m0);
    let nr = args.part.n_rows;
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    // accumulators are indexed by constants only (after unrolling), so they stay in registers;
    // onehot(r) spreads a row's sum over the vec4 without a dynamic component index
    var acc: array<vec4<f32>, C * RV>;
    for (var u0 = lane; u0 < U; u0 += TPR * UNR) {
        for (var k = 0u; k < UNR; k++) {
            let uk = u0 + k * TPR;
            if (C == 1u) {
                // a unit past the row repeats the last one with x = 0: loads stay unconditional
                let u = min(uk, U - 1u);
                let live = select(0.0, 1.0, uk < U);
                var xv: array<vec4<f32>, 8>;
                for (var j = 0u; j < 8u; j++) {
                    xv[j] = x_at(m0, u, j) * live;
                }
                let xs = x_sums(&xv);
                for (var r = 0u; r < R; r++) {
                    // rows past the part repeat its last row (dropped below): no read out of
                    // bounds
                    let row = min(r0 + r, nr - 1u);
                    acc[r / 4u] += onehot(r % 4u) * dot_unit(row * U + u, &xv, xs);
                }
            } else if (uk < U) {
                for (var r = 0u; r < R; r++) {
                    let i = min(r0 + r, nr - 1u) * U + uk;
                    var wv: array<vec4<f32>, 8>;
                    for (var j = 0u; j < 8u; j++) {
                        wv[j] = dq4(i, j);
                    }
                    for (var c = 0u; c < C; c++) {
                        var s = 0.0;
                        if (c < nc) {
                            for (var j = 0u; j < 8u; j++) {
                                s += dot(wv[j], x_at(m0 + c, uk, j));
                            }
                        }
                        acc[c * RV + r / 4u] += onehot(r % 4u) * s;
                    }
                }
            }
        }
    }
    for (var c = 0u; c < C; c++) {
        for (var v = 0u; v < RV; v++) {
            let s = group_sum4(acc[c * RV + v], TPR, ids);
            if (lane == 0u && c < nc) {
                for (var q = 0u; q < min(4u, R); q++) {
                    let r = r0 + 4u * v + q;
                    if (r < nr) {
                        let o = (m0 + c) * args.mm.N + args.part.row0 + r;
                        y[o] = out_value(o, s[q]);
                    }
                }
            }
        }
    }
}

//! section plain
struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

//! use x_forms.wgsl plain

fn out_value(o: u32, s: f32) -> f32 {
    return s;
}

//! section res
struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(8) var<storage, read> res: array<f32>;

//! use x_forms.wgsl plain

fn out_value(o: u32, s: f32) -> f32 {
    return res[o] + s;
}

//! section glu
struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

//! use x_forms.wgsl glu

fn out_value(o: u32, s: f32) -> f32 {
    return s;
}

//! section glu_res
struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(8) var<storage, read> res: array<f32>;

//! use x_forms.wgsl glu

fn out_value(o: u32, s: f32) -> f32 {
    return res[o] + s;
}

//! section norm
struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
    norm: kargs_rms_norm,
}

//! use x_forms.wgsl norm

fn out_value(o: u32, s: f32) -> f32 {
    return s;
}
