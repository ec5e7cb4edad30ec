// Weight types as the kernels read them. GGUF blocks are repacked at load into separate u32
// arrays (repack.py: quant bits, scales, high bits), since WGSL loads nothing narrower
// than 32 bits; nothing is dequantized ahead of time.
//
// Each section gives one type the same interface, over "units": 32 weights of a row that one
// thread takes at a time (units need not be contiguous columns; their layout follows the block's
// own so that a unit's bits are one or two aligned vector loads). With U units per row, unit u of
// part-local row r has index i = r * U + u; blocks hold UPB units.
//   unit_col(u, j, U): column of weight 4j of unit u in its row of U units (weights 4j..4j+3
//                   are 4 columns)
//   dq4(i, j):      weights 4j..4j+3 of unit i
//   dot_unit(i, xv, xs): dot product of unit i with x, where xv[j] holds the 4 columns of
//                    unit_col and xs = x_sums(xv) (computed once per unit for all rows)
// Weight arrays bind at 3, 4, 5, 6, in the order repack.py lists them.
// A type with an integer form (section <type>_int, included by mul_mvq.wgsl and mul_mv_multi's
// q8 form only: it reads their x accessors xq16 and xmeta) adds
//   struct XQ, load_q8(u): unit u's x as quantize_x.wgsl's bytes and scales (once for all rows)
//   dot_q8(i, xv):         the dot product of unit i with it, the quants multiplied as integers

fn nib_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(0xFu));
}

fn nib_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w >> 4u, w >> 12u, w >> 20u, w >> 28u) & vec4<u32>(0xFu));
}

// two-bit fields at bit `shift` of each byte of w
fn crumbs(w: u32, shift: u32) -> vec4<f32> {
    let b = vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u);
    return vec4<f32>((b >> vec4<u32>(shift)) & vec4<u32>(3u));
}

// one bit at `shift` of each byte of w
fn bits(w: u32, shift: u32) -> vec4<f32> {
    let b = vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u);
    return vec4<f32>((b >> vec4<u32>(shift)) & vec4<u32>(1u));
}

// the four bytes of w as signed values
fn sbytes(w: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u),
                      bitcast<i32>(w));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// word w of a vector, by selects: a dynamic component index can make the compiler keep the
// vector in (slow, per-thread) local memory
fn word4(v: vec4<u32>, w: u32) -> u32 {
    return select(select(v.x, v.y, w == 1u), select(v.z, v.w, w == 3u), w >= 2u);
}

// byte k of a 16-byte vector
fn byte16(v: vec4<u32>, k: u32) -> u32 {
    return (word4(v, k >> 2u) >> (8u * (k & 3u))) & 0xFFu;
}

// Q4_K / Q5_K: (scale, scale, min, min) of sub-blocks 2c and 2c + 1 (c < 4) from a block's
// 16-byte head as repack.k_scale_bytes lays it out: byte c of words 1, 2, 3 holds sc[2c],
// sc[2c + 1] and mn[2c] in its low 6 bits and two bits each of mn[2c + 1] on top. The 6-bit
// values become floats through the mantissa (2^23 + n), not an int-to-float conversion.
fn k_scales2(hdr: vec4<u32>, c: u32) -> vec4<f32> {
    let v = vec3<u32>(hdr.y, hdr.z, hdr.w) >> vec3<u32>(8u * c);
    let lo = v & vec3<u32>(63u);
    let hi = (v >> vec3<u32>(6u)) & vec3<u32>(3u);
    let m1 = hi.x | (hi.y << 2u) | (hi.z << 4u);
    let u = vec4<u32>(lo.x, lo.y, lo.z, m1) | vec4<u32>(0x4B000000u);
    return bitcast<vec4<f32>>(u) - vec4<f32>(8388608.0);
}

