// Prefill attention: causal, over a layer's KV cache (f32), GQA: query head h reads KV head
// h / G. Position p sits in cache row p % ring; a query at position p sees positions
// first_visible(p, window)..p (common.wgsl). Masked scores are MASKED, so online softmax never
// subtracts infinities. (Decode, one token: attn_decode.wgsl.)
//
// A workgroup takes BQ query rows, (token, head of the group) pairs, so K and V tiles serve the
// G heads of a KV head at once, and walks the keys its rows see BK at a time through workgroup
// memory (K, then V in the same tile). TPQ threads per row: each scores every TPQ-th key of the
// tile (vec4 products, so the sum's dependency chain is D / 4 long) and holds DPT4 vec4s of the
// output (columns k + TPQ * e, e < DPT4, in vec4 units). Tiles are vec4 arrays whose rows are
// padded by one vec4, so rows start in different banks.
// Grid: (ceil(n_tokens * G / BQ), n_kv_head).

const WG: u32 = 64u;
const G: u32 = 1u;       // query heads per KV head
const D: u32 = 64u;      // head_dim (a multiple of 4)
const TPQ: u32 = 4u;     // threads per query row (divides D / 4)
const BK: u32 = 32u;     // keys per tile
const D4: u32 = D / 4u;
const DPT4: u32 = D4 / TPQ;
const BQ: u32 = WG / TPQ;
const KS: u32 = D4 + 1u;

@group(0) @binding(0) var<uniform> args: kargs_attention;
@group(0) @binding(1) var<uniform> step: kargs_step;
@group(0) @binding(2) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> vc4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;

var<workgroup> qt: array<vec4<f32>, BQ * D4>;
var<workgroup> kt: array<vec4<f32>, BK * KS>;
var<workgroup> st: array<f32, BQ * BK>;

@compute @workgroup_size(WG)
fn kernel_attn_prefill_f32(ids: Ids) {
    let t = ids.lid;
    let kvh = ids.wg.y;
    let n = step.n_tokens;
    let pos = step.pos;
    let hd4 = args.n_head * D4;
    let kvd4 = args.n_kv_head * D4;
    let r = t / TPQ;
    let k = t % TPQ;
    let row = ids.wg.x * BQ + r;  // (token, head of group) pair
    let tok = row / G;
    let h = kvh * G + row % G;
    let p = pos + min(tok, n - 1u);
    let lo = first_visible(p, args.window);
    for (var e = t; e < BQ * D4; e += WG) {
        let rr = ids.wg.x * BQ + e / D4;
        let tk = rr / G;
        var v = vec4<f32>(0.0);
        if (tk < n) {
            v = q4[tk * hd4 + (kvh * G + rr % G) * D4 + e % D4] * args.scale;
        }
        qt[e] = v;
    }
    // keys any row of the tile sees
    let t0 = ids.wg.x * BQ / G;
    let t1 = min(((ids.wg.x + 1u) * BQ - 1u) / G, n - 1u);
    let kmin = first_visible(pos + t0, args.window);
    let kmax = pos + t1;
    var m = MASKED;
    var l = 0.0;
    var acc: array<vec4<f32>, DPT4>;
    for (var j0 = kmin; j0 <= kmax; j0 += BK) {
        workgroupBarrier();
        for (var e = t; e < BK * D4; e += WG) {
            let jp = j0 + e / D4;
            var v = vec4<f32>(0.0);
            if (jp <= kmax) {
                v = kc4[(jp % args.ring) * kvd4 + kvh * D4 + e % D4];
            }
            kt[(e / D4) * KS + e % D4] = v;
        }
        workgroupBarrier();
        for (var jj = k; jj < BK; jj += TPQ) {
            var s4 = vec4<f32>(0.0);
            for (var e = 0u; e < D4; e++) {
                s4 += qt[r * D4 + e] * kt[jj * KS + e];
            }
            var s = s4.x + s4.y + s4.z + s4.w;
            let jp = j0 + jj;
            if (jp > p || jp < lo) {
                s = MASKED;
            } else {
                s = capped(s, args.softcap);
            }
            st[r * BK + jj] = s;
        }
        workgroupBarrier();
        for (var e = t; e < BK * D4; e += WG) {
            let jp = j0 + e / D4;
            var v = vec4<f32>(0.0);
            if (jp <= kmax) {
                v = vc4[(jp % args.ring) * kvd4 + kvh * D4 + e % D4];
            }
            kt[(e / D4) * KS + e % D4] = v;
        }
        workgroupBarrier();
        var mb = MASKED;
        for (var jj = 0u; jj < BK; jj++) {
            mb = max(mb, st[r * BK + jj]);
        }
        let mn = max(m, mb);
        let al = exp(m - mn);
        l *= al;
        for (var e = 0u; e < DPT4; e++) {
            acc[e] *= al;
        }
        for (var jj = 0u; jj < BK; jj++) {
            let sj = st[r * BK + jj];
            let pj = select(0.0, exp(sj - mn), sj > MASKED);
            l += pj;
            for (var e = 0u; e < DPT4; e++) {
                acc[e] += pj * kt[jj * KS + k + TPQ * e];
            }
        }
        m = mn;
    }
    if (tok < n) {
        for (var e = 0u; e < DPT4; e++) {
            out4[tok * hd4 + h * D4 + k + TPQ * e] = acc[e] / l;
        }
    }
}
