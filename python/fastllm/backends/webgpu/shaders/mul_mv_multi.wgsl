// Up to three mat-vecs that read the same normed token row, in one dispatch:
// y_s = W_s (rms_norm(x) * nw) for the slots s = 0, 1, 2 (the q, k and v projections, or gate
// and up). A decode step of a small model is bound by how many dependent dispatches it has, and
// by each one's latency (norm, loads, reduction) more than by its bytes: one dispatch for q, k
// and v costs about what one of them did alone (benchmarks/NOTES.md, section 7).
//
// shaders.multi_source assembles the module: each slot's weight type section of
// quants.wgsl, with its names suffixed by the slot (dot_unit -> dot_unit_1, w0 -> w0_1) and its
// arrays bound at 13 + 4 s, so the slots may have different types; the `slot` and `store`
// sections below once per slot (SLOT -> s; `slotq` for `slot` in the q8 form); and an entry
// point that sends each workgroup to its slot's rows (kargs_mv_slots: slot s takes workgroups
// [wg_end of s - 1, wg_end of s)).
//
// Within a slot the work is mul_mv.wgsl's one-token path: groups of TPR threads compute R
// consecutive rows, taking the row's units in turn; the norm's 1 / rms comes from the squares of
// the x the group loads, applied to its sums. The q8 form (sections q8 and slotq) is
// mul_mvq.wgsl's instead: x quantized to bytes beforehand (normed by quantize_x.wgsl, or not yet
// normed by the producer of x, mul_mvq.wgsl's resq), for slots whose types all have the integer
// form.
//
// Rows mode (the q8 form only; a batched decode step, grid y = groups of C token rows): each
// workgroup reads its weight rows once for its C token rows, x's rows one after another in xq
// (quantize_x.wgsl's layout), each slot's output rows of its n_rows values one after another.

const WG: u32 = 64u;
const C: u32 = 1u;  // token rows a workgroup
const TPR: u32 = 64u;
const R: u32 = 2u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const RV: u32 = (R + 3u) / 4u;

struct MatArgs {
    mm: kargs_mul_mat,
    norm: kargs_rms_norm,
    slots: kargs_mv_slots,
}

@group(0) @binding(0) var<uniform> args: MatArgs;

// 1 / sqrt(mean(x^2) + eps) as kernel_rms_norm_f32, from the row's sum of squares
fn inv_rms(sumsq: f32) -> f32 {
    return 1.0 / sqrt(sumsq / f32(args.mm.K) + args.norm.eps);
}

//! section norm
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> nw4: array<vec4<f32>>;
// No workgroup reduces the row for the norm before its loop (each of thousands would read the
// whole row first): each thread adds up the squares of the x it loads anyway (a group of TPR
// threads loads the whole row once), and the group's sums are scaled by 1 / rms at the end,
// since rms_norm(x) * nw = (x * nw) / rms (H100, 8B F16 decode: 142 -> 144 tok/s).
var<private> ssq: f32;

fn prepare_x(ids: Ids) {
    ssq = 0.0;
}

// x * nw at vec4 i (0 where not live), its square added to ssq
fn load_xn(i: u32, live: bool) -> vec4<f32> {
    let v = select(vec4<f32>(0.0), x4[i], live);
    ssq += dot(v, v);
    return v * nw4[i];
}

// inv_rms from the group's squares (every thread of the group calls it)
fn late_scale(ids: Ids) -> f32 {
    return inv_rms(group_sum4(vec4<f32>(ssq, 0.0, 0.0, 0.0), TPR, ids).x);
}

//! section q8
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
// the token row's first vec4 in xq (rows mode: row after row)
var<private> xbase: u32 = 0u;
// x's bytes were made from y * nw, not yet normed (mul_mvq.wgsl's resq): the results are
// scaled by 1 / rms(y), from the sums of squares its producer left with each block
const PRENORM: bool = false;

fn prepare_x(ids: Ids) {}

