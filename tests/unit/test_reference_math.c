/* The reference implementations against independent fp64 implementations written here, in a
 * different style (full sorts instead of repeated argmax, complex multiplication for RoPE, whole
 * matrices decoded by hand, explicit attention loops), on random inputs with odd sizes; plus the
 * hand-worked cases: YaRN frequencies, top-k and group ties, the capacity factor. */
#include <complex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/reference.h"
#include "ops/rope.h"
#include "ops/weights.h"
#include "runtime/model_config.h"
#include "tests/unit/testing.h"

#define NMSE_LIMIT 1e-6
#define MAX_TENSORS 512

/* ---------------------------------------------------------------------------------------------
 * Test fixtures: random tensors that live until the end of the test */

static moira_tensor_t pool[MAX_TENSORS];
static int pool_used;
static uint64_t next_seed = 1;

/* A random float tensor of `dtype` (values drawn in f32, then stored narrow). */
static const moira_tensor_t *random_tensor(moira_dtype_t dtype, int rank, int64_t d0, int64_t d1,
                                           float lo, float hi) {
    if (pool_used == MAX_TENSORS) abort();
    moira_tensor_t *t = &pool[pool_used++];
    int64_t shape[2] = {d0, d1};
    CHECK_OK(moira_tensor_alloc(dtype, rank, shape, t));
    size_t n = (size_t)moira_tensor_numel(t);
    float *values = malloc(n * sizeof(float));
    moira_test_fill_uniform(values, n, next_seed++, lo, hi);
    moira_convert_from_f32(dtype, values, t->data, n);
    free(values);
    return t;
}

static void pool_release(void) {
    for (int i = 0; i < pool_used; i++)
        moira_tensor_release(&pool[i]);
    pool_used = 0;
}

/* A random weight matrix scaled like a trained one (entries ~ 1/sqrt(cols)). */
static const moira_tensor_t *random_weight(moira_dtype_t dtype, int64_t rows, int64_t cols) {
    float r = 1.7f / sqrtf((float)cols);
    return random_tensor(dtype, 2, rows, cols, -r, r);
}

static const moira_tensor_t *random_norm(int64_t n) {
    return random_tensor(MOIRA_DTYPE_F32, 1, n, 0, 0.6f, 1.4f);
}

/* ---------------------------------------------------------------------------------------------
 * Independent decoding: every weight as a full fp64 matrix, decoded here bit by bit */

static double decode_bf16(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &wide, sizeof(f));
    return f;
}

static double decode_fp8_e4m3(uint8_t bits) {
    int sign = bits >> 7, exponent = (bits >> 3) & 15, mantissa = bits & 7;
    double v;
    if (exponent == 15 && mantissa == 7) return NAN;
    if (exponent == 0)
        v = ldexp(mantissa / 8.0, -6);
    else
        v = ldexp(1.0 + mantissa / 8.0, exponent - 7);
    return sign ? -v : v;
}

/* The whole tensor as doubles, fp8 block scales applied; caller frees. */
static double *to_f64(const moira_tensor_t *t) {
    int64_t rows = t->rank == 2 ? t->shape[0] : 1, cols = t->shape[t->rank - 1];
    double *out = malloc((size_t)(rows * cols) * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            int64_t i = r * cols + c;
            double v = 0;
            switch (t->dtype) {
            case MOIRA_DTYPE_F32:
                v = ((const float *)t->data)[i];
                break;
            case MOIRA_DTYPE_BF16:
                v = decode_bf16(((const uint16_t *)t->data)[i]);
                break;
            case MOIRA_DTYPE_F16:
                v = moira_f16_to_f32(((const uint16_t *)t->data)[i]);
                break;
            case MOIRA_DTYPE_F8_E4M3:
                v = decode_fp8_e4m3(((const uint8_t *)t->data)[i]);
                if (t->scale) {
                    int64_t scale_cols = t->scale->shape[1];
                    v *= ((const float *)t->scale->data)[(r / 128) * scale_cols + c / 128];
                }
                break;
            default:
                abort();
            }
            out[i] = v;
        }
    }
    return out;
}

/* y [n, out] = x [n, in] W^T with W [out, in] given as doubles. */
static void matmul_t(const double *x, int64_t n, int64_t in, const double *w, int64_t out,
                     double *y) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = 0;
            for (int64_t i = 0; i < in; i++)
                acc += x[r * in + i] * w[o * in + i];
            y[r * out + o] = acc;
        }
}

static void rmsnorm_f64(double *x, int64_t n, int64_t cols, const moira_tensor_t *w, double eps) {
    double *wv = to_f64(w);
    for (int64_t r = 0; r < n; r++) {
        double ms = 0;
        for (int64_t i = 0; i < cols; i++)
            ms += x[r * cols + i] * x[r * cols + i] / cols;
        for (int64_t i = 0; i < cols; i++)
            x[r * cols + i] *= wv[i] / sqrt(ms + eps);
    }
    free(wv);
}

static double *f32_to_f64(const float *x, int64_t n) {
    double *out = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i];
    return out;
}

/* SwiGLU on n rows: W2 (silu(W1 x) * W3 x), all in double. */
static void swiglu_f64(const moira_mlp_weights_t *m, const double *x, int64_t n, int64_t d,
                       double *y) {
    int64_t inter = m->gate_proj->shape[0];
    double *w1 = to_f64(m->gate_proj), *w3 = to_f64(m->up_proj), *w2 = to_f64(m->down_proj);
    double *a = malloc((size_t)(n * inter) * sizeof(double));
    double *b = malloc((size_t)(n * inter) * sizeof(double));
    matmul_t(x, n, d, w1, inter, a);
    matmul_t(x, n, d, w3, inter, b);
    for (int64_t i = 0; i < n * inter; i++)
        a[i] = a[i] / (1 + exp(-a[i])) * b[i];
    matmul_t(a, n, inter, w2, d, y);
    free(w1), free(w3), free(w2), free(a), free(b);
}

/* ---------------------------------------------------------------------------------------------
 * Configs */

/* A small MLA + MoE config with odd sizes; callers change what they test. */
static moira_model_config_t small_config(void) {
    moira_model_config_t c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "test");
    c.hidden_size = 37;
    c.moe_intermediate_size = 19;
    c.intermediate_size = 45;
    c.n_routed_experts = 12;
    c.n_shared_experts = 2;
    c.num_experts_per_tok = 3;
    c.n_group = 1;
    c.topk_group = 1;
    c.num_hidden_layers = 3;
    c.first_k_dense_replace = 1;
    c.moe_layer_freq = 1;
    c.num_attention_heads = 3;
    c.q_lora_rank = 0;
    c.kv_lora_rank = 11;
    c.qk_nope_head_dim = 6;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 5;
    c.max_position_embeddings = 2048;
    c.attention = MOIRA_ATTENTION_MLA;
    c.scoring_func = MOIRA_SCORING_FUNC_SOFTMAX;
    c.norm_topk_prob = false;
    c.routed_scaling_factor = 1.0;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-6;
    c.weight_dtype = MOIRA_DTYPE_F32;
    return c;
}

