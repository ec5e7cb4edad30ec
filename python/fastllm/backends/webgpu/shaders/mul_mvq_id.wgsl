// The integer form of mul_mv_id.wgsl's plain variant (decode): each pair's x row was quantized
// to bytes by quantize_x.wgsl (one row per token row, or per pair for x of (n, k, m)), and the
// chosen expert's Q8_0 / Q4_K / Q6_K quants meet it in dot4I8Packed, as mul_mvq.wgsl does for
// one matrix. Pair p = row * k + j reads the m rows of expert ids[p] and writes y[p * m ..];
// grid (row blocks of the expert as (x, z), pairs as y); a weight split into parts runs one
// dispatch per part, each storing the rows its part holds.
// Variants: plain (above); glu, gate and up of the chosen experts at once (section glu).

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

// pair p's x row (sets xbase: the token row's, or the pair's own for x of (n, k, m)) and the
// first weight row of its expert, whose rows are `stride` apart
fn pair_start(p: u32, stride: u32) -> u32 {
    let U = args.id.K / 32u;
    xbase = select(p / args.id.k, p, args.id.x_per_pair != 0u) * (args.id.K / 16u + U);
    return u32(clamp(eids[p], 0, i32(args.id.n_expert) - 1)) * stride;
}

//! section plain
@compute @workgroup_size(WG)
fn kernel_mul_mvq_id_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = args.id.K / 32u;
    let m = args.id.m;
    let p = ids.wg.y;
    let g0 = pair_start(p, m);
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

//! section glu
// Gate and up of the chosen experts in one dispatch (decode): a workgroup takes 32 consecutive
// rows of its pair's expert in both weights (TPR threads a row; up's names end in _1, its
// arrays bound after gate's, shaders.slot_section) and writes silu(gate) * up of those rows as
// one block of the pair's row of the down projection's quantized x (xo: quantize_x.wgsl's
// layout, a row of m values per pair), so neither output reaches memory and no swiglu or
// quantize_x dispatch runs before the down projection. WG = 32 * TPR; m a multiple of 32; both
// weights of one type, each in one part. FUSED: one weight of 2m rows an expert, gate rows
// then up rows (Qwen3.5's ffn_gate_up_exps), bound as both.
const FUSED: bool = false;
@group(0) @binding(10) var<storage, read_write> xo: array<vec4<u32>>;
var<workgroup> gv: array<f32, 32>;

@compute @workgroup_size(WG)
fn kernel_mul_mvq_id_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = args.id.K / 32u;
    let m = args.id.m;
    let p = ids.wg.y;
    let g0 = pair_start(p, select(m, 2u * m, FUSED));
    let lane = t % TPR;
    let b = ids.wg.z * ids.nwg.x + ids.wg.x;  // block of 32 rows of the expert
    let r = 32u * b + t / TPR;
    let row = g0 + min(r, m - 1u);  // a short last block repeats its last row (dropped below)
    let urow = row + select(0u, m, FUSED);
    var acc = vec4<f32>(0.0);
    for (var u = lane; u < U; u += TPR) {
        acc.x += dot_q8(row * U + u, load_q8(u));
        acc.y += dot_q8_1(urow * U + u, load_q8_1(u));
    }
    let s = group_sum4(acc, TPR, ids);
    if (lane == 0u) {
        gv[t / TPR] = select(0.0, swiglu(s.x, s.y), r < m);
    }
    workgroupBarrier();
    if (t == 0u) {
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            v[j] = vec4<f32>(gv[4u * j], gv[4u * j + 1u], gv[4u * j + 2u], gv[4u * j + 3u]);
        }
        let q = quant_block(&v);
        let base = p * (m / 16u + m / 32u);
        xo[base + 2u * b] = q.lo;
        xo[base + 2u * b + 1u] = q.hi;
        xo[base + m / 16u + b] = q.scales;
    }
}