fn hsum(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// bits 4j..4j+3 of w, one per lane
fn bits4(w: u32, j: u32) -> vec4<f32> {
    let b = w >> (4u * j);
    return vec4<f32>(vec4<u32>(b, b >> 1u, b >> 2u, b >> 3u) & vec4<u32>(1u));
}

// Sums of xv[0] + xv[1], xv[2] + xv[3], xv[4] + xv[5], xv[6] + xv[7]: the x sums every quant
// type's dot_unit needs (offsets, mins). mul_mv computes them once per unit, not once per row.
fn x_sums(xv: ptr<function, array<vec4<f32>, 8>>) -> vec4<f32> {
    return vec4<f32>(hsum((*xv)[0] + (*xv)[1]), hsum((*xv)[2] + (*xv)[3]),
                     hsum((*xv)[4] + (*xv)[5]), hsum((*xv)[6] + (*xv)[7]));
}

// Quant bits to floats without an int-to-float conversion (a quarter-rate instruction on
// NVIDIA): the bits are shifted into the top of an f32 mantissa under exponent 0, giving
// 1 + q / 2^n exactly. A dot product of such values with x is sum(x) + sum(q x) / 2^n, and the
// callers subtract sum(x) (from x_sums), so each weight costs a shift, a mask and an FMA.
const ONE: u32 = 0x3F800000u;

// the four low nibbles of w (bytes 0..3) as 1 + q / 16
fn fnib_lo(w: u32) -> vec4<f32> {
    let v = vec4<u32>(w << 19u, w << 11u, w << 3u, w >> 5u);
    return bitcast<vec4<f32>>((v & vec4<u32>(0x00780000u)) | vec4<u32>(ONE));
}

// the four high nibbles of w as 1 + q / 16
fn fnib_hi(w: u32) -> vec4<f32> {
    let v = vec4<u32>(w << 15u, w << 7u, w >> 1u, w >> 9u);
    return bitcast<vec4<f32>>((v & vec4<u32>(0x00780000u)) | vec4<u32>(ONE));
}

// the four bytes of w (read unsigned) as 1 + b / 256
fn fbytes(w: u32) -> vec4<f32> {
    let v = vec4<u32>(w << 15u, w << 7u, w >> 1u, w >> 9u);
    return bitcast<vec4<f32>>((v & vec4<u32>(0x007F8000u)) | vec4<u32>(ONE));
}

// the bytes of a word split into lanes (bits above each lane's byte are left for masks to drop)
fn lanes(w: u32) -> vec4<u32> {
    return vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u);
}

//! section f32
// rows zero-padded to a multiple of 32 columns
@group(0) @binding(3) var<storage, read> w0: array<vec4<f32>>;
const UPB: u32 = 1u;
const GUARD_K: bool = true;

// columns dealt to units interleaved (repack.py): weights 4j..4j+3 of unit u are columns
// 4 (u + j U).., so threads that take neighbouring units read neighbouring x vec4s
fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 4u * (u + j * U);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    return w0[8u * i + j];
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += dot(w0[8u * i + j], (*xv)[j]);
    }
    return s;
}

//! section f16
// rows zero-padded to a multiple of 32 columns; two halves per word
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
const UPB: u32 = 1u;
const GUARD_K: bool = true;

// columns dealt to units interleaved (repack.py): weights 4j..4j+3 of unit u are columns
// 4 (u + j U).., so threads that take neighbouring units read neighbouring x vec4s
fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 4u * (u + j * U);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let q = w0[4u * i + j / 2u];
    let a = select(q.xy, q.zw, (j & 1u) == 1u);
    return vec4<f32>(unpack2x16float(a.x), unpack2x16float(a.y));
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    var s = 0.0;
    for (var h = 0u; h < 4u; h++) {
        let q = w0[4u * i + h];
        s += dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), (*xv)[2u * h]);
        s += dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), (*xv)[2u * h + 1u]);
    }
    return s;
}

//! section bf16
// rows zero-padded to a multiple of 32 columns; two bfloat16 per word
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
const UPB: u32 = 1u;
const GUARD_K: bool = true;

fn bf2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xFFFF0000u));
}

// columns dealt to units interleaved (repack.py): weights 4j..4j+3 of unit u are columns
// 4 (u + j U).., so threads that take neighbouring units read neighbouring x vec4s
fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 4u * (u + j * U);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let q = w0[4u * i + j / 2u];
    let a = select(q.xy, q.zw, (j & 1u) == 1u);
    return vec4<f32>(bf2(a.x), bf2(a.y));
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    var s = 0.0;
    for (var h = 0u; h < 4u; h++) {
        let q = w0[4u * i + h];
        s += dot(vec4<f32>(bf2(q.x), bf2(q.y)), (*xv)[2u * h]);
        s += dot(vec4<f32>(bf2(q.z), bf2(q.w)), (*xv)[2u * h + 1u]);
    }
    return s;
}

//! section q8_0
// w0: the 32 signed bytes of a block; w1: its scale d, two halves per word
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<u32>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float(w1[i >> 1u])[i & 1u];
    return d * sbytes(w0[2u * i + j / 4u][j & 3u]);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    // flipping the sign bits makes the bytes q + 128, read as 1 + (q + 128) / 256:
    // sum(q x) = 256 s - 384 sum(x)
    let a = w0[2u * i] ^ vec4<u32>(0x80808080u);
    let b = w0[2u * i + 1u] ^ vec4<u32>(0x80808080u);
    var s = dot(fbytes(a.x), (*xv)[0]) + dot(fbytes(a.y), (*xv)[1]);
    s += dot(fbytes(a.z), (*xv)[2]) + dot(fbytes(a.w), (*xv)[3]);
    s += dot(fbytes(b.x), (*xv)[4]) + dot(fbytes(b.y), (*xv)[5]);
    s += dot(fbytes(b.z), (*xv)[6]) + dot(fbytes(b.w), (*xv)[7]);
    return unpack2x16float(w1[i >> 1u])[i & 1u] * (256.0 * s - 384.0 * hsum(xs));
}

