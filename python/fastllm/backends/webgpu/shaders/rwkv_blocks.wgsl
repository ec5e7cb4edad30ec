// RWKV-6's block-diagonal product (backends/base.py matmul_blocks): W is n_blocks blocks of m
// rows of k values, stored as n_blocks * m rows of one weight (split into parts by rows like any
// matrix); y[t, row] = dot(x[t, b*k : (b+1)*k], W[row, :]) with b = row / m. quants.wgsl supplies
// the weight type (TYPE in the entry point's name becomes it). The products are small (a LoRA of
// rank 32 to 64), so one thread computes one output. Grid: 2-D over M * part rows threads.

const WG: u32 = 64u;

struct BlockArgs {
    mb: kargs_mul_mat_blocks,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: BlockArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn kernel_mul_mat_blocks_TYPE_f32(ids: Ids) {
    let nr = args.part.n_rows;
    let i = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    if (i >= args.mb.M * nr) {
        return;
    }
    let t = i / nr;
    let r = i % nr;  // part-local row
    let row = args.part.row0 + r;
    let K = args.mb.k;
    let U = (K + 31u) / 32u;
    let x0 = (t * args.mb.n_blocks + row / args.mb.m) * K / 4u;  // K % 4 == 0
    var s = 0.0;
    for (var u = 0u; u < U; u++) {
        for (var j = 0u; j < 8u; j++) {
            let col = unit_col(u, j, U);
            if (col < K) {
                s += dot(dq4(r * U + u, j), x4[x0 + col / 4u]);
            }
        }
    }
    y[t * args.mb.n_blocks * args.mb.m + row] = s;
}
