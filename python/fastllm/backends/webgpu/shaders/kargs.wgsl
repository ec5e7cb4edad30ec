// Mirrors of the kernel argument structs of metal/kargs.h (the single definition): same names,
// same field order, 32-bit fields. tests/backends/test_ops.py checks them against the header.

struct kargs_step {
    pos: u32,
    n_tokens: u32,
    n_kv: u32,
    slot: u32,
}

struct kargs_get_rows {
    n_rows: u32,
    n_cols: u32,
    n_vocab: u32,
    _pad0: u32,
}

struct kargs_rms_norm {
    n_rows: u32,
    n_cols: u32,
    group: u32,
    has_weight: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_mul_mat {
    M: u32,
    N: u32,
    K: u32,
    w_row_words: u32,
}

struct kargs_mul_mv_fused {
    M: u32,
    K: u32,
    x_mode: u32,
    has_res: u32,
    eps: f32,
    n_rows0: u32,
    n_rows1: u32,
    n_rows2: u32,
    tg_end0: u32,
    tg_end1: u32,
    tg_end2: u32,
    _pad0: u32,
}

struct kargs_mul_mm {
    M: u32,
    N: u32,
    K: u32,
    epilogue: u32,
}

struct kargs_binary {
    n: u32,
    b_period: u32,
    s: f32,
    _pad0: u32,
}

struct kargs_rope {
    n_rows: u32,
    n_head: u32,
    head_dim: u32,
    n_rot: u32,
    base: f32,
    freq_scale: f32,
    neox: u32,
    has_freq_factors: u32,
}

struct kargs_kv_store {
    n_rows: u32,
    kv_dim: u32,
    ring: u32,
    _pad0: u32,
}

struct kargs_rope_kv_store {
    n_rows: u32,
    n_head: u32,
    k_n_head: u32,
    head_dim: u32,
    n_rot: u32,
    base: f32,
    freq_scale: f32,
    neox: u32,
    has_freq_factors: u32,
    kv_dim: u32,
    ring: u32,
    _pad0: u32,
}

struct kargs_attention {
    n_rows: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    scale: f32,
    softcap: f32,
    window: u32,
    ring: u32,
    has_sinks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_unary {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_argmax {
    n_rows: u32,
    n_cols: u32,
    pos0: u32,
    _pad1: u32,
}

struct kargs_sample {
    n_cols: u32,
    top_k: u32,
    pos0: u32,
    chunk: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    penalty: f32,
    last_n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_swiglu_oai {
    n: u32,
    alpha: f32,
    limit: f32,
    _pad0: u32,
}

struct kargs_attn_reduce {
    n_rows: u32,
    n_head: u32,
    head_dim: u32,
    n_splits: u32,
    has_sinks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_part {
    row0: u32,
    n_rows: u32,
    _pad0: u32,
    _pad1: u32,
}

struct kargs_mv_slots {
    n_rows0: u32,
    n_rows1: u32,
    n_rows2: u32,
    _pad0: u32,
    wg_end0: u32,
    wg_end1: u32,
    wg_end2: u32,
    _pad1: u32,
}

// -- recurrent-model ops (RWKV; rwkv.wgsl, rwkv_blocks.wgsl) ----------------------------------

struct kargs_layer_norm {
    n_rows: u32,
    n_cols: u32,
    group: u32,
    has_weight: u32,
    has_bias: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

struct kargs_lerp {
    n_rows: u32,
    n_cols: u32,
    has_mu: u32,
    mu_off: u32,
    has_mu_v: u32,
    mu_v_cols: u32,
    mu_col: u32,
    _pad0: u32,
}

struct kargs_rwkv {
    n_rows: u32,
    n_cols: u32,
    group: u32,
    eps: f32,
}

struct kargs_slice_cols {
    n_rows: u32,
    n_cols: u32,
    start: u32,
    width: u32,
    period: u32,
    out_cols: u32,
    _pad0: u32,
    _pad1: u32,
}

struct kargs_gated_delta {
    n_rows: u32,
    n_k_heads: u32,
    n_v_heads: u32,
    head_dim: u32,
    scale: f32,
    eps: f32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_mul_mat_blocks {
    M: u32,
    n_blocks: u32,
    m: u32,
    k: u32,
    w_row_words: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_sample_rows {
    n_cols: u32,
    chunk: u32,
    n_parts: u32,
    lp_base: u32,
}

struct kargs_sample_row {
    mode: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    u: f32,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    n_window: u32,
    n_bias: u32,
    logprobs: i32,
    mask: u32,
}

struct kargs_moe_route {
    n_rows: u32,
    n_expert: u32,
    k: u32,
    gating: u32,
    norm: u32,
    has_bias: u32,
    scale: f32,
    _pad0: u32,
}

struct kargs_mul_mv_id {
    n_pairs: u32,
    k: u32,
    m: u32,
    K: u32,
    x_per_pair: u32,
    n_expert: u32,
    w_row_words: u32,
    n_chunks: u32,
    chunk: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct kargs_moe_ew {
    n_pairs: u32,
    k: u32,
    m: u32,
    b_cols: u32,
}