//! section q8_0_int
// Integer form (mul_mvq.wgsl): the weight bytes are signed already
struct XQ {
    a: vec4<u32>,
    b: vec4<u32>,
    d: f32,
}

fn load_q8(u: u32) -> XQ {
    return XQ(xq16(32u * u), xq16(32u * u + 16u), xmeta(32u * u).x);
}

fn dot_q8(i: u32, xv: XQ) -> f32 {
    let a = w0[2u * i];
    let b = w0[2u * i + 1u];
    let s = dot4I8Packed(a.x, xv.a.x) + dot4I8Packed(a.y, xv.a.y) + dot4I8Packed(a.z, xv.a.z)
        + dot4I8Packed(a.w, xv.a.w) + dot4I8Packed(b.x, xv.b.x) + dot4I8Packed(b.y, xv.b.y)
        + dot4I8Packed(b.z, xv.b.z) + dot4I8Packed(b.w, xv.b.w);
    return unpack2x16float(w1[i >> 1u])[i & 1u] * xv.d * f32(s);
}

//! section q4_0
// w0: 16 bytes of nibbles (low nibbles are weights 0..15, high ones 16..31); w1: d as halves.
// x = d * (q - 8)
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<u32>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float(w1[i >> 1u])[i & 1u];
    let q = w0[i][j & 3u];
    return d * (select(nib_lo(q), nib_hi(q), j >= 4u) - 8.0);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let q = w0[i];
    var s = 0.0;
    for (var k = 0u; k < 4u; k++) {
        s += dot(fnib_lo(q[k]), (*xv)[k]) + dot(fnib_hi(q[k]), (*xv)[k + 4u]);
    }
    // nibbles read as 1 + q / 16: sum((q - 8) x) = 16 s - 24 sum(x)
    return unpack2x16float(w1[i >> 1u])[i & 1u] * (16.0 * s - 24.0 * hsum(xs));
}

//! section q4_1
// w0: nibbles as q4_0; w1: (d, m) as two halves. x = d * q + m
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<u32>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let dm = unpack2x16float(w1[i]);
    let q = w0[i][j & 3u];
    return dm.x * select(nib_lo(q), nib_hi(q), j >= 4u) + dm.y;
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let q = w0[i];
    var s = 0.0;
    for (var k = 0u; k < 4u; k++) {
        s += dot(fnib_lo(q[k]), (*xv)[k]) + dot(fnib_hi(q[k]), (*xv)[k + 4u]);
    }
    // nibbles read as 1 + q / 16: sum(q x) = 16 (s - sum(x))
    let dm = unpack2x16float(w1[i]);
    let sx = hsum(xs);
    return dm.x * 16.0 * (s - sx) + dm.y * sx;
}

//! section q5_0
// w0: low nibbles as q4_0; w1: the fifth bits (bit e for weight e); w2: d as halves.
// x = d * (q - 16)
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<u32>;
@group(0) @binding(5) var<storage, read> w2: array<u32>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float(w2[i >> 1u])[i & 1u];
    let q = w0[i][j & 3u];
    let lo = select(nib_lo(q), nib_hi(q), j >= 4u);
    return d * (lo + 16.0 * bits4(w1[i], j) - 16.0);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let q = w0[i];
    let h = w1[i];
    var s = 0.0;
    var sx = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        s += dot(nib_lo(q[k]) + 16.0 * bits4(h, k), (*xv)[k]);
        s += dot(nib_hi(q[k]) + 16.0 * bits4(h, k + 4u), (*xv)[k + 4u]);
        sx += (*xv)[k] + (*xv)[k + 4u];
    }
    return unpack2x16float(w2[i >> 1u])[i & 1u] * (s - 16.0 * hsum(sx));
}

//! section q5_1
// w0: low nibbles as q4_0; w1: ((d, m) as two halves, fifth bits). x = d * q + m
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec2<u32>>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let hdr = w1[i];
    let dm = unpack2x16float(hdr.x);
    let q = w0[i][j & 3u];
    let lo = select(nib_lo(q), nib_hi(q), j >= 4u);
    return dm.x * (lo + 16.0 * bits4(hdr.y, j)) + dm.y;
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let q = w0[i];
    let hdr = w1[i];
    var s = 0.0;
    var sx = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        s += dot(nib_lo(q[k]) + 16.0 * bits4(hdr.y, k), (*xv)[k]);
        s += dot(nib_hi(q[k]) + 16.0 * bits4(hdr.y, k + 4u), (*xv)[k + 4u]);
        sx += (*xv)[k] + (*xv)[k + 4u];
    }
    let dm = unpack2x16float(hdr.x);
    return dm.x * s + dm.y * hsum(sx);
}

