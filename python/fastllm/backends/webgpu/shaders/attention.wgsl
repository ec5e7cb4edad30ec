// Prefill attention: causal, over a layer's KV cache (f32), GQA: query head h reads KV head
// h / G. Position p sits in cache row p % ring; a query at position p sees positions
// first_visible(p, window)..p (common.wgsl). Masked scores are MASKED, so online softmax never
// subtracts infinities. With SINKS, each head's sink logit (binding 12) joins the softmax's
// denominator at the end. (Decode, one token: attn_decode.wgsl.)
//
// A workgroup takes BQ query rows, (token, head of the group) pairs, so K and V tiles serve the
// G heads of a KV head at once, and walks the keys its rows see BK at a time (online softmax,
// as flash attention). Both products are small mat-mats with mul_mm.wgsl's register tiles:
// scores S = Q K^T with Q and K stored d-major as vec4s of four rows (keys), so a thread's 4 x 4
// block of scores takes two vec4 loads per d for 16 multiply-adds; then O += P V with P stored
// key-major as vec4s of four rows and V as it is in the cache, a thread holding 4 rows x DG
// d-quads of O. (One thread per row with scalar loads of K, as before, read K and V once per
// 8 rows and ran at ~1.5 TFLOP/s on an H100.)
// Grid: (ceil(n_tokens * G / BQ), n_kv_head); WG = (BQ / 4) * (BK / 4).

const WG: u32 = 128u;
const G: u32 = 1u;       // query heads per KV head
const D: u32 = 64u;      // head_dim (a multiple of 4)
const BQ: u32 = 64u;     // query rows per workgroup (a multiple of 4)
const BK: u32 = 32u;     // keys per tile (a multiple of 4)
alias TILE = f32;
const SINKS: bool = false;  // a sink logit per head joins each row's softmax denominator
const D4: u32 = D / 4u;
const RQ4: u32 = BQ / 4u;
const KQ4: u32 = BK / 4u;
const DG: u32 = (D4 + KQ4 - 1u) / KQ4;  // d-quads of O per thread

@group(0) @binding(0) var<uniform> args: kargs_attention;
@group(0) @binding(1) var<storage, read> step: kargs_step;
@group(0) @binding(2) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> vc4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> sinks: array<f32>;  // (n_head), with SINKS

var<workgroup> qt: array<vec4<TILE>, D * RQ4>;  // Q: [d][row quad], scaled
var<workgroup> kt: array<vec4<TILE>, D * KQ4>;  // K: [d][key quad]; then V: [key][d quad]
var<workgroup> pt: array<vec4<f32>, BK * RQ4>;  // scores, then weights: [key][row quad]
var<workgroup> rm: array<f32, BQ>;  // per row: running maximum,
var<workgroup> rl: array<f32, BQ>;  // running sum of weights,
var<workgroup> ra: array<f32, BQ>;  // and this tile's rescale of O

// the query position of row rr of the batch (rows past the batch take its last token's)
fn row_pos(rr: u32) -> u32 {
    return step.pos + min(rr / G, step.n_tokens - 1u);
}

