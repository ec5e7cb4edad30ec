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
// Several rows (rows mode's integer mat-vecs, grid y = the row): row r's layout starts at word
// r * (K / 4 + K / 8).
// x arrives as the consumer would have read it (sections below): as is, rms-normed (each
// workgroup reduces the row itself), or as silu(gate) * up.

const WG: u32 = 256u;

struct MatArgs {
    mm: kargs_mul_mat,
    norm: kargs_rms_norm,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;

// Eight threads per block, four values each: the block's largest |x| and its half sums come
// from reductions over the eight (common.wgsl's quant_block does the same work in one thread,
// where a block is made by a kernel that holds it whole).
@compute @workgroup_size(WG)
fn kernel_quantize_x_f32(ids: Ids) {
    xoff = ids.wg.y * (args.mm.K / 4u);
    let base = ids.wg.y * (args.mm.K / 4u + args.mm.K / 8u);
    prepare_x(ids);
    let nb = args.mm.K / 32u;
    let t = thread_index(ids);
    let g = (ids.wg.z * ids.nwg.x + ids.wg.x) * WG + t;
    let b = g / 8u;
    let j = g % 8u;
    let live = b < nb;
    // threads past the row load the last block and write nothing: every thread reaches the
    // reductions
    let v = select(vec4<f32>(0.0), load_x(8u * min(b, nb - 1u) + j), live);
    let a = group_max4(abs(v), 8u, ids);
    let d = max(max(a.x, a.y), max(a.z, a.w)) / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    let hs = dot(v, vec4<f32>(1.0));
    let s = group_sum4(select(vec4<f32>(0.0, hs, 0.0, 0.0), vec4<f32>(hs, 0.0, 0.0, 0.0),
                              j < 4u), 8u, ids);
    if (live) {
        xq[base + 8u * b + j] = pack4xI8(vec4<i32>(round(v * inv)));
        if (j == 0u) {
            let o = base + args.mm.K / 4u + 4u * b;
            xq[o] = bitcast<u32>(d);
            xq[o + 1u] = bitcast<u32>(s.x);
            xq[o + 2u] = bitcast<u32>(s.y);
            xq[o + 3u] = 0u;
        }
    }
}

//! section plain
//! use x_forms.wgsl plain

//! section norm
//! use x_forms.wgsl norm

//! section glu
//! use x_forms.wgsl glu