// inv_rms of y (1 without PRENORM), for every thread of a group of TPR: each adds up the
// sums of squares of every TPR-th block (of the token row at xbase), then the group
fn prenorm_scale(lane: u32, ids: Ids) -> f32 {
    if (!PRENORM) {
        return 1.0;
    }
    let nb = args.mm.K / 32u;
    var ss = 0.0;
    for (var b = lane; b < nb; b += TPR) {
        ss += bitcast<f32>(xq[xbase + args.mm.K / 16u + b].w);
    }
    return inv_rms(group_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0), TPR, ids).x);
}

// as mul_mvq.wgsl: x's bytes at columns col .. col + 15, and its block's (d, sums)
fn xq16(col: u32) -> vec4<u32> {
    return xq[xbase + (col >> 4u)];
}

fn xmeta(col: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(xq[xbase + args.mm.K / 16u + (col >> 5u)]);
}

//! section slot

fn x_at_SLOT(u: u32, j: u32) -> vec4<f32> {
    let col = unit_col_SLOT(u, j, (args.mm.K + 31u) / 32u);
    if (GUARD_K_SLOT) {  // padded float rows only, as mul_mv.wgsl's x_at
        return load_xn(min(col, args.mm.K - 4u) / 4u, col < args.mm.K);
    }
    return load_xn(col / 4u, true);
}

// rows of workgroup g (counted from the slot's first) of the slot's nr rows
fn mv_SLOT(g: u32, nr: u32, ids: Ids) {
    let t = thread_index(ids);
    let U = (args.mm.K + 31u) / 32u;
    let lane = t % TPR;
    let r0 = (g * (WG / TPR) + t / TPR) * R;
    var acc: array<vec4<f32>, RV * C>;  // C is 1 in the float form
    for (var u = lane; u < U; u += TPR) {
        var xv: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            xv[j] = x_at_SLOT(u, j);
        }
        let xs = x_sums(&xv);
        for (var r = 0u; r < R; r++) {
            // rows past the slot repeat its last row (dropped below): no read out of bounds
            let row = min(r0 + r, nr - 1u);
            acc[r / 4u] += onehot(r % 4u) * dot_unit_SLOT(row * U + u, &xv, xs);
        }
    }
    store_SLOT(acc, 0u, 0u, r0, nr, lane, ids, late_scale(ids));
}

//! section slotq

// as mv_SLOT, over x's bytes (of C token rows from row wg.y * C)
fn mv_SLOT(g: u32, nr: u32, ids: Ids) {
    let t = thread_index(ids);
    let U = args.mm.K / 32u;
    let lane = t % TPR;
    let r0 = (g * (WG / TPR) + t / TPR) * R;
    let c0 = ids.wg.y * C;
    let xs = args.mm.K / 16u + args.mm.K / 32u;  // vec4s of a token row in xq
    var acc: array<vec4<f32>, RV * C>;
    for (var u = lane; u < U; u += TPR) {
        for (var c = 0u; c < C; c++) {
            // token rows past M repeat the last one (dropped by store)
            xbase = min(c0 + c, args.mm.M - 1u) * xs;
            let xv = load_q8_SLOT(u);
            for (var r = 0u; r < R; r++) {
                let row = min(r0 + r, nr - 1u);
                acc[c * RV + r / 4u] += onehot(r % 4u) * dot_q8_SLOT(row * U + u, xv);
            }
        }
    }
    for (var c = 0u; c < C; c++) {
        xbase = min(c0 + c, args.mm.M - 1u) * xs;  // PRENORM: the token row's sums of squares
        store_SLOT(acc, c, c0 + c, r0, nr, lane, ids, prenorm_scale(lane, ids));
    }
}