static void set_yarn(moira_model_config_t *c, double factor, int64_t l0, double mscale,
                     double mscale_all_dim) {
    c->rope_scaling.enabled = true;
    c->rope_scaling.factor = factor;
    c->rope_scaling.original_max_position_embeddings = l0;
    c->rope_scaling.beta_fast = 32;
    c->rope_scaling.beta_slow = 1;
    c->rope_scaling.mscale = mscale;
    c->rope_scaling.mscale_all_dim = mscale_all_dim;
}

/* ---------------------------------------------------------------------------------------------
 * rmsnorm */

static void test_rmsnorm(void) {
    int64_t t_count = 5, n = 37;
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, t_count, n, -2, 2);
    const moira_tensor_t *w = random_norm(n);
    moira_tensor_t out = {0};
    CHECK_OK(moira_tensor_alloc_f32(t_count, n, &out));
    CHECK_OK(moira_ref_rmsnorm(x, w, 1e-5, &out));
    double *ref = f32_to_f64(x->data, t_count * n);
    rmsnorm_f64(ref, t_count, n, w, 1e-5);
    double nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * n));
    CHECK_MSG(nmse <= 1e-12, "rmsnorm NMSE %g", nmse);
    /* In place. */
    moira_tensor_t inplace = {0};
    CHECK_OK(moira_tensor_to_f32(x, &inplace));
    CHECK_OK(moira_ref_rmsnorm(&inplace, w, 1e-5, &inplace));
    CHECK(memcmp(inplace.data, out.data, (size_t)(t_count * n) * sizeof(float)) == 0);
    /* A wrong weight length is refused. */
    const moira_tensor_t *short_w = random_norm(n - 1);
    CHECK_CODE(moira_ref_rmsnorm(x, short_w, 1e-5, &out), MOIRA_CODE_INVALID_ARGUMENT);
    free(ref);
    moira_tensor_release(&out);
    moira_tensor_release(&inplace);
    pool_release();
}

/* ---------------------------------------------------------------------------------------------
 * gate, by full sorts in double */

typedef struct scored {
    double score;
    int index;
} scored_t;

/* Descending score, then ascending index: a total order, so qsort's instability cannot matter. */
static int by_score_desc(const void *a, const void *b) {
    const scored_t *x = a, *y = b;
    if (x->score > y->score) return -1;
    if (x->score < y->score) return 1;
    return x->index - y->index;
}

/* The gate of DESIGN.md §4 for one config, with full sorts; capacity ignored. */
static void gate_f64(const moira_model_config_t *c, const moira_tensor_t *x,
                     const moira_tensor_t *gate, const moira_tensor_t *bias, int32_t *idx,
                     double *weight, double *selection) {
    int64_t t_count = x->shape[0], d = x->shape[1], e_count = c->n_routed_experts;
    int64_t k = c->num_experts_per_tok;
    double *xv = f32_to_f64(x->data, t_count * d), *wv = to_f64(gate);
    double *bv = bias ? to_f64(bias) : NULL;
    double *logits = malloc((size_t)(t_count * e_count) * sizeof(double));
    matmul_t(xv, t_count, d, wv, e_count, logits);
    scored_t *items = malloc((size_t)e_count * sizeof(*items));
    double *s = malloc((size_t)e_count * sizeof(double));
    for (int64_t t = 0; t < t_count; t++) {
        double *l = logits + t * e_count;
        if (c->scoring_func == MOIRA_SCORING_FUNC_SOFTMAX) {
            double z = 0;
            for (int64_t e = 0; e < e_count; e++)
                z += exp(l[e]);
            for (int64_t e = 0; e < e_count; e++)
                s[e] = exp(l[e]) / z;
        } else {
            for (int64_t e = 0; e < e_count; e++)
                s[e] = 1 / (1 + exp(-l[e]));
        }
        double *sel = selection + t * e_count;
        for (int64_t e = 0; e < e_count; e++)
            sel[e] = s[e] + (bv ? bv[e] : 0);
        if (c->n_group > 1) {
            int64_t size = e_count / c->n_group;
            scored_t groups[64];
            for (int64_t g = 0; g < c->n_group; g++) {
                for (int64_t i = 0; i < size; i++)
                    items[i] = (scored_t){sel[g * size + i], (int)i};
                qsort(items, (size_t)size, sizeof(*items), by_score_desc);
                double score =
                    bv ? items[0].score + (size > 1 ? items[1].score : 0) : items[0].score;
                groups[g] = (scored_t){score, (int)g};
            }
            qsort(groups, (size_t)c->n_group, sizeof(*groups), by_score_desc);
            for (int64_t r = c->topk_group; r < c->n_group; r++)
                for (int64_t i = 0; i < size; i++)
                    sel[groups[r].index * size + i] = -INFINITY;
        }
        for (int64_t e = 0; e < e_count; e++)
            items[e] = (scored_t){sel[e], (int)e};
        qsort(items, (size_t)e_count, sizeof(*items), by_score_desc);
        double sum = 0;
        for (int64_t j = 0; j < k; j++)
            sum += s[items[j].index];
        for (int64_t j = 0; j < k; j++) {
            idx[t * k + j] = items[j].index;
            double w = s[items[j].index];
            if (c->norm_topk_prob) w /= sum + 1e-20;
            weight[t * k + j] = w * c->routed_scaling_factor;
        }
    }
    free(xv), free(wv), free(bv), free(logits), free(items), free(s);
}

/* Runs both gates and compares: indices exactly (in order), weights and selection scores. */
static void compare_gate(const char *what, const moira_model_config_t *c, const moira_tensor_t *x,
                         const moira_tensor_t *gate, const moira_tensor_t *bias) {
    int64_t t_count = x->shape[0], e_count = c->n_routed_experts, k = c->num_experts_per_tok;
    int64_t idx_shape[2] = {t_count, k};
    moira_tensor_t idx = {0}, w = {0}, sel = {0};
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_I32, 2, idx_shape, &idx));
    CHECK_OK(moira_tensor_alloc_f32(t_count, k, &w));
    CHECK_OK(moira_tensor_alloc_f32(t_count, e_count, &sel));
    CHECK_OK(moira_ref_gate(c, x, gate, bias, &idx, &w, &sel));
    int32_t *ref_idx = malloc((size_t)(t_count * k) * sizeof(int32_t));
    double *ref_w = malloc((size_t)(t_count * k) * sizeof(double));
    double *ref_sel = malloc((size_t)(t_count * e_count) * sizeof(double));
    gate_f64(c, x, gate, bias, ref_idx, ref_w, ref_sel);
    int idx_bad = 0, w_bad = 0;
    for (int64_t i = 0; i < t_count * k; i++) {
        if (((int32_t *)idx.data)[i] != ref_idx[i]) idx_bad++;
        if (fabs(((float *)w.data)[i] - ref_w[i]) > 1e-6 * fabs(ref_w[i]) + 1e-12) w_bad++;
    }
    CHECK_MSG(idx_bad == 0, "%s: %d indices differ", what, idx_bad);
    CHECK_MSG(w_bad == 0, "%s: %d weights differ", what, w_bad);
    double nmse = moira_test_nmse(sel.data, ref_sel, (size_t)(t_count * e_count));
    CHECK_MSG(nmse <= 1e-12, "%s: selection NMSE %g", what, nmse);
    free(ref_idx), free(ref_w), free(ref_sel);
    moira_tensor_release(&idx);
    moira_tensor_release(&w);
    moira_tensor_release(&sel);
}

