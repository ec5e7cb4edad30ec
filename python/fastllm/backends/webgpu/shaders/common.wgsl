// Workgroup reductions, in two versions: the backend includes the section that matches the
// device, `subgroup` (wgpu feature "subgroup": subgroup built-ins, used without `enable
// subgroups;`, which naga rejects) or `shared` (workgroup memory only). Kernels receive their
// built-ins as `ids: Ids` and number threads with thread_index(ids): with subgroups that index
// runs lane-first inside each subgroup, so an aligned run of indices shorter than a subgroup is
// one set of lanes whatever order the driver hands lanes out in.
// Every module that includes this defines `const WG: u32`, its workgroup size (a power of two).

// A score that no softmax weight survives: exp(MASKED - m) is 0 for every finite m >= MASKED.
// (WGSL has no infinity literal.)
const MASKED: f32 = -3.0e38;

// Attention: the first position a query at position p sees (a window keeps the last `window`)
fn first_visible(p: u32, window: u32) -> u32 {
    if (window > 0u && p + 1u > window) {
        return p + 1u - window;
    }
    return 0u;
}

// Attention: scores through softcap * tanh(s / softcap) (Gemma 2), when softcap > 0. The clamp
// keeps tanh's exp() finite (tanh(15) == 1 in f32).
fn capped(s: f32, softcap: f32) -> f32 {
    if (softcap > 0.0) {
        return tanh(clamp(s / softcap, -15.0, 15.0)) * softcap;
    }
    return s;
}

// The FFN's gated activations, as ggml's: silu(g) * u, and gelu(g) * u with GELU in its tanh
// form (the clamp keeps tanh's exp() finite: tanh(15) == 1 in f32)
fn swiglu(g: f32, u: f32) -> f32 {
    return g / (1.0 + exp(-g)) * u;
}

fn geglu(g: f32, u: f32) -> f32 {
    let t = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
    return 0.5 * g * (1.0 + tanh(t)) * u;
}

// (1, 0, 0, 0) ... (0, 0, 0, 1) for r = 0 .. 3: mat-vecs spread a row's sum over a vec4 with it
// instead of a dynamic component index
fn onehot(r: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(r) == vec4<u32>(0u, 1u, 2u, 3u));
}

// A block of 32 values as the integer mat-vecs read x (quantize_x.wgsl's layout): its bytes
// round(v / d), d = max |v| / 127 (0 for an all-zero block, whose bytes are then 0), as two
// vec4s of words, and (d, sum of the first 16 values, sum of the last 16, 0) as f32 bits.
struct QBlock {
    lo: vec4<u32>,
    hi: vec4<u32>,
    scales: vec4<u32>,
}

fn quant_block(v: ptr<function, array<vec4<f32>, 8>>) -> QBlock {
    var amax = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        amax = max(amax, abs((*v)[j]));
    }
    let d = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    var w: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        w[j] = pack4xI8(vec4<i32>(round((*v)[j] * inv)));
    }
    let one = vec4<f32>(1.0);
    let s0 = dot((*v)[0] + (*v)[1] + (*v)[2] + (*v)[3], one);
    let s1 = dot((*v)[4] + (*v)[5] + (*v)[6] + (*v)[7], one);
    return QBlock(vec4<u32>(w[0], w[1], w[2], w[3]), vec4<u32>(w[4], w[5], w[6], w[7]),
                  bitcast<vec4<u32>>(vec4<f32>(d, s0, s1, 0.0)));
}

fn reduce_op4(a: vec4<f32>, b: vec4<f32>, take_max: bool) -> vec4<f32> {
    return select(a + b, max(a, b), take_max);
}

// Sum of v over each aligned run of n thread indices (group_reduce4, in the device's section)
fn group_sum4(v: vec4<f32>, n: u32, ids: Ids) -> vec4<f32> {
    return group_reduce4(v, n, ids, false);
}

