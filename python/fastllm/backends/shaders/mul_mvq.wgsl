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
// Variants: plain y = W x; res y = W x + res (the residual add after an output projection).

const WG: u32 = 64u;
const TPR: u32 = 32u;
const R: u32 = 4u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const RV: u32 = (R + 3u) / 4u;

struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// x's bytes at columns col .. col + 15 (col a multiple of 16); quantize_x.wgsl's layout
fn xq16(col: u32) -> vec4<u32> {
    return xq[col >> 4u];
}

// (d, first-half sum, second-half sum, 0) of the block of 32 columns that holds column col
fn xmeta(col: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(xq[args.mm.K / 16u + (col >> 5u)]);
}

@compute @workgroup_size(WG)
fn kernel_mul_mvq_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = args.mm.K / 32u;
    let nr = args.part.n_rows;
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    var acc: array<vec4<f32>, RV>;
    for (var u = lane; u < U; u += TPR) {
        let xv = load_q8(u);
        for (var r = 0u; r < R; r++) {
            // rows past the part repeat its last row (dropped below): no read out of bounds
            let row = min(r0 + r, nr - 1u);
            acc[r / 4u] += onehot(r % 4u) * dot_q8(row * U + u, xv);
        }
    }
    for (var v = 0u; v < RV; v++) {
        let s = group_sum4(acc[v], TPR, ids);
        if (lane == 0u) {
            for (var q = 0u; q < min(4u, R); q++) {
                let r = r0 + 4u * v + q;
                if (r < nr) {
                    let o = args.part.row0 + r;
                    y[o] = out_value(o, s[q]);
                }
            }
        }
    }
}

//! section plain
fn out_value(o: u32, s: f32) -> f32 {
    return s;
}

//! section res
@group(0) @binding(8) var<storage, read> res: array<f32>;

fn out_value(o: u32, s: f32) -> f32 {
    return res[o] + s;
}
