/* Near ties in a reference layer's routing (ops/reference.h): where a device's rounding may
 * legitimately send a token to another expert. */
#include <math.h>
#include <stdlib.h>

#include "ops/reference.h"

static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The k-th largest finite value of `values` (1-based k) and the one ranked after it (-inf when
 * there is none), for a near-tie test. */
static void boundary(const float *values, int64_t n, int64_t k, float *kth, float *next) {
    float sorted[1024];
    int64_t m = 0;
    for (int64_t i = 0; i < n && m < 1024; i++)
        if (isfinite(values[i])) sorted[m++] = values[i];
    qsort(sorted, (size_t)m, sizeof(float), descending);
    *kth = k >= 1 && k <= m ? sorted[k - 1] : INFINITY;
    *next = k < m ? sorted[k] : -INFINITY;
}

/* Marks the tokens whose routing is a near tie in the reference layer (ops/reference.h): DESIGN.md
 * §4's top-k rule (scores closer than the backend's precision) applied to the router input the
 * reference computes itself, at the group boundary and at the expert boundary. A backend that
 * computes attention in a narrower type may route such a token to the other expert, which is a
 * legitimate result, not a numeric error, but changes that token's output wholesale. */
moira_status_t moira_ref_layer_near_ties(const moira_model_config_t *c,
                                         const moira_layer_weights_t *w, const moira_tensor_t *x,
                                         const moira_tensor_t *positions, float window, bool *tie) {
    int64_t t = x->shape[0], d = c->hidden_size, e = c->n_routed_experts;
    for (int64_t i = 0; i < t; i++)
        tie[i] = false;
    if (!w->is_moe) return MOIRA_OK_STATUS;
    moira_model_config_t ungrouped = *c;
    ungrouped.n_group = 1;
    ungrouped.topk_group = 1;
    ungrouped.capacity_factor = 0;
    moira_tensor_t normed = {0}, attn = {0}, idx = {0}, wt = {0}, sel = {0};
    int64_t tk[2] = {t, c->num_experts_per_tok};
    moira_status_t status = moira_tensor_alloc_f32(t, d, &normed);
    if (!status) status = moira_tensor_alloc_f32(t, d, &attn);
    if (!status) status = moira_tensor_alloc(MOIRA_DTYPE_I32, 2, tk, &idx);
    if (!status) status = moira_tensor_alloc(MOIRA_DTYPE_F32, 2, tk, &wt);
    if (!status) status = moira_tensor_alloc_f32(t, e, &sel);
    if (!status) status = moira_ref_rmsnorm(x, w->input_layernorm, c->rms_norm_eps, &normed);
    if (!status) status = moira_ref_mla(c, &w->mla, &normed, positions, &attn);
    if (!status) {
        float *hs = attn.data;
        const float *in = x->data;
        for (int64_t i = 0; i < t * d; i++)
            hs[i] += in[i];
        status = moira_ref_rmsnorm(&attn, w->post_attention_layernorm, c->rms_norm_eps, &normed);
    }
    if (!status)
        status = moira_ref_gate(&ungrouped, &normed, w->moe.gate, w->moe.e_score_correction_bias,
                                &idx, &wt, &sel);
    for (int64_t row = 0; row < t && !status; row++) {
        float *s = (float *)sel.data + row * e, kth, next;
        if (c->n_group > 1 && c->n_group <= 256) {
            int64_t size = e / c->n_group;
            float groups[256];
            int take = w->moe.e_score_correction_bias && size >= 2 ? 2 : 1;
            for (int64_t g = 0; g < c->n_group; g++) {
                float first, second;
                boundary(s + g * size, size, 1, &first, &second);
                groups[g] = take == 2 ? first + second : first;
            }
            boundary(groups, c->n_group, c->topk_group, &kth, &next);
            if (fabsf(kth - next) <= window * fabsf(kth)) tie[row] = true;
            for (int64_t g = 0; g < c->n_group; g++)
                if (groups[g] < kth)
                    for (int64_t i = 0; i < size; i++)
                        s[g * size + i] = -INFINITY;
        }
        boundary(s, e, c->num_experts_per_tok, &kth, &next);
        if (fabsf(kth - next) <= window * fabsf(kth)) tie[row] = true;
    }
    moira_tensor_t *all[] = {&normed, &attn, &idx, &wt, &sel};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        moira_tensor_release(all[i]);
    return status;
}

double moira_nmse_without_ties(const float *got, const float *ref, int64_t rows, int64_t cols,
                               const bool *tie, double limit, int *out_excluded) {
    double num = 0, den = 0;
    int excluded = 0;
    for (int64_t row = 0; row < rows; row++) {
        double row_num = 0, row_den = 0;
        for (int64_t i = row * cols; i < (row + 1) * cols; i++) {
            double diff = (double)got[i] - ref[i];
            row_num += diff * diff;
            row_den += (double)ref[i] * ref[i];
        }
        if (tie[row] && row_num > limit * row_den) {
            excluded++;
            continue;
        }
        num += row_num;
        den += row_den;
    }
    *out_excluded = excluded;
    return den > 0 ? num / den : num;
}
