// Decode attention (one query token) over a layer's KV cache, split over the visible positions
// (flash-decoding). GQA: query head h reads KV head h / G. Position p sits in cache row
// p % ring; the query at position p sees positions first_visible(p, window)..p.
//
// kernel_attn_decode_f32, grid (NSPLIT, n_kv_head): each workgroup takes one contiguous share
// of the visible positions and all G query heads of its KV head, so K and V are read once for the
// group. Per block of WG keys: thread t scores key t against the G heads (vec4 loads of K), the
// block maximum per head comes from one vec4 reduction per 4 heads (online softmax), and the
// weighted sum of V is spread over threads as (head, 4 values) pairs, and over KSPL subsets of
// the keys when the pairs are fewer than the threads (the subsets are added at the end). It
// writes per head (acc[D], max, sum) to `part`; kernel_attn_reduce_f32, grid (n_head), joins the
// NSPLIT records (kernel_attn_reduce_q8: into the bytes the integer mat-vec reads). Masked
// scores are MASKED (common.wgsl), so no infinities meet.
// Variants (sections at the end): `plain` reads q as given and a cache that holds position p;
// `rope` also rotates q and the new k and stores k and v into the cache itself.
// Rows mode (ROWS; backends/base.py, Graph.rows): grid (NSPLIT, n_kv_head, rows), or (1,
// n_kv_head, rows) for the direct kernels, each row one query of its own sequence, at the
// (slot, position) of `rows` (the rope variant rotates and stores each row's own k and v); the
// partials and the reduce (grid (n_head, rows)) take the row's heads after the rows before it.

const WG: u32 = 128u;
const G: u32 = 1u;       // query heads per KV head
const D: u32 = 64u;      // head_dim (a multiple of 4)
const NSPLIT: u32 = 1u;  // workgroups per KV head
const D4: u32 = D / 4u;
const P: u32 = G * D4;  // (head, 4 values) pairs
const KSPL: u32 = max(1u, WG / P);  // key subsets per pair
const PR: u32 = (P + WG - 1u) / WG;  // pairs per thread
const G4: u32 = (G + 3u) / 4u;
const ROWS: bool = false;
// a sink logit per query head (binding 12) joins its softmax denominator: in the reduce of the
// split kernel's partials, and at the direct kernel's normalization
const SINKS: bool = false;

@group(0) @binding(0) var<uniform> args: kargs_attention;
@group(0) @binding(1) var<storage, read> step: kargs_step;
@group(0) @binding(2) var<storage, read> q4: array<vec4<f32>>;
// kc4 (binding 3) and vc4 (4), the layer's KV cache: declared by the variant sections below
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// partials, (rows, n_head, NSPLIT, D + 2): acc[D], max, sum
@group(0) @binding(6) var<storage, read_write> part: array<f32>;
// rows mode: each row's (slot, position)
@group(0) @binding(11) var<storage, read> rows: array<vec2<u32>>;
// with SINKS: (n_head) sink logits (the reduce and the direct kernels)
@group(0) @binding(12) var<storage, read> sinks: array<f32>;
// the first of this row's q values (vec4s), of its k and v values (the rope prologue's), and
// its slot (where the rope prologue stores k and v)
var<private> qrow: u32 = 0u;
var<private> krow: u32 = 0u;
var<private> cslot: u32 = 0u;

// position and slot of the workgroup's query row (grid z in rows mode); sets qrow, krow, cslot
fn query_row(ids: Ids) -> vec2<u32> {
    var at = vec2<u32>(step.pos + step.n_tokens - 1u, step.slot);
    if (ROWS) {
        let row = ids.wg.z;
        at = vec2<u32>(rows[row].y, rows[row].x);
        qrow = row * args.n_head * D4;
        krow = row * args.n_kv_head * D4;
    }
    cslot = at.y;
    return at;
}

var<workgroup> qd: array<vec4<f32>, P>;
var<workgroup> pd: array<f32, G * WG>;  // softmax weights of the block, per head
var<workgroup> hd: array<vec2<f32>, G>;  // per head: (scale of the old sums, running max)
var<workgroup> sums: array<vec4<f32>, WG * PR>;
var<workgroup> lsum: array<f32, WG * PR>;

