// Index of each row's maximum, the first one on ties (as numpy). One workgroup per row: threads
// scan strided columns, then a tree in workgroup memory keeps (value, index) pairs.

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> args: kargs_argmax;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

@compute @workgroup_size(WG)
fn kernel_argmax_f32(ids: Ids) {
    let t = ids.lid;
    let row = ids.wg.x;
    let n = args.n_cols;
    var v = MASKED;
    var vi = 0xFFFFFFFFu;
    for (var c = t; c < n; c += WG) {
        let e = x[row * n + c];
        if (e > v || vi == 0xFFFFFFFFu) {
            v = e;
            vi = c;
        }
    }
    bv[t] = v;
    bi[t] = vi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            let ov = bv[t + s];
            let oi = bi[t + s];
            let better = ov > bv[t] || (ov == bv[t] && oi < bi[t]);
            if (oi != 0xFFFFFFFFu && (bi[t] == 0xFFFFFFFFu || better)) {
                bv[t] = ov;
                bi[t] = oi;
            }
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        out[row] = i32(bi[0]);
    }
}