static void test_gate_random(void) {
    moira_model_config_t c = small_config();
    int64_t t_count = 9, d = c.hidden_size;
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, t_count, d, -1, 1);

    /* V2-like: softmax, no groups, no normalisation. */
    compare_gate("softmax", &c, x, random_weight(MOIRA_DTYPE_F32, 12, d), NULL);

    /* V3-like: sigmoid, bias, 6 groups of 4 of which 3 kept, normalised and scaled. */
    c.n_routed_experts = 24;
    c.num_experts_per_tok = 5;
    c.n_group = 6;
    c.topk_group = 3;
    c.scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5;
    const moira_tensor_t *gate24 = random_weight(MOIRA_DTYPE_F32, 24, d);
    const moira_tensor_t *bias24 = random_tensor(MOIRA_DTYPE_F32, 1, 24, 0, -0.3f, 0.3f);
    compare_gate("sigmoid+bias+groups", &c, x, gate24, bias24);

    /* Groups without a bias score by their maximum; bf16 gate weights. */
    compare_gate("sigmoid+groups bf16", &c, x, random_weight(MOIRA_DTYPE_BF16, 24, d), NULL);

    /* Softmax with groups and normalisation (V2's group_limited_greedy shape). */
    c.scoring_func = MOIRA_SCORING_FUNC_SOFTMAX;
    c.topk_group = 2;
    compare_gate("softmax+groups", &c, x, gate24, NULL);

    /* Impossible configs are refused. */
    int64_t shape[2] = {t_count, 9};
    moira_tensor_t idx = {0}, w = {0};
    CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_I32, 2, shape, &idx));
    CHECK_OK(moira_tensor_alloc_f32(t_count, 9, &w));
    c.num_experts_per_tok = 9; /* 2 groups of 4 cannot give 9 experts */
    CHECK_CODE(moira_ref_gate(&c, x, gate24, NULL, &idx, &w, NULL), MOIRA_CODE_INVALID_ARGUMENT);
    moira_tensor_release(&idx);
    moira_tensor_release(&w);
    pool_release();
}

/* Equal scores: the lower index wins, for experts and for groups. */
static void test_gate_ties(void) {
    moira_model_config_t c = small_config();
    int64_t d = 4, e_count = 8;
    c.hidden_size = d;
    c.n_routed_experts = e_count;
    c.num_experts_per_tok = 3;
    c.scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    /* x = (1, 0, 0, 0): expert e's score is sigmoid(W[e][0]). */
    float x_data[4] = {1, 0, 0, 0};
    int64_t x_shape[2] = {1, d}, w_shape[2] = {e_count, d};
    moira_tensor_t x = moira_tensor_view(MOIRA_DTYPE_F32, 2, x_shape, x_data);
    /* Experts 5 and 2 tie for the best, 6 and 1 tie for the next. */
    float w_data[8 * 4] = {0};
    float first[8] = {0.1f, 0.5f, 0.9f, 0.2f, 0.3f, 0.9f, 0.5f, 0.0f};
    for (int e = 0; e < 8; e++)
        w_data[e * 4] = first[e];
    moira_tensor_t w = moira_tensor_view(MOIRA_DTYPE_F32, 2, w_shape, w_data);
    int32_t idx[3];
    float weight[3], sel[8];
    int64_t k_shape[2] = {1, 3}, s_shape[2] = {1, 8};
    moira_tensor_t idx_t = moira_tensor_view(MOIRA_DTYPE_I32, 2, k_shape, idx);
    moira_tensor_t weight_t = moira_tensor_view(MOIRA_DTYPE_F32, 2, k_shape, weight);
    moira_tensor_t sel_t = moira_tensor_view(MOIRA_DTYPE_F32, 2, s_shape, sel);
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, &sel_t));
    CHECK(idx[0] == 2 && idx[1] == 5 && idx[2] == 1);

    /* All equal: 0, 1, 2. */
    memset(w_data, 0, sizeof(w_data));
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, &sel_t));
    CHECK(idx[0] == 0 && idx[1] == 1 && idx[2] == 2);

    /* Four groups of two, one kept, k = 2. Groups 1 and 3 tie (max 0.8) above groups 0 and 2:
     * the lower, group 1, is kept, so its experts 2 and 3 are chosen and all others masked. */
    c.n_group = 4;
    c.topk_group = 1;
    c.num_experts_per_tok = 2;
    float grouped[8] = {0.1f, 0.2f, 0.8f, 0.3f, 0.0f, 0.7f, 0.3f, 0.8f};
    for (int e = 0; e < 8; e++)
        w_data[e * 4] = grouped[e];
    int64_t k2_shape[2] = {1, 2};
    idx_t = moira_tensor_view(MOIRA_DTYPE_I32, 2, k2_shape, idx);
    weight_t = moira_tensor_view(MOIRA_DTYPE_F32, 2, k2_shape, weight);
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, &sel_t));
    CHECK(idx[0] == 2 && idx[1] == 3);
    for (int e = 0; e < 8; e++)
        CHECK((e == 2 || e == 3) ? isfinite(sel[e]) : sel[e] == -INFINITY);

    /* With a (zero) bias the group score is the sum of the two best: groups 1 (0.8 + 0.3) and 3
     * (0.3 + 0.8) tie again, and group 1 wins; with bias +0.01 on expert 6 group 3 wins. */
    float bias_data[8] = {0};
    int64_t b_shape[1] = {8};
    moira_tensor_t bias = moira_tensor_view(MOIRA_DTYPE_F32, 1, b_shape, bias_data);
    CHECK_OK(moira_ref_gate(&c, &x, &w, &bias, &idx_t, &weight_t, &sel_t));
    CHECK(idx[0] == 2 && idx[1] == 3);
    bias_data[6] = 0.01f;
    CHECK_OK(moira_ref_gate(&c, &x, &w, &bias, &idx_t, &weight_t, &sel_t));
    CHECK(idx[0] == 7 && idx[1] == 6);
    /* The bias steers selection only: expert 6's weight is its unbiased score. */
    CHECK_NEAR(weight[1], 1 / (1 + exp(-(double)(float)0.3f)), 1e-7);
}

/* The capacity factor, worked by hand. T = 4, k = 2, E = 4, c = 1: capacity ceil(4*2/4) = 2.
 * x[t] is the unit vector e_t, so expert e's logit for token t is W[e][t]: each column of W is
 * one token's preferences. */