//! section mxfp4
// w0: 16 bytes of nibbles as q4_0 (low nibbles are weights 0..15, high ones 16..31); w1: the
// E8M0 exponent e in the low byte of a half-word, two blocks per word (the other byte is not
// the block's). x = kvalues[q] * 2^(e - 128), kvalues = ggml's doubled E2M1 levels
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<u32>;
const UPB: u32 = 1u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    return 32u * u + 4u * j;
}

// 2^(e - 128) as ggml_e8m0_to_fp32_half builds it: e < 2 are the subnormals 2^-128, 2^-127
fn mx_scale(i: u32) -> f32 {
    let e = (w1[i >> 1u] >> (16u * (i & 1u))) & 0xFFu;
    return bitcast<f32>(select((e - 1u) << 23u, 0x00200000u << e, e < 2u));
}

// the four nibbles at bit `shift` of each byte of w: their magnitudes 0, 1, 2, 3, 4, 6, 8, 12
// (the E2M1 levels, doubled) are the nibbles of one word, indexed by a nibble's low three bits
// (no table in memory); bit 3 is the sign, moved to an f32's sign bit
struct Mx4 {
    mag: vec4<u32>,
    sign: vec4<u32>,
}

fn mx_split(w: u32, shift: u32) -> Mx4 {
    let n = (lanes(w) >> vec4<u32>(shift)) & vec4<u32>(0xFu);
    let mag = (vec4<u32>(0xC8643210u) >> ((n & vec4<u32>(7u)) << vec4<u32>(2u)))
        & vec4<u32>(0xFu);
    return Mx4(mag, (n & vec4<u32>(8u)) << vec4<u32>(28u));
}

// the signed levels as floats: 2^23 + mag read as an f32, less 2^23, is mag exactly (no
// int-to-float conversion, a quarter-rate instruction on NVIDIA)
fn mx4(w: u32, shift: u32) -> vec4<f32> {
    let m = mx_split(w, shift);
    let v = bitcast<vec4<f32>>(m.mag | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) | m.sign);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    return mx_scale(i) * mx4(w0[i][j & 3u], select(0u, 4u, j >= 4u));
}

// sum(level x) of four weights: with f = +-(1 + mag / 16) (mag at the top of the mantissa under
// exponent 0) and g = +-1 of the same signs, dot(f, x) - dot(g, x) = dot(level, x) / 16
fn mx_dot(w: u32, shift: u32, x: vec4<f32>) -> f32 {
    let m = mx_split(w, shift);
    let f = bitcast<vec4<f32>>((m.mag << vec4<u32>(19u)) | m.sign | vec4<u32>(ONE));
    let g = bitcast<vec4<f32>>(m.sign | vec4<u32>(ONE));
    return dot(f, x) - dot(g, x);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let q = w0[i];
    var s = 0.0;
    for (var k = 0u; k < 4u; k++) {
        s += mx_dot(q[k], 0u, (*xv)[k]) + mx_dot(q[k], 4u, (*xv)[k + 4u]);
    }
    return 16.0 * mx_scale(i) * s;
}

//! section mxfp4_int
// Integer form (mul_mvq.wgsl, mul_mvq_id.wgsl): the doubled E2M1 levels are integers (-12..12),
// so a block is a byte dot product with x's, times the two scales (as ggml's mxfp4 x q8 dots)
struct XQ {
    a: vec4<u32>,
    b: vec4<u32>,
    d: f32,
}

fn load_q8(u: u32) -> XQ {
    return XQ(xq16(32u * u), xq16(32u * u + 16u), xmeta(32u * u).x);
}

// the signed levels of the four nibbles at bit `shift` of each byte of w, as packed bytes
fn mx_i8(w: u32, shift: u32) -> u32 {
    let m = mx_split(w, shift);
    let b = select(m.mag, (vec4<u32>(0u) - m.mag) & vec4<u32>(0xFFu), m.sign != vec4<u32>(0u));
    return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}

fn dot_q8(i: u32, xv: XQ) -> f32 {
    let q = w0[i];
    var s = 0;
    for (var k = 0u; k < 4u; k++) {
        s += dot4I8Packed(mx_i8(q[k], 0u), xv.a[k]) + dot4I8Packed(mx_i8(q[k], 4u), xv.b[k]);
    }
    return mx_scale(i) * xv.d * f32(s);
}