//! section store
// (after slot or slotq, once per slot) the rows' sums: each group of TPR threads adds up its
// partial sums and its first thread stores the rows inside the slot (with BIAS_SLOT, plus the
// slot's bias: the bias adds of Qwen2's and gpt-oss's q, k and v, not dispatched)
@group(0) @binding(OUT_SLOT) var<storage, read_write> y_SLOT: array<f32>;
@group(0) @binding(BIASB_SLOT) var<storage, read> b_SLOT: array<f32>;
const BIAS_SLOT: bool = false;

fn bias_SLOT(r: u32) -> f32 {
    if (BIAS_SLOT) {
        return b_SLOT[r];
    }
    return 0.0;
}

// acc's sums of workgroup token row c, which is token row tok (rows mode; else 0 and 0)
fn store_SLOT(acc: array<vec4<f32>, RV * C>, c: u32, tok: u32, r0: u32, nr: u32, lane: u32,
              ids: Ids, scale: f32) {
    for (var v = 0u; v < RV; v++) {
        let s = group_sum4(acc[c * RV + v], TPR, ids) * scale;
        if (lane == 0u && tok < max(args.mm.M, 1u)) {
            for (var q = 0u; q < min(4u, R); q++) {
                let r = r0 + 4u * v + q;
                if (r < nr) {
                    y_SLOT[tok * nr + r] = s[q] + bias_SLOT(r);
                }
            }
        }
    }
}

//! section glu
// Gate and up (slots 0 and 1, over the quantized normed row) joined: a workgroup computes 32
// consecutive rows of both, TPR threads per row for both weights, and writes silu(gate) * up of
// those rows as one block of the down projection's x (common.wgsl's quant_block) into xo, so
// the gate and up outputs never reach memory and no quantize_x pass runs between them.
// WG = 32 * TPR; the rows (N) a multiple of 32. Rows mode: C token rows a workgroup (grid y),
// each written as its own row of xo (quantize_x.wgsl's layout of rows).
@group(0) @binding(10) var<storage, read_write> xo: array<vec4<u32>>;
var<workgroup> gv: array<f32, 32u * C>;

@compute @workgroup_size(WG)
fn kernel_mul_mv_glu_q8(ids: Ids) {
    let t = thread_index(ids);
    let U = args.mm.K / 32u;
    let lane = t % TPR;
    let b = ids.wg.z * ids.nwg.x + ids.wg.x;  // block of 32 rows
    let row = 32u * b + t / TPR;
    let nr = args.mm.N;
    let r = min(row, nr - 1u);  // a short last block repeats its last row (dropped below)
    let c0 = ids.wg.y * C;
    let xs = args.mm.K / 16u + args.mm.K / 32u;  // vec4s of a token row in xq
    var acc: array<vec2<f32>, C>;
    for (var u = lane; u < U; u += TPR) {
        for (var c = 0u; c < C; c++) {
            xbase = min(c0 + c, args.mm.M - 1u) * xs;  // past M: the last row (not stored)
            acc[c].x += dot_q8_0(r * U + u, load_q8_0(u));
            acc[c].y += dot_q8_1(r * U + u, load_q8_1(u));
        }
    }
    for (var c = 0u; c < C; c++) {
        xbase = min(c0 + c, args.mm.M - 1u) * xs;
        let s = group_sum4(vec4<f32>(acc[c], 0.0, 0.0), TPR, ids) * prenorm_scale(lane, ids);
        if (lane == 0u) {
            gv[32u * c + t / TPR] = select(0.0, swiglu(s.x, s.y), row < nr);
        }
    }
    workgroupBarrier();
    if (t < C && c0 + t < max(args.mm.M, 1u)) {  // thread c writes token row c's block
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            let i = 32u * t + 4u * j;
            v[j] = vec4<f32>(gv[i], gv[i + 1u], gv[i + 2u], gv[i + 3u]);
        }
        let q = quant_block(&v);
        let base = (c0 + t) * (nr / 16u + nr / 32u);
        xo[base + 2u * b] = q.lo;
        xo[base + 2u * b + 1u] = q.hi;
        xo[base + nr / 16u + b] = q.scales;
    }
}
