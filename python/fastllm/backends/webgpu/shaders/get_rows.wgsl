// Embedding lookup: out[i, :] = W[ids[i], :] as f32, for the ids that fall in this weight part
// (another dispatch writes the rest). Ids are clamped into the table. One thread per 4 values.
// Grid: (ceil(8 * units per row / WG), n_rows).

const WG: u32 = 64u;

struct RowsArgs {
    g: kargs_get_rows,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: RowsArgs;
@group(0) @binding(1) var<storage, read> idx: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn kernel_get_rows_TYPE(ids: Ids) {
    let tok = ids.wg.y;
    let q = ids.wg.x * WG + ids.lid;
    let n_cols = args.g.n_cols;
    let U = (n_cols + 31u) / 32u;
    if (q >= 8u * U) {
        return;
    }
    let id = u32(clamp(idx[tok], 0, i32(args.g.n_vocab) - 1));
    if (id < args.part.row0 || id >= args.part.row0 + args.part.n_rows) {
        return;
    }
    let u = q / 8u;
    let j = q % 8u;
    let v = dq4((id - args.part.row0) * U + u, j);
    let col = unit_col(u, j, U);
    for (var c = 0u; c < 4u; c++) {
        if (col + c < n_cols) {
            out[tok * n_cols + col + c] = v[c];
        }
    }
}
