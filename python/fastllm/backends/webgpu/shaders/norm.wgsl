// RMS norm of each group of `group` values of a row (the whole row, or one head for q/k norms):
// y = x / sqrt(mean(x^2) + eps) * w. One workgroup per (group, row). Grid: (n_cols / group, rows).

const WG: u32 = 256u;  // a row is one workgroup: wide, so each thread has few serial loads

@group(0) @binding(0) var<uniform> args: kargs_rms_norm;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn kernel_rms_norm_f32(ids: Ids) {
    let g = args.group;
    let base = ids.wg.y * args.n_cols + ids.wg.x * g;
    var s = 0.0;
    for (var k = ids.lid; k < g; k += WG) {
        let v = x[base + k];
        s += v * v;
    }
    let total = wg_sum(s, ids);
    let inv = 1.0 / sqrt(total / f32(g) + args.eps);
    for (var k = ids.lid; k < g; k += WG) {
        var v = x[base + k] * inv;
        if (args.has_weight != 0u) {
            v *= w[k];
        }
        y[base + k] = v;
    }
}