static void test_gate_capacity(void) {
    moira_model_config_t c = small_config();
    c.hidden_size = 4;
    c.n_routed_experts = 4;
    c.num_experts_per_tok = 2;
    c.norm_topk_prob = true;
    c.capacity_factor = 1.0;
    float x_data[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    int64_t x_shape[2] = {4, 4};
    moira_tensor_t x = moira_tensor_view(MOIRA_DTYPE_F32, 2, x_shape, x_data);
    int32_t idx[8];
    float weight[8];
    int64_t k_shape[2] = {4, 2};
    moira_tensor_t idx_t = moira_tensor_view(MOIRA_DTYPE_I32, 2, k_shape, idx);
    moira_tensor_t weight_t = moira_tensor_view(MOIRA_DTYPE_F32, 2, k_shape, weight);

    /* Every token prefers expert 0, then 1. Tokens 0 and 1 fill both; tokens 2 and 3 lose both
     * assignments. */
    float all_same[16] = {3, 3, 3, 3, /* expert 0 */ 2,
                          2, 2, 2, /* expert 1 */
                          0, 0, 0, 0, 0,
                          0, 0, 0};
    moira_tensor_t w = moira_tensor_view(MOIRA_DTYPE_F32, 2, x_shape, all_same);
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, NULL));
    int32_t want_idx[8] = {0, 1, 0, 1, -1, -1, -1, -1};
    double e3 = exp(3.0), e2 = exp(2.0);
    double w0 = e3 / (e3 + e2), w1 = e2 / (e3 + e2); /* the softmax ratio survives normalising */
    double want_w[8] = {w0, w1, w0, w1, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(idx[i] == want_idx[i], "all-same: idx[%d] = %d, want %d", i, idx[i], want_idx[i]);
        CHECK_NEAR(weight[i], want_w[i], 1e-6);
    }

    /* Mixed: tokens 0 and 1 want (0, 1), token 2 wants (1, 2), token 3 wants (0, 3). Token 2's
     * first choice (1) and token 3's first choice (0) are full; their second choices stay, with
     * the weights they had before dropping (not renormalised). */
    float mixed[16] = {3, 3, 0, 3, /* expert 0 */ 2, 2, 3, 0, /* expert 1 */
                       0, 0, 2, 0, /* expert 2 */ 0, 0, 0, 2 /* expert 3 */};
    w = moira_tensor_view(MOIRA_DTYPE_F32, 2, x_shape, mixed);
    float unlimited_w[8];
    int32_t unlimited_idx[8];
    c.capacity_factor = 0;
    moira_tensor_t ui = moira_tensor_view(MOIRA_DTYPE_I32, 2, k_shape, unlimited_idx);
    moira_tensor_t uw = moira_tensor_view(MOIRA_DTYPE_F32, 2, k_shape, unlimited_w);
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &ui, &uw, NULL));
    int32_t want_unlimited[8] = {0, 1, 0, 1, 1, 2, 0, 3};
    for (int i = 0; i < 8; i++)
        CHECK(unlimited_idx[i] == want_unlimited[i]);
    c.capacity_factor = 1.0;
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, NULL));
    int32_t want_mixed[8] = {0, 1, 0, 1, -1, 2, -1, 3};
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(idx[i] == want_mixed[i], "mixed: idx[%d] = %d, want %d", i, idx[i],
                  want_mixed[i]);
        CHECK(weight[i] == (want_mixed[i] < 0 ? 0.0f : unlimited_w[i]));
    }
    CHECK_NEAR(weight[5], w1, 1e-6); /* token 2's expert 2 keeps e2/(e3+e2), not 1 */

    /* c = 0.5: capacity ceil(0.5*8/4) = 1; only token 0 gets experts 0 and 1. */
    c.capacity_factor = 0.5;
    CHECK_OK(moira_ref_gate(&c, &x, &w, NULL, &idx_t, &weight_t, NULL));
    int32_t want_half[8] = {0, 1, -1, -1, -1, 2, -1, 3};
    for (int i = 0; i < 8; i++)
        CHECK(idx[i] == want_half[i]);

    /* The MoE honours drops: with the all-same router, tokens 2 and 3 get only the shared
     * experts, tokens 0 and 1 get both routed experts too. */
    c.capacity_factor = 1.0;
    c.moe_intermediate_size = 3;
    c.n_shared_experts = 1;
    w = moira_tensor_view(MOIRA_DTYPE_F32, 2, x_shape, all_same);
    const moira_tensor_t *gp[4], *up[4], *dp[4];
    for (int e = 0; e < 4; e++) {
        gp[e] = random_weight(MOIRA_DTYPE_F32, 3, 4);
        up[e] = random_weight(MOIRA_DTYPE_F32, 3, 4);
        dp[e] = random_weight(MOIRA_DTYPE_F32, 4, 3);
    }
    moira_moe_weights_t moe = {.gate = &w,
                               .n_experts = 4,
                               .expert_gate_proj = gp,
                               .expert_up_proj = up,
                               .expert_down_proj = dp,
                               .shared = {random_weight(MOIRA_DTYPE_F32, 3, 4),
                                          random_weight(MOIRA_DTYPE_F32, 3, 4),
                                          random_weight(MOIRA_DTYPE_F32, 4, 3)}};
    moira_tensor_t out = {0};
    CHECK_OK(moira_tensor_alloc_f32(4, 4, &out));
    CHECK_OK(moira_ref_moe(&c, &moe, &x, &out));
    double xd[16], shared[16], e0[16], e1[16];
    for (int i = 0; i < 16; i++)
        xd[i] = x_data[i];
    swiglu_f64(&moe.shared, xd, 4, 4, shared);
    moira_mlp_weights_t m0 = {gp[0], up[0], dp[0]}, m1 = {gp[1], up[1], dp[1]};
    swiglu_f64(&m0, xd, 4, 4, e0);
    swiglu_f64(&m1, xd, 4, 4, e1);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 4; i++) {
            double want = shared[t * 4 + i];
            if (t < 2) want += w0 * e0[t * 4 + i] + w1 * e1[t * 4 + i];
            CHECK_NEAR(((float *)out.data)[t * 4 + i], want, 1e-6);
        }
    moira_tensor_release(&out);
    pool_release();
}

/* ---------------------------------------------------------------------------------------------
 * MLP and MoE */

