// The integer form of mul_mv_id.wgsl's plain variant (decode): each pair's x row was quantized
// to bytes by quantize_x.wgsl (one row per token row, or per pair for x of (n, k, m)), and the
// chosen expert's Q8_0 / Q4_K / Q6_K quants meet it in dot4I8Packed, as mul_mvq.wgsl does for
// one matrix. Pair p = row * k + j reads the m rows of expert ids[p] and writes y[p * m ..];
// grid (row blocks of the expert as (x, z), pairs as y); a weight split into parts runs one
// dispatch per part, each storing the rows its part holds.

const WG: u32 = 64u;
const TPR: u32 = 32u;
const R: u32 = 4u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const RV: u32 = (R + 3u) / 4u;

struct IdArgs {
    id: kargs_mul_mv_id,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: IdArgs;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> eids: array<i32>;

// the pair's x row's first vec4 in xq (quantize_x.wgsl's layout, row after row)
var<private> xbase: u32 = 0u;

// x's bytes at columns col .. col + 15 (col a multiple of 16); quantize_x.wgsl's layout
fn xq16(col: u32) -> vec4<u32> {
    return xq[xbase + (col >> 4u)];
}

// (d, first-half sum, second-half sum, 0) of the block of 32 columns that holds column col
fn xmeta(col: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(xq[xbase + args.id.K / 16u + (col >> 5u)]);
}

@compute @workgroup_size(WG)
fn kernel_mul_mvq_id_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = args.id.K / 32u;
    let m = args.id.m;
    let p = ids.wg.y;
    let g0 = u32(clamp(eids[p], 0, i32(args.id.n_expert) - 1)) * m;
    xbase = select(p / args.id.k, p, args.id.x_per_pair != 0u) * (args.id.K / 16u + U);
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    let lo = args.part.row0;
    var acc: array<vec4<f32>, RV>;
    for (var u = lane; u < U; u += TPR) {
        let xv = load_q8(u);
        for (var r = 0u; r < R; r++) {
            // rows past the expert or the part are read clamped and never stored
            let g = g0 + min(r0 + r, m - 1u);
            let row = min(max(g, lo) - lo, args.part.n_rows - 1u);
            acc[r / 4u] += onehot(r % 4u) * dot_q8(row * U + u, xv);
        }
    }
    for (var v = 0u; v < RV; v++) {
        let s = group_sum4(acc[v], TPR, ids);
        if (lane == 0u) {
            for (var q = 0u; q < min(4u, R); q++) {
                let r = r0 + 4u * v + q;
                let g = g0 + r;
                if (r < m && g >= lo && g < lo + args.part.n_rows) {
                    y[p * m + r] = s[q];
                }
            }
        }
    }
}