//! section q2_K
// Block of 256: w0 the 64 bytes of 2-bit quants (byte l of half n holds weights
// 128n + 32t + l at bits 2t), as 8-byte pieces; w1 the 16 scale bytes (low nibble scale, high
// nibble min, one per 16 weights); w2 (d, dmin) as two halves. x = d * sc * q - dmin * mn.
// Unit (n, lq) = bytes 32n + 8lq .. +7 of the quants, all four shifts: weights
// 128n + 32t + 8lq + l', t < 4, l' < 8.
@group(0) @binding(3) var<storage, read> w0: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> w2: array<u32>;
const UPB: u32 = 8u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    let ui = u & 7u;
    return 256u * (u >> 3u) + 128u * (ui >> 2u) + 32u * (j >> 1u) + 8u * (ui & 3u) + 4u * (j & 1u);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let blk = i >> 3u;
    let ui = i & 7u;
    let t = j >> 1u;
    let q = w0[i][j & 1u];
    let sc = byte16(w1[blk], 8u * (ui >> 2u) + 2u * t + ((ui & 3u) >> 1u));
    let dm = unpack2x16float(w2[blk]);
    return dm.x * f32(sc & 0xFu) * crumbs(q, 2u * t) - dm.y * f32(sc >> 4u);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let blk = i >> 3u;
    let ui = i & 7u;
    let q = w0[i];
    let scs = w1[blk];
    let dm = unpack2x16float(w2[blk]);
    let s0 = 8u * (ui >> 2u) + ((ui & 3u) >> 1u);
    var sq = 0.0;
    var sm = 0.0;
    for (var t = 0u; t < 4u; t++) {
        let sc = byte16(scs, s0 + 2u * t);
        let a = (*xv)[2u * t];
        let b = (*xv)[2u * t + 1u];
        sq += f32(sc & 0xFu) * (dot(crumbs(q.x, 2u * t), a) + dot(crumbs(q.y, 2u * t), b));
        sm += f32(sc >> 4u) * hsum(a + b);
    }
    return dm.x * sq - dm.y * sm;
}

//! section q3_K
// Block of 256: w0 the 2-bit quants as q2_K; w1 the 32 hmask bytes (byte l holds the third bit
// of weight 128n + 32t + l at bit 4n + t), as 8-byte pieces; w2 (the 12 bytes of 6-bit scales,
// d as a half in the low half of the last word). x = d * (sc - 32) * (q - (bit ? 0 : 4)).
@group(0) @binding(3) var<storage, read> w0: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> w2: array<vec4<u32>>;
const UPB: u32 = 8u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    let ui = u & 7u;
    return 256u * (u >> 3u) + 128u * (ui >> 2u) + 32u * (j >> 1u) + 8u * (ui & 3u) + 4u * (j & 1u);
}

