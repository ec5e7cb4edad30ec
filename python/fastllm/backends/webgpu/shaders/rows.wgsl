// Rows mode (backends/base.py, Graph.rows): a decode step of several sequences at once, row r
// being one token of the sequence in slot rows[r].x at position rows[r].y. The ops that depend
// on where a row is: rope at each row's own position and the KV store into each row's own slot
// (attention of each row over its own slot's cache is attn_decode.wgsl's split kernel with ROWS).
// A layer's cache holds the slots one after another (slot s at rows s * ring..; position p in
// row s * ring + p % ring).

const WG: u32 = 64u;

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