static void test_mlp(void) {
    /* bf16 weights. */
    int64_t t_count = 7, d = 37, inter = 45;
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, t_count, d, -1, 1);
    moira_mlp_weights_t m = {random_weight(MOIRA_DTYPE_BF16, inter, d),
                             random_weight(MOIRA_DTYPE_BF16, inter, d),
                             random_weight(MOIRA_DTYPE_BF16, d, inter)};
    moira_tensor_t out = {0};
    CHECK_OK(moira_tensor_alloc_f32(t_count, d, &out));
    CHECK_OK(moira_ref_mlp(&m, x, &out));
    double *xd = f32_to_f64(x->data, t_count * d);
    double *ref = malloc((size_t)(t_count * d) * sizeof(double));
    swiglu_f64(&m, xd, t_count, d, ref);
    double nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * d));
    CHECK_MSG(nmse <= NMSE_LIMIT, "mlp bf16 NMSE %g", nmse);
    free(xd), free(ref);
    moira_tensor_release(&out);

    /* fp8 weights with 128x128 block scales: sizes over 128 so that several blocks are used. */
    t_count = 3, d = 131, inter = 130;
    x = random_tensor(MOIRA_DTYPE_F32, 2, t_count, d, -1, 1);
    moira_tensor_t fp8[3] = {{0}}, scales[3] = {{0}};
    int64_t shapes[3][2] = {{inter, d}, {inter, d}, {d, inter}};
    for (int i = 0; i < 3; i++) {
        int64_t rows = shapes[i][0], cols = shapes[i][1];
        CHECK_OK(moira_tensor_alloc(MOIRA_DTYPE_F8_E4M3, 2, shapes[i], &fp8[i]));
        CHECK_OK(moira_tensor_alloc_f32((rows + 127) / 128, (cols + 127) / 128, &scales[i]));
        float *values = malloc((size_t)(rows * cols) * sizeof(float));
        moira_test_fill_uniform(values, (size_t)(rows * cols), next_seed++, -200, 200);
        moira_convert_from_f32(MOIRA_DTYPE_F8_E4M3, values, fp8[i].data, (size_t)(rows * cols));
        free(values);
        moira_test_fill_uniform(scales[i].data, (size_t)moira_tensor_numel(&scales[i]), next_seed++,
                                1e-4f, 2e-3f);
        fp8[i].scale = &scales[i];
    }
    m = (moira_mlp_weights_t){&fp8[0], &fp8[1], &fp8[2]};
    CHECK_OK(moira_tensor_alloc_f32(t_count, d, &out));
    CHECK_OK(moira_ref_mlp(&m, x, &out));
    xd = f32_to_f64(x->data, t_count * d);
    ref = malloc((size_t)(t_count * d) * sizeof(double));
    swiglu_f64(&m, xd, t_count, d, ref);
    nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * d));
    CHECK_MSG(nmse <= NMSE_LIMIT, "mlp fp8 NMSE %g", nmse);
    free(xd), free(ref);
    moira_tensor_release(&out);
    for (int i = 0; i < 3; i++) {
        moira_tensor_release(&fp8[i]);
        moira_tensor_release(&scales[i]);
    }
    pool_release();
}

/* Builds a random MoE block for config `c` with weights of `dtype`. */
static moira_moe_weights_t random_moe(const moira_model_config_t *c, moira_dtype_t dtype,
                                      bool with_bias, const moira_tensor_t **arrays) {
    int64_t e_count = c->n_routed_experts, d = c->hidden_size, inter = c->moe_intermediate_size;
    moira_moe_weights_t m = {.gate = random_weight(dtype, e_count, d), .n_experts = e_count};
    if (with_bias)
        m.e_score_correction_bias = random_tensor(MOIRA_DTYPE_F32, 1, e_count, 0, -0.2f, 0.2f);
    m.expert_gate_proj = arrays;
    m.expert_up_proj = arrays + e_count;
    m.expert_down_proj = arrays + 2 * e_count;
    for (int64_t e = 0; e < e_count; e++) {
        m.expert_gate_proj[e] = random_weight(dtype, inter, d);
        m.expert_up_proj[e] = random_weight(dtype, inter, d);
        m.expert_down_proj[e] = random_weight(dtype, d, inter);
    }
    if (c->n_shared_experts > 0) {
        int64_t s = inter * c->n_shared_experts;
        m.shared = (moira_mlp_weights_t){random_weight(dtype, s, d), random_weight(dtype, s, d),
                                         random_weight(dtype, d, s)};
    }
    return m;
}

/* The MoE as a per-token sum over its selected experts, all in double. */
static void moe_f64(const moira_model_config_t *c, const moira_moe_weights_t *m,
                    const moira_tensor_t *x, double *out) {
    int64_t t_count = x->shape[0], d = x->shape[1], k = c->num_experts_per_tok;
    int32_t *idx = malloc((size_t)(t_count * k) * sizeof(int32_t));
    double *w = malloc((size_t)(t_count * k) * sizeof(double));
    double *sel = malloc((size_t)(t_count * c->n_routed_experts) * sizeof(double));
    gate_f64(c, x, m->gate, m->e_score_correction_bias, idx, w, sel);
    double *xd = f32_to_f64(x->data, t_count * d), *y = malloc((size_t)d * sizeof(double));
    for (int64_t i = 0; i < t_count * d; i++)
        out[i] = 0;
    if (m->shared.gate_proj) swiglu_f64(&m->shared, xd, t_count, d, out);
    for (int64_t t = 0; t < t_count; t++)
        for (int64_t j = 0; j < k; j++) {
            int e = idx[t * k + j];
            moira_mlp_weights_t ex = {m->expert_gate_proj[e], m->expert_up_proj[e],
                                      m->expert_down_proj[e]};
            swiglu_f64(&ex, xd + t * d, 1, d, y);
            for (int64_t i = 0; i < d; i++)
                out[t * d + i] += w[t * k + j] * y[i];
        }
    free(idx), free(w), free(sel), free(xd), free(y);
}

static void test_moe(void) {
    moira_model_config_t c = small_config();
    const moira_tensor_t *arrays[3 * 24];
    int64_t t_count = 9, d = c.hidden_size;
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, t_count, d, -1, 1);
    moira_tensor_t out = {0};
    CHECK_OK(moira_tensor_alloc_f32(t_count, d, &out));
    double *ref = malloc((size_t)(t_count * d) * sizeof(double));

    moira_moe_weights_t m = random_moe(&c, MOIRA_DTYPE_F32, false, arrays);
    CHECK_OK(moira_ref_moe(&c, &m, x, &out));
    moe_f64(&c, &m, x, ref);
    double nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * d));
    CHECK_MSG(nmse <= NMSE_LIMIT, "moe softmax NMSE %g", nmse);

    c.n_routed_experts = 24;
    c.num_experts_per_tok = 5;
    c.n_group = 6;
    c.topk_group = 3;
    c.n_shared_experts = 1;
    c.scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5;
    m = random_moe(&c, MOIRA_DTYPE_BF16, true, arrays);
    CHECK_OK(moira_ref_moe(&c, &m, x, &out));
    moe_f64(&c, &m, x, ref);
    nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * d));
    CHECK_MSG(nmse <= NMSE_LIMIT, "moe sigmoid groups bf16 NMSE %g", nmse);

    /* No shared experts. */
    c.n_shared_experts = 0;
    m.shared = (moira_mlp_weights_t){0};
    CHECK_OK(moira_ref_moe(&c, &m, x, &out));
    moe_f64(&c, &m, x, ref);
    nmse = moira_test_nmse(out.data, ref, (size_t)(t_count * d));
    CHECK_MSG(nmse <= NMSE_LIMIT, "moe without shared NMSE %g", nmse);

    /* A wrong expert shape names the expert. */
    m.expert_down_proj[7] = m.expert_up_proj[7];
    moira_status_t status = moira_ref_moe(&c, &m, x, &out);
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(strstr(moira_status_message(status), "mlp.experts.7.down_proj") != NULL);
    moira_status_free(status);
    free(ref);
    moira_tensor_release(&out);
    pool_release();
}

/* ---------------------------------------------------------------------------------------------
 * RoPE / YaRN */