// 6-bit scale s (one per 16 weights) minus 32: low 4 bits from byte s % 8 (nibble s / 8), high
// 2 bits from byte 8 + s % 4 (bits 2 * (s / 4))
fn q3_scale(hdr: vec4<u32>, s: u32) -> f32 {
    let lo = (byte16(hdr, s & 7u) >> (4u * (s >> 3u))) & 0xFu;
    let hi = (byte16(hdr, 8u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
    return f32(i32(lo | (hi << 4u)) - 32);
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let blk = i >> 3u;
    let ui = i & 7u;
    let n = ui >> 2u;
    let lq = ui & 3u;
    let t = j >> 1u;
    let hdr = w2[blk];
    let d = unpack2x16float(hdr.w).x;
    let q = crumbs(w0[i][j & 1u], 2u * t) + 4.0 * bits(w1[4u * blk + lq][j & 1u], 4u * n + t);
    return d * q3_scale(hdr, 8u * n + 2u * t + (lq >> 1u)) * (q - 4.0);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let blk = i >> 3u;
    let ui = i & 7u;
    let n = ui >> 2u;
    let lq = ui & 3u;
    let q = w0[i];
    let h = w1[4u * blk + lq];
    let hdr = w2[blk];
    var s = 0.0;
    for (var t = 0u; t < 4u; t++) {
        let a = (*xv)[2u * t];
        let b = (*xv)[2u * t + 1u];
        let qa = crumbs(q.x, 2u * t) + 4.0 * bits(h.x, 4u * n + t);
        let qb = crumbs(q.y, 2u * t) + 4.0 * bits(h.y, 4u * n + t);
        let sc = q3_scale(hdr, 8u * n + 2u * t + (lq >> 1u));
        s += sc * (dot(qa, a) + dot(qb, b) - 4.0 * hsum(a + b));
    }
    return unpack2x16float(hdr.w).x * s;
}

//! section q4_K
// Block of 256: w0 the 128 bytes of nibbles (byte l of chunk c holds weight 64c + l in its low
// nibble and 64c + 32 + l in its high one); w1 ((d, dmin) as two halves, then the 6-bit
// scales and mins as k_scale_bytes re-lays them). x = d * sc * q - dmin * mn, (sc, mn) per 32
// weights.
// Unit (c, lh) = bytes 32c + 16lh .. +15, both nibbles: weights 64c + 16lh + l' (low) and
// 64c + 32 + 16lh + l' (high), l' < 16; its 16 bytes are w0[i].
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec4<u32>>;
const UPB: u32 = 8u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    let ui = u & 7u;
    return 256u * (u >> 3u) + 64u * (ui >> 1u) + 32u * (j >> 2u) + 16u * (ui & 1u) + 4u * (j & 3u);
}


fn dq4(i: u32, j: u32) -> vec4<f32> {
    let hdr = w1[i >> 3u];
    let dm = unpack2x16float(hdr.x);
    let hi = j >= 4u;
    let sm = k_scales2(hdr, (i & 7u) >> 1u);
    let q = w0[i][j & 3u];
    return dm.x * select(sm.x, sm.y, hi) * select(nib_lo(q), nib_hi(q), hi)
        - dm.y * select(sm.z, sm.w, hi);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let hdr = w1[i >> 3u];
    let q = w0[i];
    let sm = k_scales2(hdr, (i & 7u) >> 1u);
    var flo = 0.0;
    var fhi = 0.0;
    for (var k = 0u; k < 4u; k++) {
        flo += dot(fnib_lo(q[k]), (*xv)[k]);
        fhi += dot(fnib_hi(q[k]), (*xv)[k + 4u]);
    }
    // nibbles read as 1 + q / 16: sum(q x) = 16 (f - sum(x))
    let xlo = xs.x + xs.y;
    let xhi = xs.z + xs.w;
    let qlo = 16.0 * (flo - xlo);
    let qhi = 16.0 * (fhi - xhi);
    let dm = unpack2x16float(hdr.x);
    return dm.x * (sm.x * qlo + sm.y * qhi) - dm.y * (sm.z * xlo + sm.w * xhi);
}

//! section q4_K_int
// Integer form (mul_mvq.wgsl): the unit's low nibbles cover 16 columns of x block 2c and its
// high ones 16 of block 2c + 1, so each half has one x scale; the min term uses x's exact sums
struct XQ {
    lo: vec4<u32>,
    hi: vec4<u32>,
    m: vec4<f32>,  // (d of the low half's block, d of the high's, low half's sum, high's sum)
}

fn load_q8(u: u32) -> XQ {
    let ui = u & 7u;
    let c = 256u * (u >> 3u) + 64u * (ui >> 1u) + 16u * (ui & 1u);
    let ml = xmeta(c);
    let mh = xmeta(c + 32u);
    let odd = (ui & 1u) == 1u;
    return XQ(xq16(c), xq16(c + 32u),
              vec4<f32>(ml.x, mh.x, select(ml.y, ml.z, odd), select(mh.y, mh.z, odd)));
}

fn dot_q8(i: u32, xv: XQ) -> f32 {
    let hdr = w1[i >> 3u];
    let q = w0[i];
    let sm = k_scales2(hdr, (i & 7u) >> 1u);
    let lo = q & vec4<u32>(0x0F0F0F0Fu);
    let hi = (q >> vec4<u32>(4u)) & vec4<u32>(0x0F0F0F0Fu);
    let il = dot4I8Packed(lo.x, xv.lo.x) + dot4I8Packed(lo.y, xv.lo.y)
        + dot4I8Packed(lo.z, xv.lo.z) + dot4I8Packed(lo.w, xv.lo.w);
    let ih = dot4I8Packed(hi.x, xv.hi.x) + dot4I8Packed(hi.y, xv.hi.y)
        + dot4I8Packed(hi.z, xv.hi.z) + dot4I8Packed(hi.w, xv.hi.w);
    let dm = unpack2x16float(hdr.x);
    return dm.x * (sm.x * xv.m.x * f32(il) + sm.y * xv.m.y * f32(ih))
        - dm.y * (sm.z * xv.m.z + sm.w * xv.m.w);
}

//! section q5_K
// As q4_K, plus w2: the 32 qh bytes (byte l holds the fifth bit of weight 64c + l at bit 2c and
// of 64c + 32 + l at bit 2c + 1), as 16-byte pieces. x = d * sc * q - dmin * mn.
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> w2: array<vec4<u32>>;
const UPB: u32 = 8u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    let ui = u & 7u;
    return 256u * (u >> 3u) + 64u * (ui >> 1u) + 32u * (j >> 2u) + 16u * (ui & 1u) + 4u * (j & 3u);
}


