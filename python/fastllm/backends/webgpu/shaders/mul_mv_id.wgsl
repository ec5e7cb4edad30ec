// Mat-vecs over each row's chosen experts (ggml's mul_mat_id; Graph.matmul_id): pair
// p = row * k + j multiplies x row p (x_per_pair) or p / k by the m rows of expert ids[p]'s
// matrix, which are rows ids[p] * m .. of the weight (all experts' matrices stacked), and writes
// y[p * m ..]. A weight split into parts (backend.py) runs one dispatch per part; each writes
// the rows its part holds. The weight type's code is quants.wgsl's, as in mul_mv.wgsl.
//
// Variants:
//   plain    a workgroup per (row block, pair): decode, where each row's k experts are read once
//            (the grid's y is the pair, x the expert's row blocks as in mul_mv.wgsl)
//   grouped  a workgroup per (row block, slot of the chunk table): up to C pairs of one expert,
//            listed by kernel_moe_group_f32 (moe.wgsl): a prefill decodes each weight unit once
//            for C token rows of the same expert, as mul_mv.wgsl's C > 1 form. The table has
//            ceil(pairs / C) + E slots; the unused ones (at most E) do nothing.

const WG: u32 = 64u;
const TPR: u32 = 32u;
const R: u32 = 4u;  // a multiple of 4 or less than 4: sums travel as vec4s, 4 rows each
const C: u32 = 1u;
const RV: u32 = (R + 3u) / 4u;

struct IdArgs {
    id: kargs_mul_mv_id,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: IdArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> eids: array<i32>;

fn x_at(xrow: u32, u: u32, j: u32) -> vec4<f32> {
    let K = args.id.K;
    let col = unit_col(u, j, (K + 31u) / 32u);
    if (GUARD_K) {  // padded float rows: a clamped load and a select (mul_mv.wgsl)
        let v = x4[xrow * (K / 4u) + min(col, K - 4u) / 4u];
        return select(v, vec4<f32>(0.0), col >= K);
    }
    return x4[xrow * (K / 4u) + col / 4u];
}

fn x_row(p: u32) -> u32 {
    return select(p / args.id.k, p, args.id.x_per_pair != 0u);
}

// the part-local index of whole-weight row g, clamped into the part (rows outside it are read
// but never stored)
fn part_row(g: u32) -> u32 {
    return min(max(g, args.part.row0) - args.part.row0, args.part.n_rows - 1u);
}

fn in_part(g: u32) -> bool {
    return g >= args.part.row0 && g < args.part.row0 + args.part.n_rows;
}

fn expert_of(p: u32) -> u32 {
    return u32(clamp(eids[p], 0, i32(args.id.n_expert) - 1));
}

//! section plain
@compute @workgroup_size(WG)
fn kernel_mul_mv_id_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = (args.id.K + 31u) / 32u;
    let m = args.id.m;
    let p = ids.wg.y;
    let g0 = expert_of(p) * m;
    let xrow = x_row(p);
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    var acc: array<vec4<f32>, RV>;
    for (var u = lane; u < U; u += TPR) {
        var xv: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            xv[j] = x_at(xrow, u, j);
        }
        let xs = x_sums(&xv);
        for (var r = 0u; r < R; r++) {
            let i = part_row(g0 + min(r0 + r, m - 1u)) * U + u;
            acc[r / 4u] += onehot(r % 4u) * dot_unit(i, &xv, xs);
        }
    }
    for (var v = 0u; v < RV; v++) {
        let s = group_sum4(acc[v], TPR, ids);
        if (lane == 0u) {
            for (var q = 0u; q < min(4u, R); q++) {
                let r = r0 + 4u * v + q;
                if (r < m && in_part(g0 + r)) {
                    y[p * m + r] = s[q];
                }
            }
        }
    }
}

//! section grouped
@group(0) @binding(8) var<storage, read> groups: array<u32>;

@compute @workgroup_size(WG)
fn kernel_mul_mv_id_TYPE_f32(ids: Ids) {
    let t = thread_index(ids);
    let U = (args.id.K + 31u) / 32u;
    let m = args.id.m;
    let E = args.id.n_expert;
    let slot = E + 1u + args.id.n_pairs + 2u * ids.wg.y;  // kernel_moe_group_f32's table
    let e = min(groups[slot], E - 1u);
    let first = groups[slot + 1u];
    let end = groups[e + 1u];
    let nc = select(0u, min(C, end - first), groups[slot] < E && first < end);
    var pairs: array<u32, C>;
    for (var c = 0u; c < C; c++) {
        pairs[c] = groups[E + 1u + min(first + c, max(end, 1u) - 1u)];
    }
    let g0 = e * m;
    let lane = t % TPR;
    let r0 = ((ids.wg.z * ids.nwg.x + ids.wg.x) * (WG / TPR) + t / TPR) * R;
    var acc: array<vec4<f32>, C * RV>;
    if (nc > 0u) {
        for (var u = lane; u < U; u += TPR) {
            for (var r = 0u; r < R; r++) {
                let i = part_row(g0 + min(r0 + r, m - 1u)) * U + u;
                var wv: array<vec4<f32>, 8>;
                for (var j = 0u; j < 8u; j++) {
                    wv[j] = dq4(i, j);
                }
                for (var c = 0u; c < C; c++) {
                    var s = 0.0;
                    if (c < nc) {
                        let xrow = x_row(pairs[c]);
                        for (var j = 0u; j < 8u; j++) {
                            s += dot(wv[j], x_at(xrow, u, j));
                        }
                    }
                    acc[c * RV + r / 4u] += onehot(r % 4u) * s;
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
                    if (r < m && in_part(g0 + r)) {
                        y[pairs[c] * m + r] = s[q];
                    }
                }
            }
        }
    }
}