// One block of keys for both decode kernels: thread t's key jp scored against the G query
// heads (MASKED at or past `end`), the block's maximum per head (the same in every thread), its
// softmax weights into pd, each head's old-sum scale and new running maximum into hd, and the
// running maxima m moved on. Every thread of the workgroup calls it (barriers inside).
fn weigh_block(ids: Ids, kvh: u32, jp: u32, end: u32, m: ptr<function, array<f32, G>>,
               slot: u32) {
    let t = ids.lid;
    // (set explicitly: naga does not re-zero a `var` declared in a loop body on every pass)
    var sc: array<f32, G>;
    for (var g = 0u; g < G; g++) {
        sc[g] = MASKED;
    }
    if (jp < end) {
        for (var g = 0u; g < G; g++) {
            sc[g] = 0.0;
        }
        let kb = (slot * args.ring + jp % args.ring) * args.n_kv_head * D4 + kvh * D4;
        for (var e = 0u; e < D4; e++) {
            let kv = kc4[kb + e];
            for (var g = 0u; g < G; g++) {
                sc[g] += dot(qd[g * D4 + e], kv);
            }
        }
        for (var g = 0u; g < G; g++) {
            sc[g] = capped(sc[g], args.softcap);
        }
    }
    for (var g4 = 0u; g4 < G4; g4++) {
        var v = vec4<f32>(MASKED);
        for (var c = 0u; c < 4u; c++) {
            if (4u * g4 + c < G) {
                v[c] = sc[4u * g4 + c];
            }
        }
        let mb = wg_max4(v, ids);
        for (var c = 0u; c < 4u; c++) {
            let g = 4u * g4 + c;
            if (g < G) {
                let mn = max((*m)[g], mb[c]);
                pd[g * WG + t] = select(0.0, exp(sc[g] - mn), sc[g] > MASKED);
                if (t == 0u) {
                    hd[g] = vec2<f32>(exp((*m)[g] - mn), mn);
                }
                (*m)[g] = mn;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn kernel_attn_decode_f32(ids: Ids) {
    let t = ids.lid;
    let split = ids.wg.x;
    let kvh = ids.wg.y;
    let row = ids.wg.z;
    let kvd4 = args.n_kv_head * D4;
    let at = query_row(ids);
    let p = at.x;
    let slot = at.y;
    let lo = first_visible(p, args.window);
    // an even share for every workgroup, however few positions are visible: a short context
    // then still spreads over NSPLIT workgroups instead of leaving one to walk all its keys
    let chunk = (p + 1u - lo + NSPLIT - 1u) / NSPLIT;
    let s0 = min(lo + split * chunk, p + 1u);
    let s1 = min(s0 + chunk, p + 1u);
    prologue(ids, kvh, p, s0, s1);
    if (t == 0u) {
        for (var g = 0u; g < G; g++) {
            hd[g] = vec2<f32>(1.0, MASKED);  // an empty share writes (0, MASKED, 0)
        }
    }
    workgroupBarrier();
    // this thread's pairs and key subset
    let ksub = select(0u, t / P, KSPL > 1u);
    var m: array<f32, G>;
    for (var g = 0u; g < G; g++) {
        m[g] = MASKED;
    }
    var acc: array<vec4<f32>, PR>;
    var l: array<f32, PR>;
    for (var j0 = s0; j0 < s1; j0 += WG) {
        weigh_block(ids, kvh, j0 + t, s1, &m, slot);
        workgroupBarrier();
        let nv = min(WG, s1 - j0);
        for (var r = 0u; r < PR; r++) {
            let pr = select(t + r * WG, t % P, KSPL > 1u);
            if (pr < P && ksub < KSPL) {
                let g = pr / D4;
                let al = hd[g].x;
                var a = acc[r] * al;
                var ll = l[r] * al;
                let vb = kvh * D4 + pr % D4;
                for (var jj = ksub; jj < nv; jj += KSPL) {
                    let pv = pd[g * WG + jj];
                    a += pv * vc4[(slot * args.ring + (j0 + jj) % args.ring) * kvd4 + vb];
                    ll += pv;
                }
                acc[r] = a;
                l[r] = ll;
            }
        }
        workgroupBarrier();
    }
    // add the key subsets, then write (acc, max, sum) per head
    for (var r = 0u; r < PR; r++) {
        sums[t + r * WG] = acc[r];
        lsum[t + r * WG] = l[r];
    }
    workgroupBarrier();
    for (var r = 0u; r < PR; r++) {
        let pr = t + r * WG;
        if (pr < P) {
            var a = vec4<f32>(0.0);
            var ll = 0.0;
            if (KSPL > 1u) {
                for (var k = 0u; k < KSPL; k++) {
                    a += sums[k * P + pr];
                    ll += lsum[k * P + pr];
                }
            } else {
                a = sums[pr];
                ll = lsum[pr];
            }
            let g = pr / D4;
            let base = (((row * args.n_kv_head + kvh) * G + g) * NSPLIT + split) * (D + 2u);
            let d = 4u * (pr % D4);
            part[base + d] = a.x;
            part[base + d + 1u] = a.y;
            part[base + d + 2u] = a.z;
            part[base + d + 3u] = a.w;
            if (d == 0u) {
                part[base + D] = hd[g].y;
                part[base + D + 1u] = ll;
            }
        }
    }
}

// kernel_attn_decode_direct_f32 / _q8, grid (1, n_kv_head): a short context in one dispatch.
// One workgroup per KV head walks all visible positions itself, WG keys per block as above,
// and writes its heads' output normalized: no partials and no reduce dispatch. A decode step at
// a short context is bound by its dependent dispatches (each boundary ~4-6 us in the stream on
// an H100, more than the attention's own work: benchmarks/NOTES.md, section 11); the host picks
// this entry while the visible positions are few (attention.ATTN_DIRECT_MAX).
// The weighted sum of V: thread t takes value quad t % D4 of all G heads for keys t / D4,
// t / D4 + KS, ... of the block, so V is read once for the group and a warp reads whole rows;
// VU keys per pass with their loads issued together; the KS key subsets are added at the end.
const KS: u32 = max(1u, WG / D4);  // key subsets of the direct kernel
const VU: u32 = 4u;  // keys per pass of its V loop

var<workgroup> dsum: array<vec4<f32>, KS * P>;  // per key subset: the G heads' sums
var<workgroup> dl: array<f32, KS * G>;
var<workgroup> od: array<vec4<f32>, P>;  // the output, normalized

fn attend_direct(ids: Ids) {
    let t = ids.lid;
    let kvh = ids.wg.y;
    let kvd4 = args.n_kv_head * D4;
    let at = query_row(ids);
    let p = at.x;
    let slot = at.y;
    let lo = first_visible(p, args.window);
    prologue(ids, kvh, p, lo, p + 1u);
    workgroupBarrier();
    let d4 = t % D4;
    let ks = t / D4;
    var m: array<f32, G>;
    var acc: array<vec4<f32>, G>;
    var l: array<f32, G>;
    for (var g = 0u; g < G; g++) {
        m[g] = MASKED;
        acc[g] = vec4<f32>(0.0);
        l[g] = 0.0;
    }
    for (var j0 = lo; j0 <= p; j0 += WG) {
        weigh_block(ids, kvh, j0 + t, p + 1u, &m, slot);
        workgroupBarrier();
        let nv = min(WG, p + 1u - j0);
        if (ks < KS) {
            for (var g = 0u; g < G; g++) {
                let al = hd[g].x;
                acc[g] *= al;
                l[g] *= al;
            }
            let vb = kvh * D4 + d4;
            for (var j = ks; j < nv; j += KS * VU) {
                var vv = array<vec4<f32>, VU>();
                for (var u = 0u; u < VU; u++) {
                    let jj = j + u * KS;
                    if (jj < nv) {
                        vv[u] = vc4[(slot * args.ring + (j0 + jj) % args.ring) * kvd4 + vb];
                    }
                }
                for (var u = 0u; u < VU; u++) {
                    let jj = j + u * KS;
                    if (jj < nv) {
                        for (var g = 0u; g < G; g++) {
                            let pv = pd[g * WG + jj];
                            acc[g] += pv * vv[u];
                            l[g] += pv;
                        }
                    }
                }
            }
        }
        workgroupBarrier();  // pd and hd are rewritten by the next block
    }
    if (ks < KS) {
        for (var g = 0u; g < G; g++) {
            dsum[(ks * G + g) * D4 + d4] = acc[g];
            if (d4 == 0u) {
                dl[ks * G + g] = l[g];
            }
        }
    }
    workgroupBarrier();
    for (var q = t; q < P; q += WG) {  // (more pairs than threads: G D / 4 > WG)
        let g = q / D4;
        var a = vec4<f32>(0.0);
        var ll = 0.0;
        for (var k = 0u; k < KS; k++) {
            a += dsum[(k * G + g) * D4 + q % D4];
            ll += dl[k * G + g];
        }
        var inv = 1.0 / ll;  // ll >= 1: the block holding the maximum gave it weight 1
        if (SINKS) {  // m: the head's maximum, the same in every thread
            let sk = sinks[kvh * G + g];
            let mx = max(m[g], sk);
            let f = exp(m[g] - mx);
            inv = f / (ll * f + exp(sk - mx));
        }
        od[q] = a * inv;
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn kernel_attn_decode_direct_f32(ids: Ids) {
    attend_direct(ids);
    for (var q = ids.lid; q < P; q += WG) {
        let o = od[q];
        // heads kvh G .. kvh G + G - 1, contiguous, of the row (grid z; 0 but in rows mode)
        let b = ids.wg.z * args.n_head * D + ids.wg.y * G * D + 4u * q;
        out[b] = o.x;
        out[b + 1u] = o.y;
        out[b + 2u] = o.z;
        out[b + 3u] = o.w;
    }
}

// As kernel_attn_decode_direct_f32, writing the heads' output as the integer mat-vec's x
// (kernel_attn_reduce_q8's layout)
@compute @workgroup_size(WG)
fn kernel_attn_decode_direct_q8(ids: Ids) {
    attend_direct(ids);
    for (var b = ids.lid; b < G * D / 32u; b += WG) {  // this thread's blocks of the G heads
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            v[j] = od[8u * b + j];
        }
        store_xq(ids.wg.z, ids.wg.y * G * D / 32u + b, args.n_head, &v);
    }
}

@group(0) @binding(0) var<uniform> rargs: kargs_attn_reduce;

// weights of the NSPLIT records of query head h in its softmax, exp(max_s - max) / sum, into rw
// (one thread reads the records' (max, sum) pairs; NSPLIT is a constant, so its loads issue
// together). Every thread calls it (a barrier).
var<workgroup> rw: array<f32, NSPLIT>;

fn reduce_weights(h: u32, ids: Ids) {
    if (ids.lid == 0u) {
        let rec = rargs.head_dim + 2u;
        var ms: array<vec2<f32>, NSPLIT>;
        var mx = MASKED;
        for (var s = 0u; s < NSPLIT; s++) {
            let b = (h * NSPLIT + s) * rec + rargs.head_dim;
            ms[s] = vec2<f32>(part[b], part[b + 1u]);
            mx = max(mx, ms[s].x);
        }
        var l = 0.0;
        if (SINKS) {  // h counts the rows' heads one after another
            let sk = sinks[h % rargs.n_head];
            mx = max(mx, sk);
            l = exp(sk - mx);
        }
        for (var s = 0u; s < NSPLIT; s++) {
            rw[s] = exp(ms[s].x - mx);
            l += rw[s] * ms[s].y;
        }
        for (var s = 0u; s < NSPLIT; s++) {
            rw[s] /= l;
        }
    }
    workgroupBarrier();
}

// output value d of query head h: the records' accumulators joined
fn reduce_value(h: u32, d: u32) -> f32 {
    let rec = rargs.head_dim + 2u;
    var o = 0.0;
    for (var s = 0u; s < NSPLIT; s++) {
        o += rw[s] * part[(h * NSPLIT + s) * rec + d];
    }
    return o;
}

// partials of query head h (of row wg.y: the rows' heads one after another): NSPLIT records of
// (acc[head_dim], max, sum)
@compute @workgroup_size(WG)
fn kernel_attn_reduce_f32(ids: Ids) {
    let h = ids.wg.y * rargs.n_head + ids.wg.x;
    reduce_weights(h, ids);
    for (var d = ids.lid; d < rargs.head_dim; d += WG) {
        out[h * rargs.head_dim + d] = reduce_value(h, d);
    }
}

// As kernel_attn_reduce_f32, writing the heads' output as the integer mat-vec's x
// (quantize_x.wgsl's layout, blocks of 32 within a head: head_dim a multiple of 32) for the
// output projection that reads it: one quantize_x dispatch less per layer.
@group(0) @binding(10) var<storage, read_write> xq: array<vec4<u32>>;
var<workgroup> ob: array<f32, D>;

// block blk (32 values) of the integer mat-vec's x over token row r of n_head * D values (rows
// mode: row r's x starts at vec4 r * (K / 16 + K / 32), quantize_x.wgsl's layout of rows)
fn store_xq(r: u32, blk: u32, n_head: u32, v: ptr<function, array<vec4<f32>, 8>>) {
    let q = quant_block(v);
    let k = n_head * D;
    let base = r * (k / 16u + k / 32u);
    xq[base + 2u * blk] = q.lo;
    xq[base + 2u * blk + 1u] = q.hi;
    xq[base + k / 16u + blk] = q.scales;
}

@compute @workgroup_size(WG)
fn kernel_attn_reduce_q8(ids: Ids) {
    let h = ids.wg.y * rargs.n_head + ids.wg.x;  // grid (n_head, rows), as the f32 reduce
    reduce_weights(h, ids);
    for (var d = ids.lid; d < D; d += WG) {
        ob[d] = reduce_value(h, d);
    }
    workgroupBarrier();
    let b = ids.lid;  // this thread's block of the head
    if (b < D / 32u) {
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            let e = 32u * b + 4u * j;
            v[j] = vec4<f32>(ob[e], ob[e + 1u], ob[e + 2u], ob[e + 3u]);
        }
        store_xq(ids.wg.y, ids.wg.x * (D / 32u) + b, rargs.n_head, &v);  // block of the row
    }
}

//! section plain
@group(0) @binding(3) var<storage, read> kc4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> vc4: array<vec4<f32>>;

// this KV head's G query heads, scaled, into qd
fn prologue(ids: Ids, kvh: u32, p: u32, s0: u32, s1: u32) {
    for (var e = ids.lid; e < P; e += WG) {
        qd[e] = q4[qrow + kvh * P + e] * args.scale;
    }
}

//! section rope
// The rotary embedding of q and k and the KV-cache store of the new position folded into decode
// attention, in place of a rope_kv_store dispatch before it (fuse.py): every workgroup
// rotates its KV head's G query heads as it loads them; the one whose share of positions holds
// the new position p rotates k, stores k and v at p's cache row, and reads them back from there
// like every other key (no other workgroup reads row p). Same arithmetic as rope_kv.wgsl, for
// n_rot == head_dim, a multiple of 8, so a rotation never splits a vec4. With HEAD_NORM, q's
// and k's heads are first rms-normed with their weights (Qwen3's attn_q_norm and attn_k_norm, D
// values each, eps HN_EPS): two dispatches a layer fewer.
const NEOX: bool = false;
const HEAD_NORM: bool = false;
const HN_EPS: f32 = 1e-6;

@group(0) @binding(3) var<storage, read_write> kc4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> vc4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> k4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> v4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(13) var<storage, read> qnw4: array<vec4<f32>>;  // HEAD_NORM: q's weights
@group(0) @binding(14) var<storage, read> knw4: array<vec4<f32>>;  // and k's
var<workgroup> hn: array<f32, G + 1u>;  // 1 / rms of the G q heads and of the k head

// 1 / rms of head vector v (D4 vec4s from vec4 b of `which`: q4 when 0, k4 when 1)
fn head_inv_rms(b: u32, which: u32) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < D4; e++) {
        var v: vec4<f32>;
        if (which == 0u) {
            v = q4[b + e];
        } else {
            v = k4[b + e];
        }
        s += dot(v, v);
    }
    return 1.0 / sqrt(s / f32(D) + HN_EPS);
}

// q's vec4 i of head g (scaled by its norm with HEAD_NORM)
fn q_at(qb: u32, g: u32, i: u32) -> vec4<f32> {
    if (HEAD_NORM) {
        return q4[qb + i] * hn[g] * qnw4[i];
    }
    return q4[qb + i];
}

fn k_at(kb: u32, i: u32) -> vec4<f32> {
    if (HEAD_NORM) {
        return k4[kb + i] * hn[G] * knw4[i];
    }
    return k4[kb + i];
}

fn cs(p: u32, i: u32) -> vec2<f32> {
    let theta = f32(p) * inv_freq[i];
    return vec2<f32>(cos(theta), sin(theta));
}

// vec4 e of a head (normal rope: pairs (x, y) and (z, w) are pairs 2e and 2e + 1)
fn rot_pairs(v: vec4<f32>, e: u32, p: u32) -> vec4<f32> {
    let a = cs(p, 2u * e);
    let b = cs(p, 2u * e + 1u);
    return vec4<f32>(v.x * a.x - v.y * a.y, v.x * a.y + v.y * a.x,
                     v.z * b.x - v.w * b.y, v.z * b.y + v.w * b.x);
}

// neox rope: value i pairs with i + D / 2; lo holds values 4e..4e+3, hi their partners
struct Halves {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn rot_halves(lo: vec4<f32>, hi: vec4<f32>, e: u32, p: u32) -> Halves {
    let c0 = cs(p, 4u * e);
    let c1 = cs(p, 4u * e + 1u);
    let c2 = cs(p, 4u * e + 2u);
    let c3 = cs(p, 4u * e + 3u);
    let c = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
    let s = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
    return Halves(lo * c - hi * s, lo * s + hi * c);
}

fn prologue(ids: Ids, kvh: u32, p: u32, s0: u32, s1: u32) {
    let h4 = D4 / 2u;
    let kb = krow + kvh * D4;
    if (HEAD_NORM) {  // one thread a head: D values each, a few dozen loads
        if (ids.lid < G) {
            hn[ids.lid] = head_inv_rms(qrow + kvh * P + ids.lid * D4, 0u);
        } else if (ids.lid == G) {
            hn[G] = head_inv_rms(kb, 1u);
        }
        workgroupBarrier();
    }
    for (var e = ids.lid; e < G * h4; e += WG) {
        let g = e / h4;
        let i = e % h4;
        let qb = qrow + kvh * P + g * D4;
        if (NEOX) {
            let r = rot_halves(q_at(qb, g, i), q_at(qb, g, i + h4), i, p);
            qd[g * D4 + i] = r.lo * args.scale;
            qd[g * D4 + i + h4] = r.hi * args.scale;
        } else {
            qd[g * D4 + 2u * i] = rot_pairs(q_at(qb, g, 2u * i), 2u * i, p) * args.scale;
            qd[g * D4 + 2u * i + 1u] = rot_pairs(q_at(qb, g, 2u * i + 1u), 2u * i + 1u, p)
                * args.scale;
        }
    }
    if (s0 <= p && p < s1) {
        let kvd4 = args.n_kv_head * D4;
        let row = (cslot * args.ring + p % args.ring) * kvd4 + kvh * D4;
        for (var i = ids.lid; i < h4; i += WG) {
            if (NEOX) {
                let r = rot_halves(k_at(kb, i), k_at(kb, i + h4), i, p);
                kc4[row + i] = r.lo;
                kc4[row + i + h4] = r.hi;
            } else {
                kc4[row + 2u * i] = rot_pairs(k_at(kb, 2u * i), 2u * i, p);
                kc4[row + 2u * i + 1u] = rot_pairs(k_at(kb, 2u * i + 1u), 2u * i + 1u, p);
            }
        }
        for (var i = ids.lid; i < D4; i += WG) {
            vc4[row + i] = v4[kb + i];
        }
    }
    // the stores above are read back by other threads of this workgroup
    storageBarrier();
}