fn dq4(i: u32, j: u32) -> vec4<f32> {
    let blk = i >> 3u;
    let ui = i & 7u;
    let hdr = w1[blk];
    let dm = unpack2x16float(hdr.x);
    let hi = j >= 4u;
    let s = 2u * (ui >> 1u) + select(0u, 1u, hi);
    let sm = k_scales2(hdr, ui >> 1u);
    let q = w0[i][j & 3u];
    let h = bits(w2[2u * blk + (ui & 1u)][j & 3u], s);
    return dm.x * select(sm.x, sm.y, hi) * (select(nib_lo(q), nib_hi(q), hi) + 16.0 * h)
        - dm.y * select(sm.z, sm.w, hi);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let blk = i >> 3u;
    let ui = i & 7u;
    let hdr = w1[blk];
    let q = w0[i];
    let h = w2[2u * blk + (ui & 1u)];
    let c2 = 2u * (ui >> 1u);
    let sm = k_scales2(hdr, ui >> 1u);
    var qlo = 0.0;
    var qhi = 0.0;
    var xlo = vec4<f32>(0.0);
    var xhi = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        qlo += dot(nib_lo(q[k]) + 16.0 * bits(h[k], c2), (*xv)[k]);
        qhi += dot(nib_hi(q[k]) + 16.0 * bits(h[k], c2 + 1u), (*xv)[k + 4u]);
        xlo += (*xv)[k];
        xhi += (*xv)[k + 4u];
    }
    let dm = unpack2x16float(hdr.x);
    return dm.x * (sm.x * qlo + sm.y * qhi) - dm.y * (sm.z * hsum(xlo) + sm.w * hsum(xhi));
}

//! section q6_K
// Block of 256 in halves n of 128: w0 the 128 ql bytes (byte 64n + l holds weight
// 128n + l (low nibble) and 128n + 64 + l (high), byte 64n + 32 + l weights 128n + 32 + l and
// 128n + 96 + l), as 8-byte pieces; w1 the 64 qh bytes (byte 32n + l holds the top two bits of
// weight 128n + 32t + l at bits 2t), as 8-byte pieces; w2 the 16 signed scales; w3 d as halves.
// x = d * sc * (q - 32). Unit (n, lq): weights 128n + 32t + 8lq + l', t < 4, l' < 8.
@group(0) @binding(3) var<storage, read> w0: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> w1: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> w2: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> w3: array<u32>;
const UPB: u32 = 8u;
const GUARD_K: bool = false;

fn unit_col(u: u32, j: u32, U: u32) -> u32 {
    let ui = u & 7u;
    return 256u * (u >> 3u) + 128u * (ui >> 2u) + 32u * (j >> 1u) + 8u * (ui & 3u) + 4u * (j & 1u);
}

fn q6_scale(scs: vec4<u32>, s: u32) -> f32 {
    return f32(extractBits(bitcast<i32>(word4(scs, s >> 2u)), 8u * (s & 3u), 8u));
}

// the scales of quarters t = 0..3 of unit (n, lq): bytes 8n + (lq >> 1) + 2t of the 16, which
// sit in words 2n and 2n + 1; signed bytes become floats through the mantissa ((b ^ 0x80) is
// b + 128 read unsigned: 2^23 + 128 + b)
fn q6_scales4(scs: vec4<u32>, n: u32, lq: u32) -> vec4<f32> {
    let wa = select(scs.x, scs.z, n == 1u);
    let wb = select(scs.y, scs.w, n == 1u);
    let sh = 8u * (lq >> 1u);
    let b = vec4<u32>(wa >> sh, wa >> (sh + 16u), wb >> sh, wb >> (sh + 16u)) & vec4<u32>(0xFFu);
    return bitcast<vec4<f32>>((b ^ vec4<u32>(0x80u)) | vec4<u32>(0x4B000000u))
        - vec4<f32>(8388736.0);
}

// 6-bit weights of quarter t as 1 + q / 64: the nibble (high one if `hi`) of each byte of ql
// goes to mantissa bits 17..20, the two bits at 2t of each byte of qh to bits 21..22
fn q6_f(ql: u32, hi: bool, qh: u32, t: u32) -> vec4<f32> {
    let lo = lanes(ql) << vec4<u32>(select(17u, 13u, hi));
    let top = lanes(qh) << vec4<u32>(21u - 2u * t);
    let m = (lo & vec4<u32>(0x001E0000u)) | (top & vec4<u32>(0x00600000u));
    return bitcast<vec4<f32>>(m | vec4<u32>(ONE));
}

fn dq4(i: u32, j: u32) -> vec4<f32> {
    let blk = i >> 3u;
    let ui = i & 7u;
    let n = ui >> 2u;
    let lq = ui & 3u;
    let t = j >> 1u;
    let ql = w0[16u * blk + 8u * n + 4u * (t & 1u) + lq][j & 1u];
    let lo = select(nib_lo(ql), nib_hi(ql), t >= 2u);
    let q = lo + 16.0 * crumbs(w1[i][j & 1u], 2u * t);
    let d = unpack2x16float(w3[blk >> 1u])[blk & 1u];
    return d * q6_scale(w2[blk], 8u * n + 2u * t + (lq >> 1u)) * (q - 32.0);
}