// Component-wise maximum of v over each aligned run of n thread indices (the integer
// mat-vecs' x: the largest |x| of a block of 32 values spread over 8 threads)
fn group_max4(v: vec4<f32>, n: u32, ids: Ids) -> vec4<f32> {
    return group_reduce4(v, n, ids, true);
}

//! section subgroup
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_size) sgs: u32,
    @builtin(subgroup_invocation_id) sgl: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(num_subgroups) nsg: u32,
}

fn thread_index(ids: Ids) -> u32 {
    return ids.sgid * ids.sgs + ids.sgl;
}

var<workgroup> red4: array<vec4<f32>, WG>;

// Sum (or with take_max the component-wise maximum) of v over each aligned run of n thread
// indices (n a power of two, n <= WG); every thread gets its run's result. Lanes first
// (butterfly), then the per-subgroup partials through memory. take_max is a constant at every
// call (group_sum4 / group_max4), so the select folds away.
fn group_reduce4(v: vec4<f32>, n: u32, ids: Ids, take_max: bool) -> vec4<f32> {
    let m = min(n, ids.sgs);
    var s = v;
    for (var o = 1u; o < m; o <<= 1u) {
        s = reduce_op4(s, subgroupShuffleXor(s, o), take_max);
    }
    let t = thread_index(ids);
    if (ids.sgl % m == 0u) {
        red4[t / m] = s;
    }
    workgroupBarrier();
    let per = n / m;
    let first = (t / n) * per;
    var r = red4[first];
    for (var q = 1u; q < per; q++) {
        r = reduce_op4(r, red4[first + q], take_max);
    }
    workgroupBarrier();
    return r;
}

fn wg_sum(v: f32, ids: Ids) -> f32 {
    return group_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), WG, ids).x;
}

fn wg_max(v: f32, ids: Ids) -> f32 {
    let s = subgroupMax(v);
    if (ids.sgl == 0u) {
        red4[ids.sgid].x = s;
    }
    workgroupBarrier();
    var r = red4[0].x;
    for (var q = 1u; q < ids.nsg; q++) {
        r = max(r, red4[q].x);
    }
    workgroupBarrier();
    return r;
}

// Component-wise maximum of v over the workgroup; every thread gets it.
fn wg_max4(v: vec4<f32>, ids: Ids) -> vec4<f32> {
    let s = subgroupMax(v);
    if (ids.sgl == 0u) {
        red4[ids.sgid] = s;
    }
    workgroupBarrier();
    var r = red4[0];
    for (var q = 1u; q < ids.nsg; q++) {
        r = max(r, red4[q]);
    }
    workgroupBarrier();
    return r;
}

//! section shared
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

fn thread_index(ids: Ids) -> u32 {
    return ids.lid;
}

var<workgroup> red4: array<vec4<f32>, WG>;

// Sum (or with take_max the component-wise maximum) of v over each aligned run of n thread
// indices (n a power of two, n <= WG): a tree in workgroup memory; every thread gets its run's
// result.
fn group_reduce4(v: vec4<f32>, n: u32, ids: Ids, take_max: bool) -> vec4<f32> {
    let t = ids.lid;
    red4[t] = v;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s >>= 1u) {
        if (t % n < s) {
            red4[t] = reduce_op4(red4[t], red4[t + s], take_max);
        }
        workgroupBarrier();
    }
    let r = red4[t - t % n];
    workgroupBarrier();
    return r;
}

fn wg_sum(v: f32, ids: Ids) -> f32 {
    return group_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), WG, ids).x;
}

fn wg_max(v: f32, ids: Ids) -> f32 {
    let t = ids.lid;
    red4[t].x = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red4[t].x = max(red4[t].x, red4[t + s].x);
        }
        workgroupBarrier();
    }
    let r = red4[0].x;
    workgroupBarrier();
    return r;
}

fn wg_max4(v: vec4<f32>, ids: Ids) -> vec4<f32> {
    let t = ids.lid;
    red4[t] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red4[t] = max(red4[t], red4[t + s]);
        }
        workgroupBarrier();
    }
    let r = red4[0];
    workgroupBarrier();
    return r;
}