/* Hand-computed values. DeepSeek-V3's small test shape: d = 8, theta 1e4, factor 40, L0 4096,
 * beta 32/1: corr(32) = 8 ln(4096 / 64pi) / (2 ln 1e4) = 1.309 -> low 1; corr(1) = 2.814 ->
 * high 3. keep = 1, 1, 0.5, 0. Base frequencies 1, 0.1, 0.01, 0.001, so
 * inv_freq = 1, 0.1, 0.01 * (0.5 / 40 + 0.5) = 0.005125, 0.001 / 40 = 2.5e-5. */
static void test_yarn_inv_freq(void) {
    moira_model_config_t c = small_config();
    c.qk_rope_head_dim = 8;
    set_yarn(&c, 40, 4096, 1.0, 1.0);
    double inv_freq[32], scale = 0;
    CHECK_OK(moira_rope_inv_freq(&c, inv_freq, &scale));
    CHECK_NEAR(inv_freq[0], 1.0, 1e-15);
    CHECK_NEAR(inv_freq[1], 0.1, 1e-15);
    CHECK_NEAR(inv_freq[2], 0.005125, 1e-15);
    CHECK_NEAR(inv_freq[3], 2.5e-5, 1e-18);
    CHECK_NEAR(scale, 1.0, 1e-15);
    /* Softmax scale: (16 + 8)^-0.5 * (0.1 ln 40 + 1)^2. */
    c.qk_nope_head_dim = 16;
    double m = 0.1 * 3.6888794541139363 + 1;
    CHECK_NEAR(moira_model_config_attention_scale(&c), m * m / sqrt(24.0), 1e-14);

    /* DeepSeek-V3's real rope dim 64: corr(32) = 10.47 -> low 10, corr(1) = 22.51 -> high 23.
     * i = 15: keep = 1 - 5/13 = 8/13, base 10^(-4*30/64) = 10^-1.875, blend 8/13 + 5/(13*40)
     * = 0.625. i = 5 (below low): 10^-0.625. i = 31 (above high): 10^(-4*62/64) / 40. */
    c.qk_rope_head_dim = 64;
    CHECK_OK(moira_rope_inv_freq(&c, inv_freq, &scale));
    CHECK_NEAR(inv_freq[15], 0.013335214321633240 * 0.625, 1e-17);
    CHECK_NEAR(inv_freq[5], 0.23713737056616552, 1e-16);
    CHECK_NEAR(inv_freq[31], 1.3335214321633240e-4 / 40, 1e-19);

    /* mscale 0.707 with mscale_all_dim 0: cos/sin scale 0.1 * 0.707 * ln 40 + 1 = 1.26080377741. */
    set_yarn(&c, 40, 4096, 0.707, 0.0);
    CHECK_OK(moira_rope_inv_freq(&c, NULL, &scale));
    CHECK_NEAR(scale, 1.2608037774058554, 1e-12);

    /* No scaling: plain theta^(-2i/d), scale 1. */
    c.rope_scaling.enabled = false;
    c.qk_rope_head_dim = 6;
    c.rope_theta = 500000;
    CHECK_OK(moira_rope_inv_freq(&c, inv_freq, &scale));
    CHECK_NEAR(inv_freq[1], 0.012599210498948734, 1e-17);  /* 500000^(-1/3) */
    CHECK_NEAR(inv_freq[2], 1.5874010519682002e-4, 1e-19); /* 500000^(-2/3) */
    CHECK_NEAR(scale, 1.0, 0);

    c.qk_rope_head_dim = 7;
    CHECK_CODE(moira_rope_inv_freq(&c, inv_freq, &scale), MOIRA_CODE_INVALID_ARGUMENT);
}

/* ---------------------------------------------------------------------------------------------
 * MLA: attention by explicit loops in double, RoPE by complex multiplication */

/* YaRN frequencies written from the paper's description (wavelength ratios), not from the
 * reference's code: a frequency whose wavelength fits more than beta_fast times in the original
 * context is kept, fewer than beta_slow times is divided by the factor, in between blended. */
static void inv_freq_f64(const moira_model_config_t *c, double *inv_freq, double *mscale) {
    int64_t d = c->qk_rope_head_dim;
    const moira_rope_scaling_t *r = &c->rope_scaling;
    double lo = 0, hi = 0;
    if (r->enabled) {
        double ln_base = log(c->rope_theta);
        double l0 = (double)r->original_max_position_embeddings;
        lo = floor(d * log(l0 / (r->beta_fast * 2 * M_PI)) / (2 * ln_base));
        hi = ceil(d * log(l0 / (r->beta_slow * 2 * M_PI)) / (2 * ln_base));
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = (double)(d - 1);
        if (lo == hi) hi += 0.001;
    }
    for (int64_t i = 0; i < d / 2; i++) {
        double base_freq = exp(-(2.0 * i / d) * log(c->rope_theta));
        if (!r->enabled) {
            inv_freq[i] = base_freq;
            continue;
        }
        double t = (i - lo) / (hi - lo);
        double ramp = fmin(fmax(t, 0), 1); /* 0: extrapolate (keep), 1: interpolate */
        inv_freq[i] = (1 - ramp) * base_freq + ramp * base_freq / r->factor;
    }
    *mscale = 1;
    if (r->enabled && r->factor > 1)
        *mscale =
            (0.1 * r->mscale * log(r->factor) + 1) / (0.1 * r->mscale_all_dim * log(r->factor) + 1);
}

/* Pair (2i, 2i+1) as the complex number x0 + i x1, times m e^{i pos theta_i}. */
static void rope_complex(double *v, int64_t rope, int32_t pos, const double *inv_freq, double m) {
    for (int64_t i = 0; i < rope / 2; i++) {
        double complex z = v[2 * i] + I * v[2 * i + 1];
        z *= m * cexp(I * pos * inv_freq[i]);
        v[2 * i] = creal(z);
        v[2 * i + 1] = cimag(z);
    }
}

static moira_mla_weights_t random_mla(const moira_model_config_t *c) {
    int64_t d = c->hidden_size, h = c->num_attention_heads;
    int64_t q_dim = h * (c->qk_nope_head_dim + c->qk_rope_head_dim);
    moira_mla_weights_t w = {0};
    if (c->q_lora_rank > 0) {
        w.q_a_proj = random_weight(MOIRA_DTYPE_F32, c->q_lora_rank, d);
        w.q_a_layernorm = random_norm(c->q_lora_rank);
        w.q_b_proj = random_weight(MOIRA_DTYPE_F32, q_dim, c->q_lora_rank);
    } else {
        w.q_proj = random_weight(MOIRA_DTYPE_F32, q_dim, d);
    }
    w.kv_a_proj_with_mqa = random_weight(MOIRA_DTYPE_F32, c->kv_lora_rank + c->qk_rope_head_dim, d);
    w.kv_a_layernorm = random_norm(c->kv_lora_rank);
    w.kv_b_proj =
        random_weight(MOIRA_DTYPE_F32, h * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank);
    w.o_proj = random_weight(MOIRA_DTYPE_F32, d, h * c->v_head_dim);
    return w;
}