// unit i's words: the ql of its quarters t = 0..3 come from (la low, lb low, la high, lb high),
// h holds their qh; the four quarters' scales and the block's d
struct Q6Unit {
    la: vec2<u32>,
    lb: vec2<u32>,
    h: vec2<u32>,
    sc: vec4<f32>,
    d: f32,
}

fn q6_unit(i: u32) -> Q6Unit {
    let blk = i >> 3u;
    let ui = i & 7u;
    let n = ui >> 2u;
    let lq = ui & 3u;
    let base = 16u * blk + 8u * n + lq;
    return Q6Unit(w0[base], w0[base + 4u], w1[i], q6_scales4(w2[blk], n, lq),
                  unpack2x16float(w3[blk >> 1u])[blk & 1u]);
}

fn dot_unit(i: u32, xv: ptr<function, array<vec4<f32>, 8>>, xs: vec4<f32>) -> f32 {
    let w = q6_unit(i);
    var s = 0.0;
    for (var t = 0u; t < 4u; t++) {
        let src = select(w.la, w.lb, (t & 1u) == 1u);
        let hi = t >= 2u;
        let fa = q6_f(src.x, hi, w.h.x, t);
        let fb = q6_f(src.y, hi, w.h.y, t);
        // weights read as 1 + q / 64: sum((q - 32) x) = 64 f - 96 sum(x)
        let f = dot(fa, (*xv)[2u * t]) + dot(fb, (*xv)[2u * t + 1u]);
        s += w.sc[t] * (64.0 * f - 96.0 * xs[t]);
    }
    return w.d * s;
}

//! section q6_K_int
// Integer form (mul_mvq.wgsl): quarter t of the unit is 8 columns of x block 4n + t (words
// 2 (lq & 1) .. + 1 of its 16-column vector); the weights' -32 offset becomes
// 32 * sum(x bytes), counted once per unit for all rows
struct XQ {
    x0: vec2<u32>,
    x1: vec2<u32>,
    x2: vec2<u32>,
    x3: vec2<u32>,
    d: vec4<f32>,  // x scale of each quarter's block
    s: vec4<i32>,  // 32 * the sum of each quarter's 8 x bytes
}

fn q6_xpart(c: u32, odd: bool) -> vec2<u32> {
    let v = xq16(c);
    return select(v.xy, v.zw, odd);
}

fn q6_xsum(x: vec2<u32>) -> i32 {
    return 32 * (dot4I8Packed(x.x, 0x01010101u) + dot4I8Packed(x.y, 0x01010101u));
}

fn load_q8(u: u32) -> XQ {
    let ui = u & 7u;
    let c = 256u * (u >> 3u) + 128u * (ui >> 2u) + 8u * (ui & 3u);
    let odd = (ui & 1u) == 1u;
    let x0 = q6_xpart(c, odd);
    let x1 = q6_xpart(c + 32u, odd);
    let x2 = q6_xpart(c + 64u, odd);
    let x3 = q6_xpart(c + 96u, odd);
    let d = vec4<f32>(xmeta(c).x, xmeta(c + 32u).x, xmeta(c + 64u).x, xmeta(c + 96u).x);
    return XQ(x0, x1, x2, x3, d, vec4<i32>(q6_xsum(x0), q6_xsum(x1), q6_xsum(x2), q6_xsum(x3)));
}

// 6-bit weights of quarter t as bytes: the nibble at `sh` of each ql byte, the two bits at 2t
// of each qh byte on top; their dot product with x's bytes, less the offset
fn q6_qdot(ql: vec2<u32>, sh: u32, qh: vec2<u32>, t: u32, x: vec2<u32>, xs: i32) -> i32 {
    let a = ((ql.x >> sh) & 0x0F0F0F0Fu) | (((qh.x >> (2u * t)) & 0x03030303u) << 4u);
    let b = ((ql.y >> sh) & 0x0F0F0F0Fu) | (((qh.y >> (2u * t)) & 0x03030303u) << 4u);
    return dot4I8Packed(a, x.x) + dot4I8Packed(b, x.y) - xs;
}

fn dot_q8(i: u32, xv: XQ) -> f32 {
    let w = q6_unit(i);
    let sc = w.sc * xv.d;
    let s = sc.x * f32(q6_qdot(w.la, 0u, w.h, 0u, xv.x0, xv.s.x))
        + sc.y * f32(q6_qdot(w.lb, 0u, w.h, 1u, xv.x1, xv.s.y))
        + sc.z * f32(q6_qdot(w.la, 4u, w.h, 2u, xv.x2, xv.s.z))
        + sc.w * f32(q6_qdot(w.lb, 4u, w.h, 3u, xv.x3, xv.s.w));
    return w.d * s;
}

