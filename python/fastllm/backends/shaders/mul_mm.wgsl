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

fn fill(u0: u32, m0: u32, n0: u32, t: u32) {
    let M = args.mm.M;
    let K = args.mm.K;
    let U = (K + 31u) / 32u;
    let nr = args.part.n_rows;
    for (var q = t; q < UPS * 2u * BM; q += WG) {
        let mq = q % (BM / 4u);
        let j = q / (BM / 4u);  // k quad of the step
        // a unit past K repeats the last with x = 0 (its weights are read, not used)
        let u = min(u0 + j / 8u, U - 1u);
        let col = unit_col(u, j % 8u, U);
        // (zeroed explicitly: naga does not re-zero a `var` declared in a loop body on every
        // pass)
        var v = array<vec4<f32>, 4>();
        for (var i = 0u; i < 4u; i++) {
            let mm = m0 + 4u * mq + i;
            if (mm < M && (!GUARD_K || col < K) && u0 + j / 8u < U) {
                v[i] = x4[mm * (K / 4u) + col / 4u];
            }
        }
        let vt = transpose(mat4x4<f32>(v[0], v[1], v[2], v[3]));  // vt[c]: component c of the 4
        for (var c = 0u; c < 4u; c++) {
            at[(4u * j + c) * (BM / 4u) + mq] = vec4<TILE>(vt[c]);
        }
    }
    for (var q = t; q < UPS * 2u * BN; q += WG) {
        let nq = q % (BN / 4u);
        let j = q / (BN / 4u);
        let u = min(u0 + j / 8u, U - 1u);
        var v: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            // rows past the part repeat its last row (their outputs are not stored)
            v[i] = dq4(min(n0 + 4u * nq + i, nr - 1u) * U + u, j % 8u);
        }
        let vt = transpose(mat4x4<f32>(v[0], v[1], v[2], v[3]));  // vt[c]: component c of the 4
        for (var c = 0u; c < 4u; c++) {
            bt[(4u * j + c) * (BN / 4u) + nq] = vec4<TILE>(vt[c]);
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
            for (var k = 32u * us; k < 32u * us + 32u; k++) {
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
            y[base + c] = v[c];
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
        y[i] = s;
    }
}
