// One token row quantized to signed bytes for the integer mat-vecs (mul_mvq.wgsl,
// mul_mv_multi.wgsl's q8 form): each block of 32 values becomes q = round(x / d) with
// d = max |x| / 127, as llama.cpp's q8_1 does for its integer-dot mat-vecs, plus the block's
// scale and the sums of its two halves of 16, kept as floats (the K-quants' min terms use the
// exact sums, not the rounded ones).
//
// Layout of xq for a row of K values (the contract with the readers' xq16 / xmeta):
//   vec4<u32> h < K / 16:            the bytes of columns 16h .. 16h + 15, in column order
//   vec4<u32> K / 16 + b, b < K / 32: (d, sum of columns 32b .. +15, sum of 32b + 16 .. +31, 0)
//                                     of block b, as f32 bits
// One thread per block; x arrives as the consumer would have read it (sections below): as is,
// rms-normed (each workgroup reduces the row itself), or as silu(gate) * up.

const WG: u32 = 64u;

struct MatArgs {
    mm: kargs_mul_mat,
    norm: kargs_rms_norm,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;

fn pack16(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>, inv: f32) -> vec4<u32> {
    return vec4<u32>(pack4xI8(vec4<i32>(round(a * inv))), pack4xI8(vec4<i32>(round(b * inv))),
                     pack4xI8(vec4<i32>(round(c * inv))), pack4xI8(vec4<i32>(round(d * inv))));
}

@compute @workgroup_size(WG)
fn kernel_quantize_x_f32(ids: Ids) {
    prepare_x(ids);
    let nb = args.mm.K / 32u;
    let b = (ids.wg.z * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    if (b >= nb) {
        return;
    }
    var v: array<vec4<f32>, 8>;
    var amax = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        v[j] = load_x(8u * b + j);
        amax = max(amax, abs(v[j]));
    }
    let d = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    xq[2u * b] = pack16(v[0], v[1], v[2], v[3], inv);
    xq[2u * b + 1u] = pack16(v[4], v[5], v[6], v[7], inv);
    let one = vec4<f32>(1.0);
    let s0 = dot(v[0] + v[1] + v[2] + v[3], one);
    let s1 = dot(v[4] + v[5] + v[6] + v[7], one);
    xq[2u * nb + b] = bitcast<vec4<u32>>(vec4<f32>(d, s0, s1, 0.0));
}

//! section plain
fn prepare_x(ids: Ids) {}

fn load_x(i: u32) -> vec4<f32> {
    return x4[i];
}

//! section norm
@group(0) @binding(9) var<storage, read> nw4: array<vec4<f32>>;
var<private> inv_rms: f32;

// as kernel_rms_norm_f32 over the one token row: x / sqrt(mean(x^2) + eps) * nw
fn prepare_x(ids: Ids) {
    var s = 0.0;
    for (var i = ids.lid; i < args.mm.K / 4u; i += WG) {
        let v = x4[i];
        s += dot(v, v);
    }
    inv_rms = 1.0 / sqrt(wg_sum(s, ids) / f32(args.mm.K) + args.norm.eps);
}

fn load_x(i: u32) -> vec4<f32> {
    return x4[i] * inv_rms * nw4[i];
}

//! section glu
@group(0) @binding(7) var<storage, read> up4: array<vec4<f32>>;

fn prepare_x(ids: Ids) {}

// as kernel_swiglu_f32: g / (1 + exp(-g)) * up
fn load_x(i: u32) -> vec4<f32> {
    let g = x4[i];
    return g / (1.0 + exp(-g)) * up4[i];
}
