// Prefill mat-mat: y[m, row0 + n] = dot(x[m, :], W[n, :]) for a tile of BM tokens x BN rows of
// one weight part, one unit (32 columns) of K at a time through workgroup memory. The weight
// tile is dequantized on its way in (quants.wgsl's dq4), so weights stay quantized in memory.
// Both tiles are stored k-major, so each thread's 4x4 block of outputs takes two vec4 loads per
// k for 16 multiply-adds. TILE is f16 when the device has shader-f16 and the weight is quantized
// (half the workgroup memory; sums stay f32). The backend takes BM = 16 or 32 for short batches
// (WG = BM * BN / 16 threads). Grid: (ceil(n_rows / BN), ceil(M / BM)).
// kernel_mul_mm8 is the same tile walk with 8 x 8 outputs per thread (WG = BM * BN / 64), for
// long batches: four vec4 loads from workgroup memory feed 64 multiply-adds instead of two
// feeding 16, which is what limits the 4 x 4 kernel once the tile is large.

const WG: u32 = 256u;
const BM: u32 = 64u;
const BN: u32 = 64u;
alias TILE = f32;

struct MatArgs {
    mm: kargs_mul_mat,
    part: kargs_part,
}

@group(0) @binding(0) var<uniform> args: MatArgs;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> at: array<vec4<TILE>, 8u * BM>;  // [k][m / 4], 32 k
var<workgroup> bt: array<vec4<TILE>, 8u * BN>;  // [k][n / 4]

@compute @workgroup_size(WG)
fn kernel_mul_mm_TYPE_f32(ids: Ids) {
    let t = ids.lid;
    let M = args.mm.M;
    let K = args.mm.K;
    let U = (K + 31u) / 32u;
    let nr = args.part.n_rows;
    let n0 = ids.wg.x * BN;
    let m0 = ids.wg.y * BM;
    let tn = t % (BN / 4u);
    let tm = t / (BN / 4u);
    var acc: array<vec4<f32>, 4>;
    for (var u = 0u; u < U; u++) {
        for (var q = t; q < 8u * BM; q += WG) {
            let mm = q / 8u;
            let j = q % 8u;
            let col = unit_col(u, j, U);
            var v = vec4<f32>(0.0);
            if (m0 + mm < M && (!GUARD_K || col < K)) {
                v = x4[(m0 + mm) * (K / 4u) + col / 4u];
            }
            for (var c = 0u; c < 4u; c++) {
                at[(4u * j + c) * (BM / 4u) + mm / 4u][mm % 4u] = TILE(v[c]);
            }
        }
        for (var q = t; q < 8u * BN; q += WG) {
            let nn = q / 8u;
            let j = q % 8u;
            let row = min(n0 + nn, nr - 1u);
            let v = dq4(row * U + u, j);
            for (var c = 0u; c < 4u; c++) {
                bt[(4u * j + c) * (BN / 4u) + nn / 4u][nn % 4u] = TILE(v[c]);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a = vec4<f32>(at[k * (BM / 4u) + tm]);
            let b = vec4<f32>(bt[k * (BN / 4u) + tn]);
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    // constant indices only: a dynamically indexed accumulator array would live in memory
    let mb = m0 + 4u * tm;
    let nb = n0 + 4u * tn;
    store4(mb, nb, acc[0]);
    store4(mb + 1u, nb, acc[1]);
    store4(mb + 2u, nb, acc[2]);
    store4(mb + 3u, nb, acc[3]);
}

@compute @workgroup_size(WG)
fn kernel_mul_mm8_TYPE_f32(ids: Ids) {
    let t = ids.lid;
    let M = args.mm.M;
    let K = args.mm.K;
    let U = (K + 31u) / 32u;
    let nr = args.part.n_rows;
    let n0 = ids.wg.x * BN;
    let m0 = ids.wg.y * BM;
    // a thread owns token quads tm and tm + BM / 8 and row quads tn and tn + BN / 8, so the
    // threads of a warp read consecutive vec4s of each tile row (no bank conflicts)
    let tn = t % (BN / 8u);
    let tm = t / (BN / 8u);
    var acc: array<vec4<f32>, 16>;
    for (var u = 0u; u < U; u++) {
        for (var q = t; q < 8u * BM; q += WG) {
            let mm = q / 8u;
            let j = q % 8u;
            let col = unit_col(u, j, U);
            var v = vec4<f32>(0.0);
            if (m0 + mm < M && (!GUARD_K || col < K)) {
                v = x4[(m0 + mm) * (K / 4u) + col / 4u];
            }
            for (var c = 0u; c < 4u; c++) {
                at[(4u * j + c) * (BM / 4u) + mm / 4u][mm % 4u] = TILE(v[c]);
            }
        }
        for (var q = t; q < 8u * BN; q += WG) {
            let nn = q / 8u;
            let j = q % 8u;
            let row = min(n0 + nn, nr - 1u);
            let v = dq4(row * U + u, j);
            for (var c = 0u; c < 4u; c++) {
                bt[(4u * j + c) * (BN / 4u) + nn / 4u][nn % 4u] = TILE(v[c]);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a0 = vec4<f32>(at[k * (BM / 4u) + tm]);
            let a1 = vec4<f32>(at[k * (BM / 4u) + tm + BM / 8u]);
            let b0 = vec4<f32>(bt[k * (BN / 4u) + tn]);
            let b1 = vec4<f32>(bt[k * (BN / 4u) + tn + BN / 8u]);
            // constant indices only: a dynamically indexed accumulator array would spill
            acc[0] += a0.x * b0;
            acc[1] += a0.x * b1;
            acc[2] += a0.y * b0;
            acc[3] += a0.y * b1;
            acc[4] += a0.z * b0;
            acc[5] += a0.z * b1;
            acc[6] += a0.w * b0;
            acc[7] += a0.w * b1;
            acc[8] += a1.x * b0;
            acc[9] += a1.x * b1;
            acc[10] += a1.y * b0;
            acc[11] += a1.y * b1;
            acc[12] += a1.z * b0;
            acc[13] += a1.z * b1;
            acc[14] += a1.w * b0;
            acc[15] += a1.w * b1;
        }
        workgroupBarrier();
    }
    let ma = m0 + 4u * tm;
    let mb = m0 + 4u * (tm + BM / 8u);
    let na = n0 + 4u * tn;
    let nb = n0 + 4u * (tn + BN / 8u);
    store4(ma, na, acc[0]);
    store4(ma, nb, acc[1]);
    store4(ma + 1u, na, acc[2]);
    store4(ma + 1u, nb, acc[3]);
    store4(ma + 2u, na, acc[4]);
    store4(ma + 2u, nb, acc[5]);
    store4(ma + 3u, na, acc[6]);
    store4(ma + 3u, nb, acc[7]);
    store4(mb, na, acc[8]);
    store4(mb, nb, acc[9]);
    store4(mb + 1u, na, acc[10]);
    store4(mb + 1u, nb, acc[11]);
    store4(mb + 2u, na, acc[12]);
    store4(mb + 2u, nb, acc[13]);
    store4(mb + 3u, na, acc[14]);
    store4(mb + 3u, nb, acc[15]);
}

fn store4(m: u32, n: u32, v: vec4<f32>) {
    if (m >= args.mm.M) {
        return;
    }
    let base = m * args.mm.N + args.part.row0 + n;
    let nr = args.part.n_rows;
    for (var c = 0u; c < 4u; c++) {
        if (n + c < nr) {
            y[base + c] = v[c];
        }
    }
}