/* MLA in double with per-head K and V materialised as 3-D arrays. */
static void mla_f64(const moira_model_config_t *c, const moira_mla_weights_t *w,
                    const moira_tensor_t *x, const int32_t *pos, double *out) {
    int64_t T = x->shape[0], D = c->hidden_size, H = c->num_attention_heads;
    int64_t NOPE = c->qk_nope_head_dim, ROPE = c->qk_rope_head_dim, V = c->v_head_dim;
    int64_t L = c->kv_lora_rank, QL = c->q_lora_rank, QH = NOPE + ROPE;
    double *xd = f32_to_f64(x->data, T * D);
    double *q = malloc((size_t)(T * H * QH) * sizeof(double));
    if (QL > 0) {
        double *qa = malloc((size_t)(T * QL) * sizeof(double));
        double *wa = to_f64(w->q_a_proj), *wb = to_f64(w->q_b_proj);
        matmul_t(xd, T, D, wa, QL, qa);
        rmsnorm_f64(qa, T, QL, w->q_a_layernorm, c->rms_norm_eps);
        matmul_t(qa, T, QL, wb, H * QH, q);
        free(qa), free(wa), free(wb);
    } else {
        double *wq = to_f64(w->q_proj);
        matmul_t(xd, T, D, wq, H * QH, q);
        free(wq);
    }
    double *kva = malloc((size_t)(T * (L + ROPE)) * sizeof(double));
    double *wkva = to_f64(w->kv_a_proj_with_mqa), *wkvb = to_f64(w->kv_b_proj);
    double *wo = to_f64(w->o_proj);
    matmul_t(xd, T, D, wkva, L + ROPE, kva);
    double *cl = malloc((size_t)(T * L) * sizeof(double));
    double *kpe = malloc((size_t)(T * ROPE) * sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        memcpy(cl + t * L, kva + t * (L + ROPE), (size_t)L * sizeof(double));
        memcpy(kpe + t * ROPE, kva + t * (L + ROPE) + L, (size_t)ROPE * sizeof(double));
    }
    rmsnorm_f64(cl, T, L, w->kv_a_layernorm, c->rms_norm_eps);
    double *kv = malloc((size_t)(T * H * (NOPE + V)) * sizeof(double));
    matmul_t(cl, T, L, wkvb, H * (NOPE + V), kv);

    double inv_freq[64], m;
    inv_freq_f64(c, inv_freq, &m);
    for (int64_t t = 0; t < T; t++) {
        rope_complex(kpe + t * ROPE, ROPE, pos[t], inv_freq, m);
        for (int64_t h = 0; h < H; h++)
            rope_complex(q + (t * H + h) * QH + NOPE, ROPE, pos[t], inv_freq, m);
    }
    double scale = 1 / sqrt((double)QH);
    if (c->rope_scaling.enabled && c->rope_scaling.mscale_all_dim != 0 &&
        c->rope_scaling.factor > 1) {
        double ma = 0.1 * c->rope_scaling.mscale_all_dim * log(c->rope_scaling.factor) + 1;
        scale *= ma * ma;
    }

    double *attn = calloc((size_t)(T * H * V), sizeof(double));
    double *p = malloc((size_t)T * sizeof(double));
    for (int64_t h = 0; h < H; h++) {
        for (int64_t t = 0; t < T; t++) {
            double mx = -INFINITY, z = 0;
            for (int64_t s = 0; s < T; s++) {
                if (pos[s] > pos[t]) continue;
                double dot = 0;
                for (int64_t i = 0; i < NOPE; i++)
                    dot += q[(t * H + h) * QH + i] * kv[(s * H + h) * (NOPE + V) + i];
                for (int64_t i = 0; i < ROPE; i++)
                    dot += q[(t * H + h) * QH + NOPE + i] * kpe[s * ROPE + i];
                p[s] = dot * scale;
                if (p[s] > mx) mx = p[s];
            }
            for (int64_t s = 0; s < T; s++) {
                if (pos[s] > pos[t]) continue;
                p[s] = exp(p[s] - mx);
                z += p[s];
            }
            for (int64_t s = 0; s < T; s++) {
                if (pos[s] > pos[t]) continue;
                for (int64_t i = 0; i < V; i++)
                    attn[(t * H + h) * V + i] += p[s] / z * kv[(s * H + h) * (NOPE + V) + NOPE + i];
            }
        }
    }
    matmul_t(attn, T, H * V, wo, D, out);
    free(xd), free(q), free(kva), free(wkva), free(wkvb), free(wo), free(cl), free(kpe);
    free(kv), free(attn), free(p);
}

static void check_mla(const char *what, const moira_model_config_t *c, const moira_mla_weights_t *w,
                      const moira_tensor_t *x, const int32_t *pos_data, bool with_absorbed) {
    int64_t T = x->shape[0], D = c->hidden_size;
    int64_t pos_shape[1] = {T};
    moira_tensor_t pos = moira_tensor_view(MOIRA_DTYPE_I32, 1, pos_shape, (void *)pos_data);
    moira_tensor_t naive = {0}, absorbed = {0};
    CHECK_OK(moira_tensor_alloc_f32(T, D, &naive));
    CHECK_OK(moira_tensor_alloc_f32(T, D, &absorbed));
    CHECK_OK(moira_ref_mla(c, w, x, &pos, &naive));
    double *ref = malloc((size_t)(T * D) * sizeof(double));
    mla_f64(c, w, x, pos_data, ref);
    double nmse = moira_test_nmse(naive.data, ref, (size_t)(T * D));
    CHECK_MSG(nmse <= NMSE_LIMIT, "%s: naive NMSE %g", what, nmse);
    if (with_absorbed) {
        CHECK_OK(moira_ref_mla_absorbed(c, w, x, &pos, &absorbed));
        double nmse_abs = moira_test_nmse(absorbed.data, ref, (size_t)(T * D));
        double nmse_forms = moira_test_nmse_f32(absorbed.data, naive.data, (size_t)(T * D));
        CHECK_MSG(nmse_abs <= NMSE_LIMIT, "%s: absorbed NMSE %g", what, nmse_abs);
        CHECK_MSG(nmse_forms <= NMSE_LIMIT, "%s: absorbed vs naive NMSE %g", what, nmse_forms);
        printf("%-28s naive %.3g, absorbed %.3g, absorbed vs naive %.3g\n", what, nmse, nmse_abs,
               nmse_forms);
    } else {
        printf("%-28s naive %.3g\n", what, nmse);
    }
    free(ref);
    moira_tensor_release(&naive);
    moira_tensor_release(&absorbed);
}

