// Prefill mat-mat: y[m, row0 + n] = dot(x[m, :], W[n, :]) for a tile of BM tokens x BN rows of
// one weight part, one unit (32 columns) of K at a time through workgroup memory. The weight
// tile is dequantized on its way in (quants.wgsl's dq4), so weights stay quantized in memory.
// Both tiles are stored k-major as vec4s of four tokens (rows), so a thread's outputs, TQ token
// quads x RQ row quads (4 x 4 to 8 x 8), take TQ + RQ vec4 loads per k for 16 TQ RQ
// multiply-adds. A step fills the tiles with UPS units (a last step past K reads x as 0).
// Grid: (ceil(n_rows / BN), ceil(M / BM), SPLITK); WG = BM * BN / (16 TQ RQ).
//
// With SPLITK > 1 (grids too small to fill the GPU) workgroup z sums its share of the units
// into plane z of a scratch buffer bound as y, and kernel_mul_mm_sum adds the planes.
//
// Variants (sections at the end), applied as the results leave (the mat-mat's own store, or
// the planes' sum when K is split), each in place of a separate dispatch that read y and
// another array and wrote a third: `plain` stores y; `res` stores y + res (a residual
// stream); `swiglu` and `geglu` store act(gate) * y, y being up (the FFN's gate/up pair).
//
// TILE is f16 when the device has shader-f16 (half the workgroup memory) and then the
// multiply-adds are f16 too: packed vec4<f16> arithmetic is half the instructions of f32
// multiply-adds and needs no conversions after the tile loads (H100, 512 tokens, 14336 x 4096
// q4_K: 24.3 -> 28.0 TFLOP/s). Each unit's 32 products per output are summed in TILE and folded
// into f32 sums once per unit, so rounding grows with 32 terms, not with K (~1e-3 of the
// largest output against f32 sums).
//
// A thread fills the tiles four tokens (rows) at a time: four vec4s of x (four rows' dq4)
// transposed in registers become four whole-vec4 stores at consecutive addresses, where one
// scalar store per value had eight threads of a warp aiming at one bank (28.0 -> 31.2).

const WG: u32 = 256u;
const BM: u32 = 64u;
const BN: u32 = 64u;
const TQ: u32 = 1u;  // token quads per thread
const RQ: u32 = 1u;  // row quads per thread
const UPS: u32 = 1u;  // units of K per tile step (one barrier pair per step)
const SPLITK: u32 = 1u;
const KU: u32 = 8u;  // k steps per pass of the k loop, a divisor of 32 (see the loop)
const X_LAST: bool = false;  // (see fill)
alias TILE = f32;

struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> planes: array<f32>;  // kernel_mul_mm_sum's input

var<workgroup> at: array<vec4<TILE>, UPS * 8u * BM>;  // [k][m / 4], 32 UPS k
var<workgroup> bt: array<vec4<TILE>, UPS * 8u * BN>;  // [k][n / 4]

// quads (4 tokens or rows x 4 k) of a tile step, and how many each thread fills
const XQ: u32 = UPS * 2u * BM;
const WQ: u32 = UPS * 2u * BN;
const XR: u32 = (XQ + WG - 1u) / WG;
const WR: u32 = (WQ + WG - 1u) / WG;

// The fill's loops count to constants (XR, WR), not from t in steps of WG: a count the
// compiler can see lets it unroll them and issue a thread's global loads together (counted
// from t, each pass waited for its own loads). With X_LAST the x tile is stored after the
// weight tile's dequantization, so its loads are in flight meanwhile (H100, 512 tokens, 8 x 8
// tiles: q4_K, q6_K and q8_0 +1-8%, f16 weights -2-6%: matmul_shapes.MM_X_LAST).
fn fill(u0: u32, m0: u32, n0: u32, t: u32) {
    let M = args.mm.M;
    let K = args.mm.K;
    let U = (K + 31u) / 32u;
    let nr = args.part.n_rows;
    var v = array<vec4<f32>, 4u * XR>();  // (zeroed explicitly: naga does not re-zero a
    // `var` without an initializer on every pass of a loop)
    for (var r = 0u; r < XR; r++) {
        let q = t + r * WG;
        let j = q / (BM / 4u);  // k quad of the step
        // a unit past K repeats the last with x = 0 (its weights are read, not used)
        let u = min(u0 + j / 8u, U - 1u);
        let col = unit_col(u, j % 8u, U);
        for (var i = 0u; i < 4u; i++) {
            let mm = m0 + 4u * (q % (BM / 4u)) + i;
            if ((XQ % WG == 0u || q < XQ) && mm < M && (!GUARD_K || col < K)
                && u0 + j / 8u < U) {
                v[4u * r + i] = x4[mm * (K / 4u) + col / 4u];
            }
        }
    }
    if (!X_LAST) {
        store_x(&v, t);
    }
    for (var r = 0u; r < WR; r++) {
        let q = t + r * WG;
        if (WQ % WG == 0u || q < WQ) {
            let nq = q % (BN / 4u);
            let j = q / (BN / 4u);
            let u = min(u0 + j / 8u, U - 1u);
            var w = array<vec4<f32>, 4>();
            for (var i = 0u; i < 4u; i++) {
                // rows past the part repeat its last row (their outputs are not stored)
                w[i] = dq4(min(n0 + 4u * nq + i, nr - 1u) * U + u, j % 8u);
            }
            let wt = transpose(mat4x4<f32>(w[0], w[1], w[2], w[3]));  // wt[c]: component c
            for (var c = 0u; c < 4u; c++) {
                bt[(4u * j + c) * (BN / 4u) + nq] = vec4<TILE>(wt[c]);
            }
        }
    }
    if (X_LAST) {
        store_x(&v, t);
    }
}

