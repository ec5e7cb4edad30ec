// How a kernel that takes one token row x reads it: prepare_x(ids) once per workgroup, then
// load_x(i) for vec4 i of the row. A kernel's variant sections include one of these with a line
// `//! use x_forms.wgsl NAME` (shaders.py expands it), so the fused forms are written once.
// They read x4 (binding 1) and args.mm.K; norm also args.norm (kargs_rms_norm) and WG. xoff
// (vec4s) is the row's start in x4: 0 but in quantize_x.wgsl, which quantizes several rows.

//! section plain
var<private> xoff: u32 = 0u;

fn prepare_x(ids: Ids) {}

fn load_x(i: u32) -> vec4<f32> {
    return x4[xoff + i];
}

//! section glu
@group(0) @binding(7) var<storage, read> up4: array<vec4<f32>>;
var<private> xoff: u32 = 0u;

fn prepare_x(ids: Ids) {}

// as kernel_swiglu_f32: g / (1 + exp(-g)) * up
fn load_x(i: u32) -> vec4<f32> {
    let g = x4[xoff + i];
    return g / (1.0 + exp(-g)) * up4[xoff + i];
}

//! section norm
@group(0) @binding(9) var<storage, read> nw4: array<vec4<f32>>;
var<private> inv_rms: f32;
var<private> xoff: u32 = 0u;

// as kernel_rms_norm_f32 over the one token row: x / sqrt(mean(x^2) + eps) * nw; each workgroup
// reduces the row itself
fn prepare_x(ids: Ids) {
    var s = 0.0;
    for (var i = ids.lid; i < args.mm.K / 4u; i += WG) {
        let v = x4[xoff + i];
        s += dot(v, v);
    }
    inv_rms = 1.0 / sqrt(wg_sum(s, ids) / f32(args.mm.K) + args.norm.eps);
}

fn load_x(i: u32) -> vec4<f32> {
    return x4[xoff + i] * inv_rms * nw4[i];
}
