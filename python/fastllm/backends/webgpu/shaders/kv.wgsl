// Writes k and v (n_rows x kv_dim) into a layer's cache at positions pos + row; a ring layer
// (sliding window) keeps position p in row p % ring; the run's slot owns rows slot * ring... One thread per value; 2-D grid.

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> args: kargs_kv_store;
@group(0) @binding(1) var<storage, read> step: kargs_step;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> kc: array<f32>;
@group(0) @binding(5) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(WG)
fn kernel_kv_store_f32(ids: Ids) {
    let i = (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
    if (i >= args.n_rows * args.kv_dim) {
        return;
    }
    let row = i / args.kv_dim;
    let dst = (step.slot * args.ring + (step.pos + row) % args.ring) * args.kv_dim + i % args.kv_dim;
    kc[dst] = k[i];
    vc[dst] = v[i];
}
