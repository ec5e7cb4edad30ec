// Index of each row's maximum, the first one on ties (as numpy). One workgroup per row: threads
// scan strided columns, then a tree in workgroup memory keeps (value, index) pairs.

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> args: kargs_argmax;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;
// kernel_argmax_greedy only: the step's values, advanced here to the next step, and the tokens
// produced so far (index: position - args.pos0).
@group(0) @binding(3) var<storage, read_write> step: kargs_step;
@group(0) @binding(4) var<storage, read_write> history: array<i32>;

var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

// The first maximum of x[base + c] over columns c in [c0, c1), in bi[0] (as a column) for
// every thread once it returns: each thread scans every WG-th column, then the tree.
fn argmax_range(t: u32, base: u32, c0: u32, c1: u32) {
    var v = MASKED;
    var vi = 0xFFFFFFFFu;
    for (var c = c0 + t; c < c1; c += WG) {
        let e = x[base + c];
        if (e > v || vi == 0xFFFFFFFFu) {
            v = e;
            vi = c;
        }
    }
    argmax_tree(t, v, vi);
}

@compute @workgroup_size(WG)
fn kernel_argmax_f32(ids: Ids) {
    argmax_range(ids.lid, ids.wg.x * args.n_cols, 0u, args.n_cols);
    if (ids.lid == 0u) {
        out[ids.wg.x] = i32(bi[0]);
    }
}

// Greedy decoding splits the row's scan over workgroups of CHUNK columns each (one workgroup
// scanning a 128K vocabulary alone takes ~13 us on an H100): kernel_argmax_part writes each
// chunk's (value bits, index), kernel_argmax_greedy (one workgroup of at least as many threads
// as chunks) picks among them.
const CHUNK: u32 = 2048u;
@group(0) @binding(5) var<storage, read_write> parts: array<vec2<u32>>;

// bv/bi[t] = (v, vi), then the tree: the best pair in bv[0]/bi[0] for every thread.
fn argmax_tree(t: u32, v: f32, vi: u32) {
    bv[t] = v;
    bi[t] = vi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            let ov = bv[t + s];
            let oi = bi[t + s];
            let better = ov > bv[t] || (ov == bv[t] && oi < bi[t]);
            if (oi != 0xFFFFFFFFu && (bi[t] == 0xFFFFFFFFu || better)) {
                bv[t] = ov;
                bi[t] = oi;
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn kernel_argmax_part(ids: Ids) {
    let c0 = ids.wg.x * CHUNK;
    argmax_range(ids.lid, 0u, c0, min(args.n_cols, c0 + CHUNK));
    if (ids.lid == 0u) {
        parts[ids.wg.x] = vec2<u32>(bitcast<u32>(bv[0]), bi[0]);
    }
}

// Greedy decoding's last dispatch of a step: the token is the next step's input and goes into
// the history, and the step moves one position on, so steps follow each other in one compute
// pass with nothing copied between them (a one-row, one-token program).
@compute @workgroup_size(WG)
fn kernel_argmax_greedy(ids: Ids) {
    let t = ids.lid;
    var v = MASKED;
    var vi = 0xFFFFFFFFu;
    if (t < (args.n_cols + CHUNK - 1u) / CHUNK) {
        let p = parts[t];
        v = bitcast<f32>(p.x);
        vi = p.y;
    }
    argmax_tree(t, v, vi);
    if (t == 0u) {
        let tok = i32(bi[0]);
        out[0] = tok;
        history[step.pos - args.pos0] = tok;
        step.pos += 1u;
        step.n_kv += 1u;
    }
}