static void test_mla(void) {
    int32_t pos[16];
    for (int i = 0; i < 16; i++)
        pos[i] = i;

    /* Without q_lora, plain RoPE. */
    moira_model_config_t c = small_config();
    int64_t T = 7;
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, T, c.hidden_size, -1, 1);
    moira_mla_weights_t w = random_mla(&c);
    check_mla("mla no q_lora", &c, &w, x, pos, true);

    /* With q_lora and YaRN, mscale != mscale_all_dim so both corrections show. Rope dim 6 with a
     * short original context puts the ramp in the middle of the frequencies. */
    c.q_lora_rank = 13;
    c.qk_rope_head_dim = 6;
    c.rope_theta = 50;
    set_yarn(&c, 4, 64, 0.9, 1.3);
    w = random_mla(&c);
    check_mla("mla q_lora yarn", &c, &w, x, pos, true);

    /* Positions far from zero, so that the angles are large. */
    int32_t far[7] = {100, 101, 102, 103, 104, 105, 106};
    check_mla("mla q_lora yarn pos 100..", &c, &w, x, far, true);

    /* Repeated positions: a token sees the later token of equal position (naive form only). */
    int32_t repeated[7] = {0, 1, 1, 2, 2, 2, 5};
    check_mla("mla repeated positions", &c, &w, x, repeated, false);

    /* The absorbed form also agrees on one token. */
    int64_t shape1[2] = {1, c.hidden_size};
    moira_tensor_t one = moira_tensor_view(MOIRA_DTYPE_F32, 2, shape1, x->data);
    check_mla("mla one token", &c, &w, &one, far, true);

    /* A missing weight is named. */
    moira_mla_weights_t broken = w;
    broken.kv_a_layernorm = NULL;
    moira_tensor_t out = {0};
    CHECK_OK(moira_tensor_alloc_f32(T, c.hidden_size, &out));
    moira_status_t status = moira_ref_mla(&c, &broken, x, NULL, &out);
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(strstr(moira_status_message(status), "kv_a_layernorm") != NULL);
    moira_status_free(status);
    /* Positions of the wrong length are refused. */
    int64_t short_shape[1] = {T - 1};
    moira_tensor_t short_pos = moira_tensor_view(MOIRA_DTYPE_I32, 1, short_shape, pos);
    CHECK_CODE(moira_ref_mla_absorbed(&c, &w, x, &short_pos, &out), MOIRA_CODE_INVALID_ARGUMENT);
    moira_tensor_release(&out);
    pool_release();
}

/* ---------------------------------------------------------------------------------------------
 * Decoder layer: composed from the independent pieces */

static void test_layer(void) {
    moira_model_config_t c = small_config();
    c.q_lora_rank = 13;
    set_yarn(&c, 40, 64, 1.0, 1.0);
    c.n_group = 3;
    c.topk_group = 2;
    c.scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    c.norm_topk_prob = true;
    c.routed_scaling_factor = 2.5;
    int64_t T = 7, D = c.hidden_size;
    int32_t pos[7] = {0, 1, 2, 3, 4, 5, 6};
    const moira_tensor_t *x = random_tensor(MOIRA_DTYPE_F32, 2, T, D, -1, 1);
    const moira_tensor_t *arrays[3 * 12];
    moira_layer_weights_t lw = {.input_layernorm = random_norm(D),
                                .post_attention_layernorm = random_norm(D),
                                .mla = random_mla(&c)};
    moira_mlp_weights_t dense = {random_weight(MOIRA_DTYPE_F32, c.intermediate_size, D),
                                 random_weight(MOIRA_DTYPE_F32, c.intermediate_size, D),
                                 random_weight(MOIRA_DTYPE_F32, D, c.intermediate_size)};
    moira_moe_weights_t moe = random_moe(&c, MOIRA_DTYPE_F32, true, arrays);
    moira_tensor_t out = {0}, out_abs = {0};
    CHECK_OK(moira_tensor_alloc_f32(T, D, &out));
    CHECK_OK(moira_tensor_alloc_f32(T, D, &out_abs));
    double *ref = malloc((size_t)(T * D) * sizeof(double));
    double *h = malloc((size_t)(T * D) * sizeof(double));
    double *f = malloc((size_t)(T * D) * sizeof(double));
    moira_tensor_t scratch = {0};
    CHECK_OK(moira_tensor_alloc_f32(T, D, &scratch));

    for (int64_t layer = 0; layer < 2; layer++) {
        /* Layer 0 is dense (first_k_dense_replace 1), layer 1 is MoE. */
        lw.is_moe = layer >= 1;
        lw.mlp = lw.is_moe ? (moira_mlp_weights_t){0} : dense;
        lw.moe = lw.is_moe ? moe : (moira_moe_weights_t){0};
        CHECK_OK(moira_ref_layer(&c, layer, &lw, x, NULL, &out, false));
        CHECK_OK(moira_ref_layer(&c, layer, &lw, x, NULL, &out_abs, true));

        /* h = x + mla(rmsnorm(x)) */
        double *xd = f32_to_f64(x->data, T * D);
        rmsnorm_f64(xd, T, D, lw.input_layernorm, c.rms_norm_eps);
        for (int64_t i = 0; i < T * D; i++)
            ((float *)scratch.data)[i] = (float)xd[i];
        mla_f64(&c, &lw.mla, &scratch, pos, h);
        for (int64_t i = 0; i < T * D; i++)
            h[i] += ((const float *)x->data)[i];
        /* out = h + ffn(rmsnorm(h)) */
        memcpy(xd, h, (size_t)(T * D) * sizeof(double));
        rmsnorm_f64(xd, T, D, lw.post_attention_layernorm, c.rms_norm_eps);
        for (int64_t i = 0; i < T * D; i++)
            ((float *)scratch.data)[i] = (float)xd[i];
        if (lw.is_moe)
            moe_f64(&c, &moe, &scratch, f);
        else
            swiglu_f64(&dense, xd, T, D, f);
        for (int64_t i = 0; i < T * D; i++)
            ref[i] = h[i] + f[i];
        free(xd);

        double nmse = moira_test_nmse(out.data, ref, (size_t)(T * D));
        double nmse_abs = moira_test_nmse(out_abs.data, ref, (size_t)(T * D));
        CHECK_MSG(nmse <= NMSE_LIMIT, "layer %lld NMSE %g", (long long)layer, nmse);
        CHECK_MSG(nmse_abs <= NMSE_LIMIT, "layer %lld absorbed NMSE %g", (long long)layer,
                  nmse_abs);
        printf("layer %lld (%s)                naive %.3g, absorbed %.3g\n", (long long)layer,
               lw.is_moe ? "moe  " : "dense", nmse, nmse_abs);
    }
    /* Weights that disagree with the config about the layer's kind are refused. */
    lw.is_moe = false;
    lw.mlp = dense;
    CHECK_CODE(moira_ref_layer(&c, 1, &lw, x, NULL, &out, false), MOIRA_CODE_INVALID_ARGUMENT);
    /* out may be x. */
    moira_tensor_t inplace = {0};
    CHECK_OK(moira_tensor_to_f32(x, &inplace));
    CHECK_OK(moira_ref_layer(&c, 0, &lw, &inplace, NULL, &inplace, false));
    CHECK_OK(moira_ref_layer(&c, 0, &lw, x, NULL, &out, false));
    CHECK(memcmp(inplace.data, out.data, (size_t)(T * D) * sizeof(float)) == 0);
    moira_tensor_release(&inplace);
    free(ref), free(h), free(f);
    moira_tensor_release(&out);
    moira_tensor_release(&out_abs);
    moira_tensor_release(&scratch);
    pool_release();
}

int main(void) {
    test_rmsnorm();
    test_gate_random();
    test_gate_ties();
    test_gate_capacity();
    test_mlp();
    test_moe();
    test_yarn_inv_freq();
    test_mla();
    test_layer();
    return moira_test_finish("test_reference_math");
}