@compute @workgroup_size(WG)
fn kernel_attn_prefill_f32(ids: Ids) {
    let t = ids.lid;
    let kvh = ids.wg.y;
    let n = step.n_tokens;
    let hd4 = args.n_head * D4;
    let kvd4 = args.n_kv_head * D4;
    let r0 = ids.wg.x * BQ;
    for (var q = t; q < RQ4 * D4; q += WG) {
        let iq = q % RQ4;
        let e4 = q / RQ4;
        var v = array<vec4<f32>, 4>();  // (zeroed explicitly: naga does not re-zero a `var`
        for (var i = 0u; i < 4u; i++) {  // declared in a loop body on every pass)
            let rr = r0 + 4u * iq + i;
            if (rr / G < n) {
                v[i] = q4[(rr / G) * hd4 + (kvh * G + rr % G) * D4 + e4] * args.scale;
            }
        }
        let vt = transpose(mat4x4<f32>(v[0], v[1], v[2], v[3]));
        for (var c = 0u; c < 4u; c++) {
            qt[(4u * e4 + c) * RQ4 + iq] = vec4<TILE>(vt[c]);
        }
    }
    for (var r = t; r < BQ; r += WG) {
        rm[r] = MASKED;
        rl[r] = 0.0;
    }
    let kmin = first_visible(row_pos(r0), args.window);
    let kmax = row_pos(r0 + BQ - 1u);
    // S: rows 4 sq.., keys 4 sk..; O: rows 4 sq.., d-quads sk + KQ4 i
    let sq = t % RQ4;
    let sk = t / RQ4;
    var acc: array<vec4<f32>, 4u * DG>;  // [row c * DG + i]
    for (var j0 = kmin; j0 <= kmax; j0 += BK) {
        workgroupBarrier();  // the last tile's V and weights are read
        for (var q = t; q < KQ4 * D4; q += WG) {
            let jq = q % KQ4;
            let e4 = q / KQ4;
            var v = array<vec4<f32>, 4>();
            for (var i = 0u; i < 4u; i++) {
                let jp = j0 + 4u * jq + i;
                if (jp <= kmax) {
                    v[i] = kc4[(step.slot * args.ring + jp % args.ring) * kvd4 + kvh * D4 + e4];
                }
            }
            let vt = transpose(mat4x4<f32>(v[0], v[1], v[2], v[3]));
            for (var c = 0u; c < 4u; c++) {
                kt[(4u * e4 + c) * KQ4 + jq] = vec4<TILE>(vt[c]);
            }
        }
        workgroupBarrier();
        var s = array<vec4<f32>, 4>();  // s[c]: row 4 sq + c, keys 4 sk..
        for (var e = 0u; e < D; e++) {
            let a = vec4<f32>(qt[e * RQ4 + sq]);
            let b = vec4<f32>(kt[e * KQ4 + sk]);
            for (var c = 0u; c < 4u; c++) {
                s[c] = fma(vec4<f32>(a[c]), b, s[c]);
            }
        }
        for (var c = 0u; c < 4u; c++) {
            let p = row_pos(r0 + 4u * sq + c);
            let lo = first_visible(p, args.window);
            for (var c2 = 0u; c2 < 4u; c2++) {
                let jp = j0 + 4u * sk + c2;
                var x = MASKED;
                if (jp <= p && jp >= lo) {
                    x = capped(s[c][c2], args.softcap);
                }
                s[c][c2] = x;
            }
        }
        for (var c2 = 0u; c2 < 4u; c2++) {
            pt[(4u * sk + c2) * RQ4 + sq] = vec4<f32>(s[0][c2], s[1][c2], s[2][c2], s[3][c2]);
        }
        workgroupBarrier();
        for (var q = t; q < BK * D4; q += WG) {
            let jj = q / D4;
            var v = vec4<f32>(0.0);
            if (j0 + jj <= kmax) {
                v = vc4[(step.slot * args.ring + (j0 + jj) % args.ring) * kvd4 + kvh * D4 + q % D4];
            }
            kt[q] = vec4<TILE>(v);
        }
        for (var r = t; r < BQ; r += WG) {
            var mb = MASKED;
            for (var jj = 0u; jj < BK; jj++) {
                mb = max(mb, pt[jj * RQ4 + r / 4u][r % 4u]);
            }
            let mn = max(rm[r], mb);
            let al = exp(rm[r] - mn);
            var l = 0.0;
            for (var jj = 0u; jj < BK; jj++) {
                let sj = pt[jj * RQ4 + r / 4u][r % 4u];
                let pj = select(0.0, exp(sj - mn), sj > MASKED);
                pt[jj * RQ4 + r / 4u][r % 4u] = pj;
                l += pj;
            }
            rl[r] = rl[r] * al + l;
            rm[r] = mn;
            ra[r] = al;
        }
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            let al = ra[4u * sq + c];
            for (var i = 0u; i < DG; i++) {
                acc[c * DG + i] *= al;
            }
        }
        for (var jj = 0u; jj < BK; jj++) {
            let pv = pt[jj * RQ4 + sq];
            for (var i = 0u; i < DG; i++) {
                let dq = sk + KQ4 * i;
                if (dq < D4) {
                    let vv = vec4<f32>(kt[jj * D4 + dq]);
                    for (var c = 0u; c < 4u; c++) {
                        acc[c * DG + i] = fma(vec4<f32>(pv[c]), vv, acc[c * DG + i]);
                    }
                }
            }
        }
    }
    // (rl was last written before the last tile's second barrier)
    for (var c = 0u; c < 4u; c++) {
        let rr = r0 + 4u * sq + c;
        if (rr / G < n) {
            // a row sees its own position, so its sum of weights is at least 1
            var inv = 1.0 / rl[4u * sq + c];
            if (SINKS) {  // the sink joins the sum at the larger of it and the row's maximum
                let sk = sinks[kvh * G + rr % G];
                let mx = max(rm[4u * sq + c], sk);
                let f = exp(rm[4u * sq + c] - mx);
                inv = f / (rl[4u * sq + c] * f + exp(sk - mx));
            }
            let o = (rr / G) * hd4 + (kvh * G + rr % G) * D4;
            for (var i = 0u; i < DG; i++) {
                let dq = sk + KQ4 * i;
                if (dq < D4) {
                    out4[o + dq] = acc[c * DG + i] * inv;
                }
            }
        }
    }
}
