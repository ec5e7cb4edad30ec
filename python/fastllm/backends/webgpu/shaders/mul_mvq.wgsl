// Mat-vec of one token row whose x was quantized to bytes by quantize_x.wgsl: the weights'
// integer quants meet x's bytes in dot4I8Packed (four products and their sum in one
// instruction where the device has integer dot products), and the scales are applied once per
// run of 16 or 32 products. The float mat-vec (mul_mv.wgsl) spends most of its time turning
// quant bits into floats, not reading them (benchmarks/NOTES.md, sections 6 and 7).
//
// Types that have the integer form define in quants.wgsl: struct XQ (a unit's x: its bytes and
// scales), load_q8(u) (unit u's x, loaded once for all R rows) and dot_q8(i, xv) (unit i's
// dot product with it). Layout and grid as mul_mv.wgsl's one-token path: groups of TPR threads
// compute R consecutive rows, taking the row's units in turn.
//
// Several token rows (rows mode: C rows a workgroup, grid y = the group of C rows, M rows in
// all): each workgroup reads its weight rows once for its C token rows, x's rows one after
// another in xq (quantize_x.wgsl), y's rows of N values.
//
// Variants: plain y = W x; res y = W x + res (the residual add after an output projection);
// resq as res, and also the next rms_norm's consumer's x, quantized (see the section).

const WG: u32 = 64u;
const TPR: u32 = 32u;
const R: u32 = 4u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const RV: u32 = (R + 3u) / 4u;
const C: u32 = 1u;  // token rows a workgroup

struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// the token row's first vec4 in xq (several rows: quantize_x.wgsl's layout, row after row)
var<private> xbase: u32 = 0u;

// x's bytes at columns col .. col + 15 (col a multiple of 16); quantize_x.wgsl's layout
fn xq16(col: u32) -> vec4<u32> {
    return xq[xbase + (col >> 4u)];
}

// (d, first-half sum, second-half sum, 0) of the block of 32 columns that holds column col
fn xmeta(col: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(xq[xbase + args.mm.K / 16u + (col >> 5u)]);
}

@compute @workgroup_size(WG)
fn kernel_mul_mvq_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = args.mm.K / 32u;
    let nr = args.part.n_rows;
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    let c0 = ids.wg.y * C;  // this workgroup's first token row
    let xs = args.mm.K / 16u + args.mm.K / 32u;  // vec4s of a token row in xq
    var acc: array<vec4<f32>, RV * C>;
    for (var u = lane; u < U; u += TPR) {
        for (var c = 0u; c < C; c++) {
            // token rows past M repeat the last one (dropped below)
            xbase = min(c0 + c, args.mm.M - 1u) * xs;
            let xv = load_q8(u);
            for (var r = 0u; r < R; r++) {
                // rows past the part repeat its last row (dropped below): no read out of bounds
                let row = min(r0 + r, nr - 1u);
                acc[c * RV + r / 4u] += onehot(r % 4u) * dot_q8(row * U + u, xv);
            }
        }
    }
    for (var c = 0u; c < C; c++) {
        for (var v = 0u; v < RV; v++) {
            let s = group_sum4(acc[c * RV + v], TPR, ids);
            if (lane == 0u && c0 + c < args.mm.M) {
                for (var q = 0u; q < min(4u, R); q++) {
                    let r = r0 + 4u * v + q;
                    if (r < nr) {
                        let o = (c0 + c) * args.mm.N + args.part.row0 + r;
                        let v = out_value(o, s[q]);
                        y[o] = v;
                        keep_row(c, r, v);
                    }
                }
            }
        }
    }
    after_rows(ids);
}

//! section plain
fn out_value(o: u32, s: f32) -> f32 {
    return s;
}

fn keep_row(c: u32, r: u32, v: f32) {}

fn after_rows(ids: Ids) {}

//! section res
@group(0) @binding(8) var<storage, read> res: array<f32>;

fn out_value(o: u32, s: f32) -> f32 {
    return res[o] + s;
}

fn keep_row(c: u32, r: u32, v: f32) {}

fn after_rows(ids: Ids) {}

//! section resq
// y = W x + res, and y * nw (nw: the weight of the rms_norm that comes next) quantized into xo
// for the integer mat-vec that reads rms_norm(y) * nw: each block of 32 rows as quantize_x.wgsl
// lays it out, with the block's sum of y^2 as the fourth scale. Norming scales a row by one
// positive factor, which leaves the bytes as they are and scales every dot product with them:
// the reader adds up the sums of squares and applies 1 / rms to its results (PRENORM in
// mul_mv_multi.wgsl), so no quantize_x dispatch runs between the two. A workgroup's RWG rows
// are whole blocks (the backend's shape); the part is the whole weight (row0 = 0). Rows mode:
// each of the C token rows keeps its RWG values and is written as its own row of xo.
@group(0) @binding(8) var<storage, read> res: array<f32>;
@group(0) @binding(9) var<storage, read> nw: array<f32>;
@group(0) @binding(10) var<storage, read_write> xo: array<vec4<u32>>;
const RWG: u32 = R * (WG / TPR);
var<workgroup> kept: array<f32, RWG * C>;

fn out_value(o: u32, s: f32) -> f32 {
    return res[o] + s;
}

fn keep_row(c: u32, r: u32, v: f32) {
    kept[c * RWG + r % RWG] = v;
}

fn after_rows(ids: Ids) {
    workgroupBarrier();
    let t = thread_index(ids);
    let nr = args.part.n_rows;
    let b = (ids.wg.z * ids.nwg.x + ids.wg.x) * (RWG / 32u) + t;
    let c0 = ids.wg.y * C;
    if (t < RWG / 32u && 32u * b < nr) {
        for (var tc = 0u; tc < C; tc++) {
            if (c0 + tc >= max(args.mm.M, 1u)) {
                break;
            }
            var v: array<vec4<f32>, 8>;
            var ss = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let i = tc * RWG + 32u * t + 4u * j;
                let y4 = vec4<f32>(kept[i], kept[i + 1u], kept[i + 2u], kept[i + 3u]);
                ss += dot(y4, y4);
                let c = 32u * b + 4u * j;
                v[j] = y4 * vec4<f32>(nw[c], nw[c + 1u], nw[c + 2u], nw[c + 3u]);
            }
            let q = quant_block(&v);
            let base = (c0 + tc) * (nr / 16u + nr / 32u);  // token row c0 + tc of xo
            xo[base + 2u * b] = q.lo;
            xo[base + 2u * b + 1u] = q.hi;
            xo[base + nr / 16u + b] = vec4<u32>(q.scales.xyz, bitcast<u32>(ss));
        }
    }
}
