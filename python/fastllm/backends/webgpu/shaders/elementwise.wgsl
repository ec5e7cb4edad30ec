// Element-wise kernels, one thread per value over a 2-D grid (a dimension holds at most 65535
// workgroups). b of add/mul repeats every b_period values (a bias or norm weight row).

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> args: kargs_binary;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@group(0) @binding(0) var<uniform> uargs: kargs_unary;
@group(0) @binding(4) var<storage, read> step: kargs_step;
@group(0) @binding(0) var<uniform> oargs: kargs_swiglu_oai;

fn gidx(ids: Ids) -> u32 {
    return (ids.wg.y * ids.nwg.x + ids.wg.x) * WG + ids.lid;
}

@compute @workgroup_size(WG)
fn kernel_add_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < args.n) {
        y[i] = a[i] + b[i % args.b_period];
    }
}

@compute @workgroup_size(WG)
fn kernel_mul_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < args.n) {
        y[i] = a[i] * b[i % args.b_period];
    }
}

@compute @workgroup_size(WG)
fn kernel_scale_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < args.n) {
        y[i] = a[i] * args.s;
    }
}

@compute @workgroup_size(WG)
fn kernel_swiglu_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < uargs.n) {
        y[i] = swiglu(a[i], b[i]);
    }
}

@compute @workgroup_size(WG)
fn kernel_geglu_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < uargs.n) {
        y[i] = geglu(a[i], b[i]);
    }
}

// gpt-oss's clamped SwiGLU (ggml's swiglu_oai): the gate clamped above, up on both sides
@compute @workgroup_size(WG)
fn kernel_swiglu_oai_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < oargs.n) {
        let x = min(a[i], oargs.limit);
        let u = clamp(b[i], -oargs.limit, oargs.limit);
        y[i] = x / (1.0 + exp(oargs.alpha * -x)) * (u + 1.0);
    }
}

// the last of the step's n_tokens rows of a (n values each)
@compute @workgroup_size(WG)
fn kernel_last_row_f32(ids: Ids) {
    let i = gidx(ids);
    if (i < uargs.n) {
        y[i] = a[(step.n_tokens - 1u) * uargs.n + i];
    }
}
