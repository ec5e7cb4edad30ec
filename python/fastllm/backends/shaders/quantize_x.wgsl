// One token row quantized to signed bytes for the integer mat-vecs (mul_mvq.wgsl,
// mul_mv_multi.wgsl's q8 form): each block of 32 values becomes q = round(x / d) with
// d = max |x| / 127, as llama.cpp's q8_1 does for its integer-dot mat-vecs, plus the block's
// scale and the sums of its two halves of 16, kept as floats (the K-quants' min terms use the
// exact sums, not the rounded ones).
//
// Layout of xq for a row of K values (the contract with the readers' xq16 / xmeta; blocks are
// made by common.wgsl's quant_block, which attn_decode.wgsl's reduce_q8 shares):
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

@compute @workgroup_size(WG)
fn kernel_quantize_x_f32(ids: Ids) {
    prepare_x(ids);
    let nb = args.mm.K / 32u;
    let b = (ids.wg.z * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    if (b >= nb) {
        return;
    }
    var v: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        v[j] = load_x(8u * b + j);
    }
    let q = quant_block(&v);
    xq[2u * b] = q.lo;
    xq[2u * b + 1u] = q.hi;
    xq[2u * nb + b] = q.scales;
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
