// ggml's rope with YaRN parameters as llama.cpp's context derives them (llama-context.cpp),
// printed as JSON: the oracle for fastllm's YaRN (rope op with per-pair divisors and a scale),
// written to ggml_rope_yarn.json beside this file. Built against ggml's CPU backend from the
// llama.cpp tree of PyPI's llama-cpp-python 0.3.36 sdist (cmake on its ggml/ folder, targets
// ggml-base and ggml-cpu), then:
//   cc -O2 -I ggml/include ggml_rope_yarn.c libggml-cpu.a libggml-base.a -lstdc++ -lm -lpthread
#include "ggml.h"
#include "ggml-cpu.h"
#include <math.h>
#include <stdio.h>

static float get_mscale(float scale, float mscale) {
    return scale <= 1.0f ? 1.0f : (0.1f * mscale * logf(scale) + 1.0f);
}

// llama_context: cparams.yarn_attn_factor for a YaRN file (ext_factor != 0)
static float ctx_attn_factor(float freq_scale, float log_mul, float rope_attn_factor) {
    const float factor = 1.0f / freq_scale;
    float a = log_mul != 0.0f ? get_mscale(factor, 1.0f) / get_mscale(factor, log_mul)
                              : get_mscale(factor, 1.0f);
    a *= 1.0f / (1.0f + 0.1f * logf(factor));
    return a * rope_attn_factor;
}

static const int POS[] = {0, 1, 5, 100, 1000, 3000};
#define NP 6
#define HD 16
#define NH 2

static void run(int mode, float base, float freq_scale, int n_ctx_orig, float beta_fast,
                float beta_slow, float log_mul, float raf, int with_ff, int first) {
    struct ggml_init_params ip = {16 * 1024 * 1024, NULL, false};
    struct ggml_context * ctx = ggml_init(ip);
    struct ggml_tensor * x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HD, NH, NP);
    struct ggml_tensor * pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, NP);
    struct ggml_tensor * ff = with_ff ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, HD / 2) : NULL;
    float * xd = (float *) x->data;
    for (int t = 0; t < NP; t++)
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < HD; j++)
                xd[(t * NH + h) * HD + j] = sinf(0.37f * j + 1.3f * h + 0.11f * t);
    for (int t = 0; t < NP; t++) ((int *) pos->data)[t] = POS[t];
    if (ff) for (int i = 0; i < HD / 2; i++) ((float *) ff->data)[i] = 1.0f + 0.4f * i;
    const float attn = ctx_attn_factor(freq_scale, log_mul, raf);
    struct ggml_tensor * y = ggml_rope_ext(ctx, x, pos, ff, HD, mode, n_ctx_orig, base,
                                           freq_scale, 1.0f, attn, beta_fast, beta_slow);
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_graph_compute_with_ctx(ctx, gf, 1);
    printf("%s{\"neox\": %s, \"base\": %g, \"freq_scale\": %.9g, \"n_ctx_orig\": %d, "
           "\"beta_fast\": %g, \"beta_slow\": %g, \"log_mul\": %g, \"attn_factor\": %g, "
           "\"freq_factors\": %s, \"y\": [", first ? "" : ",\n", mode ? "true" : "false", base,
           freq_scale, n_ctx_orig, beta_fast, beta_slow, log_mul, raf, ff ? "true" : "false");
    const float * yd = (const float *) y->data;
    for (int i = 0; i < NP * NH * HD; i++) printf("%s%.8g", i ? ", " : "", yd[i]);
    printf("]}");
    ggml_free(ctx);
}

int main(void) {
    printf("[\n");
    // Ministral 3's shape of parameters (factor 16, mscale_all_dim 1) on a small head
    run(0, 10000.0f, 1.0f / 16, 4096, 32.0f, 1.0f, 1.0f, 1.0f, 0, 1);
    run(0, 10000.0f, 1.0f / 16, 4096, 32.0f, 1.0f, 0.0f, 1.2f, 1, 0);
    run(GGML_ROPE_TYPE_NEOX, 1000000.0f, 0.25f, 512, 32.0f, 1.0f, 0.0f, 1.0f, 0, 0);
    printf("\n]\n");
    return 0;
}
