// Rows mode (backends/base.py, Graph.rows): a decode step of several sequences at once, row r
// being one token of the sequence in slot rows[r].x at position rows[r].y. The ops that depend
// on where a row is: rope at each row's own position, the KV store into each row's own slot, and
// attention of each row over its own slot's cache. A layer's cache holds the slots one after
// another (slot s at rows s * ring..; position p in row s * ring + p % ring).

const WG: u32 = 64u;
const G: u32 = 1u;  // query heads per KV head (attention)
const D: u32 = 64u;  // head_dim (attention)

@group(0) @binding(1) var<storage, read> rows: array<vec2<u32>>;

// -- rope: as rope.wgsl, the angle from the row's own position -------------------------------
@group(0) @binding(0) var<uniform> rope_args: kargs_rope;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn kernel_rope_rows_f32(ids: Ids) {
    let gid = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    let half = rope_args.head_dim / 2u;
    if (gid >= rope_args.n_rows * rope_args.n_head * half) {
        return;
    }
    let i = gid % half;
    let head = gid / half;  // row * n_head + h
    let row = head / rope_args.n_head;
    let base = head * rope_args.head_dim;
    let nr2 = rope_args.n_rot / 2u;
    if (i >= nr2) {
        y[base + 2u * i] = x[base + 2u * i];
        y[base + 2u * i + 1u] = x[base + 2u * i + 1u];
        return;
    }
    let theta = f32(rows[row].y) * inv_freq[i];
    let c = cos(theta);
    let s = sin(theta);
    var ia = base + 2u * i;
    var ib = ia + 1u;
    if (rope_args.neox != 0u) {
        ia = base + i;
        ib = base + i + nr2;
    }
    let a = x[ia];
    let b = x[ib];
    y[ia] = a * c - b * s;
    y[ib] = a * s + b * c;
}

// -- kv_store: row r's k and v into its slot's cache row for its position --------------------
@group(0) @binding(0) var<uniform> kv_args: kargs_kv_store;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc: array<f32>;
@group(0) @binding(8) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(WG)
fn kernel_kv_store_rows_f32(ids: Ids) {
    let i = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    if (i >= kv_args.n_rows * kv_args.kv_dim) {
        return;
    }
    let at = rows[i / kv_args.kv_dim];
    let dst = (at.x * kv_args.ring + at.y % kv_args.ring) * kv_args.kv_dim + i % kv_args.kv_dim;
    kc[dst] = k[i];
    vc[dst] = v[i];
}

// -- attention: one workgroup per (KV head, row) ---------------------------------------------
// The row's G query heads of this KV head (scaled) sit in workgroup memory; the visible
// positions pass in blocks of WG keys, one key a thread: its G scores, then an online softmax
// (running maximum m and sum l per query head) and the weighted values, each thread keeping
// its own share of the G * D outputs in workgroup memory. As reference.attention for one row.
@group(0) @binding(0) var<uniform> at_args: kargs_attention;
@group(0) @binding(9) var<storage, read> q: array<f32>;
@group(0) @binding(10) var<storage, read> kc_r: array<f32>;
@group(0) @binding(11) var<storage, read> vc_r: array<f32>;
@group(0) @binding(12) var<storage, read_write> o: array<f32>;

var<workgroup> qs: array<f32, G * D>;
var<workgroup> sc: array<f32, G * WG>;
var<workgroup> acc: array<f32, G * D>;
var<workgroup> m_run: array<f32, G>;
var<workgroup> l_run: array<f32, G>;
var<workgroup> corr: array<f32, G>;

@compute @workgroup_size(WG)
fn kernel_attn_rows_f32(ids: Ids) {
    let t = ids.lid;
    let kvh = ids.wg.x;
    let row = ids.wg.y;
    let at = rows[row];
    let p = at.y;
    let base = at.x * at_args.ring;  // the slot's first cache row
    let kvd = at_args.n_kv_head * D;
    let q0 = row * at_args.n_head * D + kvh * G * D;  // this KV head's G query heads
    for (var e = t; e < G * D; e += WG) {
        qs[e] = q[q0 + e] * at_args.scale;
        acc[e] = 0.0;
    }
    if (t < G) {
        m_run[t] = MASKED;
        l_run[t] = 0.0;
    }
    let first = first_visible(p, at_args.window);
    for (var j0 = first; j0 <= p; j0 += WG) {
        workgroupBarrier();  // qs, and the last block's readers of sc
        let j = j0 + t;
        if (j <= p) {
            let kb = (base + j % at_args.ring) * kvd + kvh * D;
            for (var g = 0u; g < G; g++) {
                var s = 0.0;
                for (var d = 0u; d < D; d++) {
                    s += qs[g * D + d] * kc_r[kb + d];
                }
                sc[g * WG + t] = capped(s, at_args.softcap);
            }
        } else {
            for (var g = 0u; g < G; g++) {
                sc[g * WG + t] = MASKED;
            }
        }
        workgroupBarrier();
        let nb = min(WG, p + 1u - j0);  // keys of this block
        if (t < G) {
            var bm = MASKED;
            for (var i = 0u; i < nb; i++) {
                bm = max(bm, sc[t * WG + i]);
            }
            let mn = max(m_run[t], bm);
            corr[t] = exp(m_run[t] - mn);
            m_run[t] = mn;
        }
        workgroupBarrier();
        for (var g = 0u; g < G; g++) {
            sc[g * WG + t] = select(0.0, exp(sc[g * WG + t] - m_run[g]), t < nb);
        }
        workgroupBarrier();
        if (t < G) {
            var bl = 0.0;
            for (var i = 0u; i < nb; i++) {
                bl += sc[t * WG + i];
            }
            l_run[t] = l_run[t] * corr[t] + bl;
        }
        for (var e = t; e < G * D; e += WG) {
            let g = e / D;
            let vb = kvh * D + e % D;
            var a = acc[e] * corr[g];
            for (var i = 0u; i < nb; i++) {
                a += sc[g * WG + i] * vc_r[(base + (j0 + i) % at_args.ring) * kvd + vb];
            }
            acc[e] = a;
        }
    }
    workgroupBarrier();
    for (var e = t; e < G * D; e += WG) {
        o[q0 + e] = acc[e] / l_run[e / D];
    }
}