// x quads of the fill's v (four tokens' vec4s each) transposed into k-major tile rows
fn store_x(v: ptr<function, array<vec4<f32>, 4u * XR>>, t: u32) {
    for (var r = 0u; r < XR; r++) {
        let q = t + r * WG;
        if (XQ % WG == 0u || q < XQ) {
            let j = q / (BM / 4u);
            let vt = transpose(mat4x4<f32>((*v)[4u * r], (*v)[4u * r + 1u],
                                           (*v)[4u * r + 2u], (*v)[4u * r + 3u]));
            for (var c = 0u; c < 4u; c++) {
                at[(4u * j + c) * (BM / 4u) + q % (BM / 4u)] = vec4<TILE>(vt[c]);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn kernel_mul_mm_TYPE_f32(ids: Ids) {
    let t = ids.lid;
    let U = (args.mm.K + 31u) / 32u;
    let n0 = ids.wg.x * BN;
    let m0 = ids.wg.y * BM;
    // a thread owns token quads tm + i BM / (4 TQ) and row quads tn + j BN / (4 RQ), so the
    // threads of a warp read consecutive vec4s of each tile row (no bank conflicts)
    let tn = t % (BN / (4u * RQ));
    let tm = t / (BN / (4u * RQ));
    // acc[(4 i + c) RQ + j]: token 4 (tm + i BM / (4 TQ)) + c, row quad j. Every index below is
    // a constant once the constant-count loops unroll (a dynamically indexed array would live
    // in memory).
    var acc: array<vec4<f32>, 4u * TQ * RQ>;
    // this workgroup's units: whole steps, the last split takes what is left
    let share = ((U + SPLITK - 1u) / SPLITK + UPS - 1u) / UPS * UPS;
    let plane = ids.wg.z * args.mm.M * args.mm.N;
    for (var u0 = ids.wg.z * share; u0 < min(U, (ids.wg.z + 1u) * share); u0 += UPS) {
        fill(u0, m0, n0, t);
        workgroupBarrier();
        for (var us = 0u; us < UPS; us++) {
            var p = array<vec4<TILE>, 4u * TQ * RQ>();  // (zeroed explicitly, as in fill)
            // KU k steps per pass: the driver does not unroll a loop of 32 this size, and one
            // k per pass waited on each pass's tile loads; a constant inner count of KU
            // unrolls, its loads issue together at constant offsets (H100, 512 tokens, KU 8
            // vs 1: 8 x 8 tiles +3-12%, 4 x 4 +1-6%; 16 and 32 lost: matmul_shapes.MM_KU)
            for (var k0 = 0u; k0 < 32u; k0 += KU) {
              for (var kk = 0u; kk < KU; kk++) {
                let k = 32u * us + k0 + kk;
                var a: array<vec4<TILE>, TQ>;
                var b: array<vec4<TILE>, RQ>;
                for (var i = 0u; i < TQ; i++) {
                    a[i] = at[k * (BM / 4u) + tm + i * (BM / (4u * TQ))];
                }
                for (var j = 0u; j < RQ; j++) {
                    b[j] = bt[k * (BN / 4u) + tn + j * (BN / (4u * RQ))];
                }
                for (var i = 0u; i < TQ; i++) {
                    for (var c = 0u; c < 4u; c++) {
                        for (var j = 0u; j < RQ; j++) {
                            let e = (4u * i + c) * RQ + j;
                            p[e] = fma(vec4<TILE>(a[i][c]), b[j], p[e]);
                        }
                    }
                }
              }
            }
            for (var e = 0u; e < 4u * TQ * RQ; e++) {
                acc[e] += vec4<f32>(p[e]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TQ; i++) {
        for (var c = 0u; c < 4u; c++) {
            for (var j = 0u; j < RQ; j++) {
                store4(m0 + 4u * (tm + i * (BM / (4u * TQ))) + c,
                       n0 + 4u * (tn + j * (BN / (4u * RQ))), plane, acc[(4u * i + c) * RQ + j]);
            }
        }
    }
}

fn store4(m: u32, n: u32, plane: u32, v: vec4<f32>) {
    if (m >= args.mm.M) {
        return;
    }
    let base = plane + m * args.mm.N + args.part.row0 + n;
    let nr = args.part.n_rows;
    for (var c = 0u; c < 4u; c++) {
        if (n + c < nr) {
            y[base + c] = finish(base + c, v[c]);  // (a split's planes: plain variant)
        }
    }
}

// y = the sum of SPLITK planes of M x N partial sums, in plane order (grid: 2-D over M * N)
@compute @workgroup_size(WG)
fn kernel_mul_mm_sum_f32(ids: Ids) {
    let i = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    let mn = args.mm.M * args.mm.N;
    if (i < mn) {
        var s = planes[i];
        for (var z = 1u; z < SPLITK; z++) {
            s += planes[z * mn + i];
        }
        y[i] = finish(i, s);
    }
}

//! section plain
fn finish(i: u32, v: f32) -> f32 {
    return v;
}

//! section res
@group(0) @binding(8) var<storage, read> res: array<f32>;

fn finish(i: u32, v: f32) -> f32 {
    return v + res[i];
}


//! section swiglu
@group(0) @binding(8) var<storage, read> gate: array<f32>;

fn finish(i: u32, v: f32) -> f32 {
    return swiglu(gate[i], v);
}

//! section geglu
@group(0) @binding(8) var<storage, read> gate: array<f32>;

fn finish(i: u32, v: f32) -> f32 {
    return geglu(gate[i], v);
}
