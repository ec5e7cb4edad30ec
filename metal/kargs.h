// Kernel argument structs: the single definition shared by Metal (this header), WGSL (mirrored
// as `struct` declarations in fastllm's backends/webgpu/shaders/*.wgsl) and Python (packed by field
// name through fastllm.kargs, which parses this file). A test checks all three agree.
//
// Rules: 32-bit fields only (uint32_t, int32_t, float) so WGSL can mirror them; each struct is
// padded to a multiple of 16 bytes (WGSL uniform layout). Field order is the layout.
#pragma once
#ifdef __METAL_VERSION__
#include <metal_stdlib>
typedef uint uint32_t;
typedef int int32_t;
#else
#include <stdint.h>
#endif

// Per-run values shared by every dispatch of a step: a program is recorded once and only this
// changes from one token to the next (DESIGN.md, principle 5).
struct kargs_step {
    uint32_t pos;       // position of the first token of this run
    uint32_t n_tokens;  // tokens in this run
    uint32_t n_kv;      // pos + n_tokens: positions visible to the last token
    uint32_t slot;      // the sequence (slot) whose KV rows and recurrent state the run uses
};

struct kargs_get_rows {
    uint32_t n_rows;    // tokens
    uint32_t n_cols;    // row length of the table
    uint32_t n_vocab;   // rows of the table (ids are clamped into range)
    uint32_t _pad0;
};

