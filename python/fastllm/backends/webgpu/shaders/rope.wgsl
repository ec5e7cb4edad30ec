// Rotary embedding at positions pos + row. One thread per pair of values of a head: pairs
// (2i, 2i + 1) in normal mode, (i, i + n_rot / 2) in NeoX mode, for i < n_rot / 2; the values
// past n_rot are copied. The angle is (pos + row) * inv_freq[i]: the backend computes
// inv_freq = freq_scale * base^(-2i / n_rot) / freq_factors[i] in float64 once, so the kernel
// rounds only the product (a pow() per thread would cost accuracy at long positions).
// Grid: 2-D over n_rows * n_head * head_dim / 2 threads.

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> args: kargs_rope;
@group(0) @binding(1) var<storage, read> step: kargs_step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn kernel_rope_f32(ids: Ids) {
    let gid = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    let half = args.head_dim / 2u;
    if (gid >= args.n_rows * args.n_head * half) {
        return;
    }
    let i = gid % half;
    let head = gid / half;  // row * n_head + h
    let row = head / args.n_head;
    let base = head * args.head_dim;
    let nr2 = args.n_rot / 2u;
    if (i >= nr2) {
        y[base + 2u * i] = x[base + 2u * i];
        y[base + 2u * i + 1u] = x[base + 2u * i + 1u];
        return;
    }
    let theta = f32(step.pos + row) * inv_freq[i];
    let c = cos(theta);
    let s = sin(theta);
    var ia = base + 2u * i;
    var ib = ia + 1u;
    if (args.neox != 0u) {
        ia = base + i;
        ib = base + i + nr2;
    }
    let a = x[ia];
    let b = x[ib];
    y[ia] = a * c - b * s;
    y[ib] = a * s + b * c;
}
