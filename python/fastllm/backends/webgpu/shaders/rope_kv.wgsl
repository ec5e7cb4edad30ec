// Rotary embedding of q and k and the KV-cache store, in one dispatch (the three ops a
// transformer layer records between its projections and attention; fusing them saves two
// dispatches per layer). Same arithmetic as rope.wgsl and kv.wgsl: threads [0, nq) rotate a pair
// of q into y, threads [nq, nq + nk) rotate a pair of k straight into the cache (the rotated k is
// read by nothing else), the next n_rows * kv_dim threads copy v into the cache.
// Grid: 2-D over nq + nk + n_rows * kv_dim threads.
// Rows mode (ROWS; backends/base.py, Graph.rows): row r is one token of the sequence in slot
// rows[r].x at position rows[r].y (rows.wgsl's layout), instead of position step.pos + r of
// slot step.slot; a batched step saves the same two dispatches a layer.

const WG: u32 = 64u;
const ROWS: bool = false;

struct RopeKvArgs {
    q: kargs_rope,
    k: kargs_rope,
    kv: kargs_kv_store,
}

@group(0) @binding(0) var<uniform> args: RopeKvArgs;
@group(0) @binding(1) var<storage, read> step: kargs_step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc: array<f32>;
@group(0) @binding(8) var<storage, read_write> vc: array<f32>;
// rows mode: each row's (slot, position); a placeholder otherwise
@group(0) @binding(11) var<storage, read> rows: array<vec2<u32>>;

// the slot and position of token row r
fn slot_pos(r: u32) -> vec2<u32> {
    if (ROWS) {
        return rows[r];
    }
    return vec2<u32>(step.slot, step.pos + r);
}

// the rotated pair (value indices ia, ib within a row's flat array) of pair i of head `head`
struct Pair {
    ia: u32,
    ib: u32,
    a: f32,
    b: f32,
}

fn rotate(a: kargs_rope, gid: u32, is_q: bool) -> Pair {
    let half = a.head_dim / 2u;
    let i = gid % half;
    let head = gid / half;  // row * n_head + h
    let row = head / a.n_head;
    let base = head * a.head_dim;
    let nr2 = a.n_rot / 2u;
    var p: Pair;
    p.ia = base + 2u * i;
    p.ib = p.ia + 1u;
    if (i < nr2 && a.neox != 0u) {
        p.ia = base + i;
        p.ib = base + i + nr2;
    }
    var x0: f32;
    var x1: f32;
    if (is_q) {
        x0 = q[p.ia];
        x1 = q[p.ib];
    } else {
        x0 = k[p.ia];
        x1 = k[p.ib];
    }
    if (i >= nr2) {  // past n_rot: copied
        p.a = x0;
        p.b = x1;
        return p;
    }
    let theta = f32(slot_pos(row).y) * inv_freq[i];
    let c = cos(theta);
    let s = sin(theta);
    p.a = x0 * c - x1 * s;
    p.b = x0 * s + x1 * c;
    return p;
}

// cache index of flat value index e of k or v (rows of kv_dim)
fn cache_at(e: u32) -> u32 {
    let dim = args.kv.kv_dim;
    let at = slot_pos(e / dim);
    return (at.x * args.kv.ring + at.y % args.kv.ring) * dim + e % dim;
}

@compute @workgroup_size(WG)
fn kernel_rope_kv_store_f32(ids: Ids) {
    let gid = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    let nq = args.q.n_rows * args.q.n_head * (args.q.head_dim / 2u);
    let nk = args.k.n_rows * args.k.n_head * (args.k.head_dim / 2u);
    let nv = args.kv.n_rows * args.kv.kv_dim;
    if (gid < nq) {
        let p = rotate(args.q, gid, true);
        y[p.ia] = p.a;
        y[p.ib] = p.b;
    } else if (gid < nq + nk) {
        let p = rotate(args.k, gid - nq, false);
        kc[cache_at(p.ia)] = p.a;
        kc[cache_at(p.ib)] = p.b;
    } else if (gid < nq + nk + nv) {
        let e = gid - nq - nk;
        vc[cache_at(e)] = v[e];
    }
}