struct kargs_rms_norm {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t group;       // normalise each group of this many values (n_cols or head_dim)
    uint32_t has_weight;  // 0: no weight multiply
    float eps;
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

// y (M x N) = x (M x K) @ W^T with W (N x K) of the kernel's weight type.
struct kargs_mul_mat {
    uint32_t M;  // rows of x (tokens)
    uint32_t N;  // rows of W (outputs)
    uint32_t K;  // row length of x and W
    uint32_t w_row_words;  // 32-bit words per W row in the repacked layout
};

// The fused decode mat-vec (metal/mul_mv.metal's kernel_mul_mv_fused_*; the fusions of
// backends/fuse.py): y_s = x' W_s^T for up to three weights W_s of one type over one x', where x'
// is x (x_mode 0), rms_norm(x) * nw of a single token row (1) or silu(x) * up (2); with has_res
// (one weight only) y_0 += res. Slot s takes threadgroups [tg_end of slot s - 1, tg_end of slot
// s) and computes all n_rows of its weight.
struct kargs_mul_mv_fused {
    uint32_t M;        // rows of x (tokens)
    uint32_t K;        // row length of x and W
    uint32_t x_mode;
    uint32_t has_res;
    float eps;         // x_mode 1
    uint32_t n_rows0;
    uint32_t n_rows1;
    uint32_t n_rows2;
    uint32_t tg_end0;
    uint32_t tg_end1;
    uint32_t tg_end2;
    uint32_t _pad0;
};

// Prefill mat-mat (metal/mul_mm.metal): Y = X W^T, then as results leave Y += E (epilogue 1) or
// Y = act(E) * Y with E the gate (2: silu, 3: gelu); E is M x N like Y.
struct kargs_mul_mm {
    uint32_t M;
    uint32_t N;
    uint32_t K;
    uint32_t epilogue;
};

// Element-wise a (op) b over n values; b repeats every b_period values (a bias row) or is full.
struct kargs_binary {
    uint32_t n;
    uint32_t b_period;
    float s;            // scale: the scalar of kernel_scale
    uint32_t _pad0;
};

struct kargs_rope {
    uint32_t n_rows;
    uint32_t n_head;
    uint32_t head_dim;
    uint32_t n_rot;
    float base;
    float freq_scale;
    uint32_t neox;             // 1: pairs (i, i + n_rot/2); 0: pairs (2i, 2i + 1)
    uint32_t has_freq_factors;
};

struct kargs_kv_store {
    uint32_t n_rows;
    uint32_t kv_dim;
    uint32_t ring;     // rows in this layer's cache; position p is stored in row p % ring
    uint32_t _pad0;
};

// rope of q (n_head heads) and k (k_n_head heads) at positions step.pos + row, the rotated k
// and v stored into the cache rows of those positions (metal/rope.metal's
// kernel_rope_kv_store_*, the fused rope, rope, kv_store of backends/fuse.py).
struct kargs_rope_kv_store {
    uint32_t n_rows;
    uint32_t n_head;
    uint32_t k_n_head;
    uint32_t head_dim;
    uint32_t n_rot;
    float base;
    float freq_scale;
    uint32_t neox;
    uint32_t has_freq_factors;
    uint32_t kv_dim;
    uint32_t ring;
    uint32_t _pad0;
};

struct kargs_attention {
    uint32_t n_rows;
    uint32_t n_head;
    uint32_t n_kv_head;
    uint32_t head_dim;
    float scale;
    float softcap;     // 0: none
    uint32_t window;   // 0: full causal; else attend to the last `window` positions
    uint32_t ring;     // rows in this layer's cache (n_ctx unless a sliding window)
    uint32_t has_sinks;  // 1: a sink logit per head (a buffer of n_head) joins the softmax
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

struct kargs_unary {
    uint32_t n;
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

struct kargs_argmax {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t pos0;      // greedy decoding: the run's first position (the token history's origin)
    uint32_t _pad1;
};

// Sampling on the device (shaders/sample.wgsl, metal/sample.metal), the chain of
// fastllm.sampling.make_sampler: the repetition penalty over the last last_n ids (0: none),
// top_k (1..64), top_p, min_p, temperature, then a draw with the uniform number of the step
// (index: position - pos0). n_cols: the logits row's length, cut into chunks of `chunk`
// columns, one workgroup each.
struct kargs_sample {
    uint32_t n_cols;
    uint32_t top_k;
    uint32_t pos0;
    uint32_t chunk;
    float temperature;
    float top_p;
    float min_p;
    float penalty;
    uint32_t last_n;
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

// Split-KV decode attention: kernel_attn_reduce_f32 joins the n_splits partial results that
// kernel_attn_decode_* wrote for each (row, head).
// gpt-oss's clamped SwiGLU over n values (kernel_swiglu_oai_f32)
struct kargs_swiglu_oai {
    uint32_t n;
    float alpha;
    float limit;
    uint32_t _pad0;
};

struct kargs_attn_reduce {
    uint32_t n_rows;
    uint32_t n_head;
    uint32_t head_dim;
    uint32_t n_splits;
    uint32_t has_sinks;  // as kargs_attention's: the splits are joined with the head's sink
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

// A weight too large for one storage binding (WebGPU caps a binding, e.g. 128 MiB) is split by
// rows into parts, one dispatch per part; this part holds rows [row0, row0 + n_rows) of the whole.
// Unsplit weights use row0 = 0, n_rows = all rows.
struct kargs_part {
    uint32_t row0;
    uint32_t n_rows;
    uint32_t _pad0;
    uint32_t _pad1;
};

// Up to three mat-vecs over one normed token row in one dispatch (the WebGPU backend's fusion of
// the q, k, v or the gate, up projections that read the same rms_norm): slot s takes workgroups
// [wg_end of slot s - 1, wg_end of slot s) and computes all n_rows of its own weight and output.
struct kargs_mv_slots {
    uint32_t n_rows0;
    uint32_t n_rows1;
    uint32_t n_rows2;
    uint32_t _pad0;
    uint32_t wg_end0;
    uint32_t wg_end1;
    uint32_t wg_end2;
    uint32_t _pad1;
};

// -- recurrent-model ops (RWKV; metal/rwkv.metal, shaders/rwkv.wgsl) --------------------------

// (x - mean) / sqrt(var + eps) over each group of a row, then * w + b (either may be absent).
struct kargs_layer_norm {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t group;
    uint32_t has_weight;
    uint32_t has_bias;
    float eps;
    uint32_t _pad0;
    uint32_t _pad1;
};

// a + (b - a) * (mu[mu_off + c] + mu_v[row * mu_v_cols + mu_col + c]) over (n_rows, n_cols)
struct kargs_lerp {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t has_mu;
    uint32_t mu_off;  // mu_row * n_cols
    uint32_t has_mu_v;
    uint32_t mu_v_cols;  // row length of mu_v
    uint32_t mu_col;     // first column of mu_v read
    uint32_t _pad0;
};

// token_shift, l2_norm (group, eps), wkv6 / wkv7 / wkv7_bonus (group = head size)
struct kargs_rwkv {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t group;
    float eps;
};

// slice_cols: out[t, g*width + i] = x[t, g*period + start + i]; out_cols = (n_cols / period) *
// width
struct kargs_slice_cols {
    uint32_t n_rows;
    uint32_t n_cols;
    uint32_t start;
    uint32_t width;
    uint32_t period;
    uint32_t out_cols;
    uint32_t _pad0;
    uint32_t _pad1;
};

// gated_delta: q and k of n_k_heads, v of n_v_heads heads of head_dim; scale = 1/sqrt(head_dim);
// eps: the l2 norms' of q and k
struct kargs_gated_delta {
    uint32_t n_rows;
    uint32_t n_k_heads;
    uint32_t n_v_heads;
    uint32_t head_dim;
    float scale;
    float eps;
    uint32_t _pad1;
    uint32_t _pad2;
};

// Block-diagonal product: y[:, b*m : (b+1)*m] = x[:, b*k : (b+1)*k] @ W[b]^T with W (n_blocks,
// m, k) stored as n_blocks * m rows of k values.
struct kargs_mul_mat_blocks {
    uint32_t M;  // rows of x (tokens)
    uint32_t n_blocks;
    uint32_t m;            // rows of a block
    uint32_t k;            // columns of a block
    uint32_t w_row_words;  // 32-bit words per W row in WebGPU's repacked layout
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

// -- a batched decode step's sampling (shaders/sample_rows.wgsl, metal/sample_rows.metal) ------

// The row split: kernel_sample_rows_part runs on a grid of (n_parts, rows) workgroups, one chunk
// of one row each; kernel_sample_rows_final on (rows). Row r's logits start at r * n_cols.
struct kargs_sample_rows {
    uint32_t n_cols;   // the logits row's length (n_vocab)
    uint32_t chunk;    // columns per part workgroup
    uint32_t n_parts;  // ceil(n_cols / chunk)
    uint32_t lp_base;  // the output word where row 0's log-probabilities start (after the ids)
};

// One row's chain (fastllm.sampling.RowSampling and sample_row), in a storage array by row.
struct kargs_sample_row {
    uint32_t mode;     // 0: sampled on the host (the device writes id -1); 1: greedy; 2: drawn
    uint32_t top_k;    // 1..64 (mode 2)
    float temperature;
    float top_p;
    float min_p;
    float u;           // the draw's uniform number in [0, 1)
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    uint32_t n_window;  // penalized ids at windows[row * 64 ..] (0: no penalties)
    uint32_t n_bias;    // logit_bias entries (id, bias) at bias[row * 64 ..]
    int32_t logprobs;   // -1: none; else the chosen token's log-probability and this many top
                        // alternatives (0..20) of the raw distribution
    uint32_t mask;      // 1: only the tokens whose bit is set in the row's allowed-token bitmask
                        // (masks[row * ceil(n_cols / 32) ..], bit t % 32 of word t / 32) can be
                        // chosen (a grammar's constraint); 0: every token
};

// -- mixture of experts (metal/moe.metal, shaders/moe.wgsl, shaders/mul_mv_id.wgsl) ------------

// The router (Graph.moe_route): for each of n_rows rows of n_expert logits, the k experts of the
// largest probabilities (+ the selection bias where has_bias) and their weights.
struct kargs_moe_route {
    uint32_t n_rows;
    uint32_t n_expert;
    uint32_t k;
    uint32_t gating;    // 0: softmax; 1: sigmoid; 2: softmax over the chosen logits (gpt-oss)
    uint32_t norm;      // 1: weights / max(sum of weights, 2^-14)
    uint32_t has_bias;
    float scale;        // the weights' multiplier
    uint32_t _pad0;
};

// Products over each row's chosen experts (ggml's mul_mat_id): pair p = row * k + j reads
// expert ids[p]'s matrix (rows ids[p] * m .. + m - 1 of a weight of n_expert * m rows of K
// values) and x row p (x_per_pair) or p / k, and writes y[p * m ..]. The grouped form
// (prefill) takes up to `chunk` pairs of one expert a workgroup, from kernel_moe_group's list
// and chunk table (n_chunks slots: ceil(n_pairs / chunk) + n_expert cover any split).
struct kargs_mul_mv_id {
    uint32_t n_pairs;
    uint32_t k;
    uint32_t m;
    uint32_t K;
    uint32_t x_per_pair;
    uint32_t n_expert;
    uint32_t w_row_words;  // 32-bit words per W row in WebGPU's repacked layout
    uint32_t n_chunks;     // grouped form: slots of the chunk table (its workgroups)
    uint32_t chunk;        // grouped form: pairs a workgroup
    uint32_t _pad0;
    uint32_t _pad1;
    uint32_t _pad2;
};

// Per-expert values over (n_pairs, m) rows (add_id, mul_id: b holds b_cols values an expert,
// m or 1) and the weighted sum of each row's k expert outputs (moe_sum: n_pairs / k rows of m).
struct kargs_moe_ew {
    uint32_t n_pairs;
    uint32_t k;
    uint32_t m;
    uint32_t b_cols;
};
