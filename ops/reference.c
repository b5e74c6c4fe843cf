#include "ops/reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op.h"
#include "ops/rope.h"

/* Runs `expr` and jumps to the function's cleanup label on error, so every temporary is released
 * on every path. */
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        status = (expr);                                                                           \
        if (status) goto done;                                                                     \
    } while (0)

/* ---------------------------------------------------------------------------------------------
 * Operand checks */

/* Every operand is checked the same way so that a wrong call always reads
 * "moira_ref_gate: topk_idx: expected I32 [24, 6], got F32 [24, 8]". A negative dimension in the
 * expectation means "any". */
static moira_status_t expect_tensor(const char *fn, const char *what, const moira_tensor_t *t,
                                    moira_dtype_t dtype, int rank, int64_t d0, int64_t d1) {
    if (!t || !t->data)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %s is missing", fn, what);
    bool ok = t->dtype == dtype && t->rank == rank && (d0 < 0 || t->shape[0] == d0) &&
              (rank < 2 || d1 < 0 || t->shape[1] == d1);
    if (!ok) {
        char want[64], got[64];
        moira_tensor_t expected = {.rank = rank, .shape = {d0, d1}};
        moira_tensor_shape_str(&expected, want, sizeof(want));
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %s: expected %s %s, got %s %s",
                                 fn, what, moira_dtype_name(dtype), want,
                                 moira_dtype_name(t->dtype),
                                 moira_tensor_shape_str(t, got, sizeof(got)));
    }
    return MOIRA_OK_STATUS;
}

/* Norm weights and biases: any float type, rank 1, length n. */
static moira_status_t expect_vector(const char *fn, const char *what, const moira_tensor_t *t,
                                    int64_t n) {
    if (!t || !t->data)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %s is missing", fn, what);
    if (!moira_dtype_is_float(t->dtype) || t->rank != 1 || t->shape[0] != n) {
        char got[64];
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: %s: expected a float vector [%lld], got %s %s", fn, what,
                                 (long long)n, moira_dtype_name(t->dtype),
                                 moira_tensor_shape_str(t, got, sizeof(got)));
    }
    return MOIRA_OK_STATUS;
}

/* Weight matrices: any float type or quantised format (read dequantised), [rows, cols]. */
static moira_status_t expect_matrix(const char *fn, const char *what, const moira_tensor_t *t,
                                    int64_t rows, int64_t cols) {
    if (!t || !t->data)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %s is missing", fn, what);
    if (!moira_dtype_is_weight(t->dtype) || t->rank != 2 || (rows >= 0 && t->shape[0] != rows) ||
        (cols >= 0 && t->shape[1] != cols)) {
        char got[64];
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: %s: expected a weight matrix [%lld, %lld], got %s %s", fn,
                                 what, (long long)rows, (long long)cols, moira_dtype_name(t->dtype),
                                 moira_tensor_shape_str(t, got, sizeof(got)));
    }
    return MOIRA_OK_STATUS;
}

/* Positions are optional; when given they must cover every token. */
static moira_status_t expect_positions(const char *fn, const moira_tensor_t *positions,
                                       int64_t tokens) {
    if (!positions) return MOIRA_OK_STATUS;
    return expect_tensor(fn, "positions", positions, MOIRA_DTYPE_I32, 1, tokens, -1);
}

static int32_t position_of(const moira_tensor_t *positions, int64_t t) {
    return positions ? ((const int32_t *)positions->data)[t] : (int32_t)t;
}

/* ---------------------------------------------------------------------------------------------
 * Building blocks on f32 rows, with double accumulation */

/* y[r, o] = sum_i W[o, i] * x[r, i] for `rows` rows. x rows are `x_stride` floats apart and y
 * rows `y_stride` apart, so callers can read and write column slices in place. Each weight row is
 * converted once and reused for every token. */
static moira_status_t linear(const moira_tensor_t *w, const float *x, int64_t rows,
                             int64_t x_stride, float *y, int64_t y_stride) {
    int64_t out_dim = w->shape[0], in_dim = w->shape[1];
    float *w_row = malloc((size_t)(in_dim > 0 ? in_dim : 1) * sizeof(float));
    if (!w_row) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a row");
    for (int64_t o = 0; o < out_dim; o++) {
        moira_tensor_row_to_f32(w, o, w_row);
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * x_stride;
            double acc = 0;
            for (int64_t i = 0; i < in_dim; i++)
                acc += (double)w_row[i] * xr[i];
            y[r * y_stride + o] = (float)acc;
        }
    }
    free(w_row);
    return MOIRA_OK_STATUS;
}

/* rmsnorm of `rows` rows of n floats, `stride` apart, in place or into `y`. */
static moira_status_t rmsnorm_rows(const float *x, int64_t rows, int64_t n, int64_t x_stride,
                                   const moira_tensor_t *weight, double eps, float *y,
                                   int64_t y_stride) {
    float *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!w) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a row");
    moira_tensor_row_to_f32(weight, 0, w);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_stride;
        double sum_sq = 0;
        for (int64_t i = 0; i < n; i++)
            sum_sq += (double)xr[i] * xr[i];
        double inv_rms = 1.0 / sqrt(sum_sq / (double)n + eps);
        float *yr = y + r * y_stride;
        for (int64_t i = 0; i < n; i++)
            yr[i] = (float)((double)xr[i] * inv_rms * w[i]);
    }
    free(w);
    return MOIRA_OK_STATUS;
}

static double silu(double z) {
    return z / (1.0 + exp(-z));
}

/* out[r] = W2 (silu(W1 x[r]) * (W3 x[r])) for `rows` contiguous rows of x [rows, D]. */
static moira_status_t swiglu_rows(const moira_mlp_weights_t *w, const float *x, int64_t rows,
                                  float *out) {
    moira_status_t status = MOIRA_OK_STATUS;
    int64_t d = w->gate_proj->shape[1], inter = w->gate_proj->shape[0];
    moira_tensor_t g = {0}, u = {0};
    TRY(moira_tensor_alloc_f32(rows, inter, &g));
    TRY(moira_tensor_alloc_f32(rows, inter, &u));
    float *gv = g.data, *uv = u.data;
    TRY(linear(w->gate_proj, x, rows, d, gv, inter));
    TRY(linear(w->up_proj, x, rows, d, uv, inter));
    for (int64_t i = 0; i < rows * inter; i++)
        gv[i] = (float)(silu(gv[i]) * (double)uv[i]);
    TRY(linear(w->down_proj, gv, rows, inter, out, d));
done:
    moira_tensor_release(&g);
    moira_tensor_release(&u);
    return status;
}

/* The MLP's three matrices must agree with each other and with the activations' width. */
static moira_status_t check_mlp(const char *fn, const moira_mlp_weights_t *w, int64_t d) {
    if (!w->gate_proj)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: gate_proj is missing", fn);
    int64_t inter = w->gate_proj->rank == 2 ? w->gate_proj->shape[0] : -1;
    MOIRA_RETURN_IF_ERROR(expect_matrix(fn, "gate_proj", w->gate_proj, inter, d));
    MOIRA_RETURN_IF_ERROR(expect_matrix(fn, "up_proj", w->up_proj, inter, d));
    MOIRA_RETURN_IF_ERROR(expect_matrix(fn, "down_proj", w->down_proj, d, inter));
    return MOIRA_OK_STATUS;
}

/* ---------------------------------------------------------------------------------------------
 * rmsnorm */

/* Rows are independent and each is read whole before it is written, so out may alias x. */
moira_status_t moira_ref_rmsnorm(const moira_tensor_t *x, const moira_tensor_t *weight, double eps,
                                 moira_tensor_t *out) {
    static const char fn[] = "moira_ref_rmsnorm";
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, -1));
    int64_t rows = x->shape[0], n = x->shape[1];
    MOIRA_RETURN_IF_ERROR(expect_vector(fn, "weight", weight, n));
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "out", out, MOIRA_DTYPE_F32, 2, rows, n));
    if (!(eps >= 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: eps %g is negative", fn, eps);
    return rmsnorm_rows(x->data, rows, n, n, weight, eps, out->data, n);
}

/* ---------------------------------------------------------------------------------------------
 * gate */

static moira_status_t check_gate_config(const char *fn, const moira_model_config_t *c) {
    int64_t e = c->n_routed_experts, k = c->num_experts_per_tok;
    int64_t groups = c->n_group, keep = c->topk_group;
    if (e <= 0 || k <= 0 || k > e)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: need 0 < num_experts_per_tok (%lld) <= n_routed_experts "
                                 "(%lld)",
                                 fn, (long long)k, (long long)e);
    if (groups <= 0 || e % groups != 0 || keep <= 0 || keep > groups)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: n_group %lld must divide n_routed_experts %lld and "
                                 "0 < topk_group (%lld) <= n_group",
                                 fn, (long long)groups, (long long)e, (long long)keep);
    if (k > keep * (e / groups))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: num_experts_per_tok %lld exceeds the %lld experts of the "
                                 "%lld kept groups",
                                 fn, (long long)k, (long long)(keep * (e / groups)),
                                 (long long)keep);
    if (c->scoring_func != MOIRA_SCORING_FUNC_SOFTMAX &&
        c->scoring_func != MOIRA_SCORING_FUNC_SIGMOID)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: unknown scoring_func %d", fn,
                                 (int)c->scoring_func);
    if (!(c->capacity_factor >= 0))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: capacity_factor %g is negative",
                                 fn, c->capacity_factor);
    return MOIRA_OK_STATUS;
}

/* Index of the largest of `n` values not yet taken; the first (lowest index) wins ties, which is
 * the tie rule DESIGN.md §4 sets for experts and groups alike. */
static int64_t argmax_untaken(const double *values, const bool *taken, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || values[i] > values[best]) best = i;
    }
    return best;
}

/* One token's routing, DESIGN.md §4 step by step. `logits` [E] in; `sel` [E] out (the masked
 * selection scores); idx and weight [k] out. `orig` [E], `group_score` [n_group], `taken` [E] and
 * `group_kept` [n_group] are scratch. */
static void route_token(const moira_model_config_t *c, const double *logits, const float *bias,
                        double *sel, int32_t *idx, float *weight, double *orig, double *group_score,
                        bool *taken, bool *group_kept) {
    int64_t e_count = c->n_routed_experts, k = c->num_experts_per_tok;
    if (c->scoring_func == MOIRA_SCORING_FUNC_SOFTMAX) {
        double max = -INFINITY, sum = 0;
        for (int64_t e = 0; e < e_count; e++)
            max = fmax(max, logits[e]);
        for (int64_t e = 0; e < e_count; e++) {
            orig[e] = exp(logits[e] - max);
            sum += orig[e];
        }
        for (int64_t e = 0; e < e_count; e++)
            orig[e] /= sum;
    } else {
        for (int64_t e = 0; e < e_count; e++)
            orig[e] = 1.0 / (1.0 + exp(-logits[e]));
    }
    for (int64_t e = 0; e < e_count; e++)
        sel[e] = orig[e] + (bias ? (double)bias[e] : 0.0);

    if (c->n_group > 1) {
        int64_t groups = c->n_group, size = e_count / groups;
        for (int64_t g = 0; g < groups; g++) {
            const double *s = sel + g * size;
            double first = -INFINITY, second = -INFINITY;
            for (int64_t i = 0; i < size; i++) {
                if (s[i] > first) {
                    second = first;
                    first = s[i];
                } else if (s[i] > second) {
                    second = s[i];
                }
            }
            /* With a bias the group score is the sum of its two best; a one-expert group has
             * only one to add. */
            group_score[g] = bias ? first + (size > 1 ? second : 0.0) : first;
            group_kept[g] = false;
        }
        for (int64_t n = 0; n < c->topk_group; n++)
            group_kept[argmax_untaken(group_score, group_kept, groups)] = true;
        for (int64_t e = 0; e < e_count; e++)
            if (!group_kept[e / size]) sel[e] = -INFINITY;
    }

    for (int64_t e = 0; e < e_count; e++)
        taken[e] = false;
    double sum = 0;
    for (int64_t j = 0; j < k; j++) {
        int64_t best = argmax_untaken(sel, taken, e_count);
        taken[best] = true;
        idx[j] = (int32_t)best;
        sum += orig[best];
    }
    double norm = c->norm_topk_prob ? sum + 1e-20 : 1.0;
    for (int64_t j = 0; j < k; j++)
        weight[j] = (float)(orig[idx[j]] / norm * c->routed_scaling_factor);
}

/* Scores, selection and weights are kept in double until written, so that the chosen experts are
 * those of exact arithmetic wherever two scores differ by more than double rounding. */
moira_status_t moira_ref_gate(const moira_model_config_t *config, const moira_tensor_t *x,
                              const moira_tensor_t *gate_weight, const moira_tensor_t *bias,
                              moira_tensor_t *out_topk_idx, moira_tensor_t *out_topk_weight,
                              moira_tensor_t *out_selection) {
    static const char fn[] = "moira_ref_gate";
    MOIRA_RETURN_IF_ERROR(check_gate_config(fn, config));
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, -1));
    int64_t tokens = x->shape[0], d = x->shape[1];
    int64_t e_count = config->n_routed_experts, k = config->num_experts_per_tok;
    MOIRA_RETURN_IF_ERROR(expect_matrix(fn, "gate weight", gate_weight, e_count, d));
    if (bias) MOIRA_RETURN_IF_ERROR(expect_vector(fn, "bias", bias, e_count));
    MOIRA_RETURN_IF_ERROR(
        expect_tensor(fn, "topk_idx", out_topk_idx, MOIRA_DTYPE_I32, 2, tokens, k));
    MOIRA_RETURN_IF_ERROR(
        expect_tensor(fn, "topk_weight", out_topk_weight, MOIRA_DTYPE_F32, 2, tokens, k));
    if (out_selection)
        MOIRA_RETURN_IF_ERROR(
            expect_tensor(fn, "selection", out_selection, MOIRA_DTYPE_F32, 2, tokens, e_count));

    moira_status_t status = MOIRA_OK_STATUS;
    size_t n_e = (size_t)e_count;
    double *logits = malloc((size_t)(tokens > 0 ? tokens : 1) * n_e * sizeof(double));
    double *scratch = malloc(3 * n_e * sizeof(double));
    bool *flags = malloc(2 * n_e * sizeof(bool));
    float *w_row = malloc((size_t)(d > 0 ? d : 1) * sizeof(float));
    float *bias_f32 = malloc(n_e * sizeof(float));
    int32_t *counts = calloc(n_e, sizeof(int32_t));
    if (!logits || !scratch || !flags || !w_row || !bias_f32 || !counts) {
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", fn);
        goto done;
    }
    if (bias) moira_tensor_row_to_f32(bias, 0, bias_f32);

    const float *xv = x->data;
    for (int64_t e = 0; e < e_count; e++) {
        moira_tensor_row_to_f32(gate_weight, e, w_row);
        for (int64_t t = 0; t < tokens; t++) {
            double acc = 0;
            for (int64_t i = 0; i < d; i++)
                acc += (double)w_row[i] * xv[t * d + i];
            logits[t * e_count + e] = acc;
        }
    }

    int32_t *idx = out_topk_idx->data;
    float *weight = out_topk_weight->data;
    double *sel = scratch, *orig = scratch + n_e, *group_score = scratch + 2 * n_e;
    for (int64_t t = 0; t < tokens; t++) {
        route_token(config, logits + t * e_count, bias ? bias_f32 : NULL, sel, idx + t * k,
                    weight + t * k, orig, group_score, flags, flags + n_e);
        if (out_selection) {
            float *s = (float *)out_selection->data + t * e_count;
            for (int64_t e = 0; e < e_count; e++)
                s[e] = (float)sel[e];
        }
    }

    /* Capacity: first come first served in token order, then in selection order within a token.
     * Dropped assignments keep their place with index -1 and weight 0. The limit is the devices'
     * own (moira_capacity_limit, from the f32 factor they are given): a double here made valid
     * factors such as 1.00000005 disagree by one. */
    int32_t cap = moira_capacity_limit((float)config->capacity_factor, tokens, k, e_count);
    if (cap != INT32_MAX) {
        for (int64_t a = 0; a < tokens * k; a++) {
            if (counts[idx[a]] >= cap) {
                idx[a] = -1;
                weight[a] = 0.0f;
            } else {
                counts[idx[a]]++;
            }
        }
    }
done:
    free(logits);
    free(scratch);
    free(flags);
    free(w_row);
    free(bias_f32);
    free(counts);
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * MLP and MoE */

moira_status_t moira_ref_mlp(const moira_mlp_weights_t *weights, const moira_tensor_t *x,
                             moira_tensor_t *out) {
    static const char fn[] = "moira_ref_mlp";
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, -1));
    int64_t tokens = x->shape[0], d = x->shape[1];
    MOIRA_RETURN_IF_ERROR(check_mlp(fn, weights, d));
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "out", out, MOIRA_DTYPE_F32, 2, tokens, d));
    /* A separate result buffer lets out alias x. */
    moira_tensor_t y = {0};
    moira_status_t status = MOIRA_OK_STATUS;
    TRY(moira_tensor_alloc_f32(tokens, d, &y));
    TRY(swiglu_rows(weights, x->data, tokens, y.data));
    memcpy(out->data, y.data, (size_t)(tokens * d) * sizeof(float));
done:
    moira_tensor_release(&y);
    return status;
}

/* Experts are run one at a time over the rows routed to them (gathered, computed, scattered to
 * the assignment's slot), then each token sums its k slots in selection order: the same
 * dispatch / grouped FFN / combine split the device ops use, without any of their tricks. */
moira_status_t moira_ref_moe(const moira_model_config_t *config, const moira_moe_weights_t *weights,
                             const moira_tensor_t *x, moira_tensor_t *out) {
    static const char fn[] = "moira_ref_moe";
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, -1));
    MOIRA_RETURN_IF_ERROR(moira_moe_weights_check(config, weights));
    int64_t tokens = x->shape[0], d = x->shape[1];
    if (d != config->hidden_size)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: x has %lld columns, "
                                 "hidden_size is %lld",
                                 fn, (long long)d, (long long)config->hidden_size);
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "out", out, MOIRA_DTYPE_F32, 2, tokens, d));
    int64_t k = config->num_experts_per_tok, e_count = config->n_routed_experts;

    moira_status_t status = MOIRA_OK_STATUS;
    moira_tensor_t idx = {0}, weight = {0}, ys = {0}, gathered = {0}, expert_out = {0};
    moira_tensor_t shared = {0};
    int64_t *rows_of_expert = NULL;
    int64_t idx_shape[2] = {tokens, k};
    TRY(moira_tensor_alloc(MOIRA_DTYPE_I32, 2, idx_shape, &idx));
    TRY(moira_tensor_alloc_f32(tokens, k, &weight));
    TRY(moira_ref_gate(config, x, weights->gate, weights->e_score_correction_bias, &idx, &weight,
                       NULL));
    TRY(moira_tensor_alloc_f32(tokens * k, d, &ys));
    TRY(moira_tensor_alloc_f32(tokens * k, d, &gathered));
    TRY(moira_tensor_alloc_f32(tokens * k, d, &expert_out));
    rows_of_expert = malloc((size_t)(tokens * k > 0 ? tokens * k : 1) * sizeof(int64_t));
    if (!rows_of_expert) {
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", fn);
        goto done;
    }

    const int32_t *iv = idx.data;
    const float *xv = x->data;
    float *gv = gathered.data, *ev = expert_out.data, *yv = ys.data;
    for (int64_t e = 0; e < e_count; e++) {
        int64_t n = 0;
        for (int64_t a = 0; a < tokens * k; a++)
            if (iv[a] == e) rows_of_expert[n++] = a;
        if (n == 0) continue;
        for (int64_t r = 0; r < n; r++)
            memcpy(gv + r * d, xv + (rows_of_expert[r] / k) * d, (size_t)d * sizeof(float));
        moira_mlp_weights_t expert = {weights->expert_gate_proj[e], weights->expert_up_proj[e],
                                      weights->expert_down_proj[e]};
        TRY(swiglu_rows(&expert, gv, n, ev));
        for (int64_t r = 0; r < n; r++)
            memcpy(yv + rows_of_expert[r] * d, ev + r * d, (size_t)d * sizeof(float));
    }

    bool has_shared = weights->shared.gate_proj != NULL;
    if (has_shared) {
        TRY(moira_tensor_alloc_f32(tokens, d, &shared));
        TRY(swiglu_rows(&weights->shared, xv, tokens, shared.data));
    }
    const float *wv = weight.data, *sv = shared.data;
    float *ov = out->data;
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t i = 0; i < d; i++) {
            double acc = 0;
            for (int64_t j = 0; j < k; j++)
                if (iv[t * k + j] >= 0) acc += (double)wv[t * k + j] * yv[(t * k + j) * d + i];
            if (has_shared) acc += sv[t * d + i];
            ov[t * d + i] = (float)acc;
        }
    }
done:
    moira_tensor_release(&idx);
    moira_tensor_release(&weight);
    moira_tensor_release(&ys);
    moira_tensor_release(&gathered);
    moira_tensor_release(&expert_out);
    moira_tensor_release(&shared);
    free(rows_of_expert);
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * MLA */

/* The dimensions of MLA, named once. */
typedef struct mla_dims {
    int64_t d, heads, nope, rope, v, lora, q_lora, q_head, q_dim, kv_head;
} mla_dims_t;

static mla_dims_t mla_dims_of(const moira_model_config_t *c) {
    mla_dims_t m = {
        .d = c->hidden_size,
        .heads = c->num_attention_heads,
        .nope = c->qk_nope_head_dim,
        .rope = c->qk_rope_head_dim,
        .v = c->v_head_dim,
        .lora = c->kv_lora_rank,
        .q_lora = c->q_lora_rank,
    };
    m.q_head = m.nope + m.rope;
    m.q_dim = m.heads * m.q_head;
    m.kv_head = m.nope + m.v;
    return m;
}

/* What both MLA forms check before touching anything. */
static moira_status_t check_mla_call(const char *fn, const moira_model_config_t *config,
                                     const moira_mla_weights_t *weights, const moira_tensor_t *x,
                                     const moira_tensor_t *positions, const moira_tensor_t *out) {
    MOIRA_RETURN_IF_ERROR(moira_mla_weights_check(config, weights));
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, config->hidden_size));
    MOIRA_RETURN_IF_ERROR(expect_positions(fn, positions, x->shape[0]));
    MOIRA_RETURN_IF_ERROR(
        expect_tensor(fn, "out", out, MOIRA_DTYPE_F32, 2, x->shape[0], config->hidden_size));
    return MOIRA_OK_STATUS;
}

/* q for `rows` rows of x: through the low-rank q_a/q_b pair with its norm, or q_proj. */
static moira_status_t mla_query(const moira_model_config_t *config, const mla_dims_t *m,
                                const moira_mla_weights_t *w, const float *x, int64_t rows,
                                float *q) {
    if (m->q_lora <= 0) return linear(w->q_proj, x, rows, m->d, q, m->q_dim);
    moira_status_t status = MOIRA_OK_STATUS;
    moira_tensor_t qa = {0};
    TRY(moira_tensor_alloc_f32(rows, m->q_lora, &qa));
    TRY(linear(w->q_a_proj, x, rows, m->d, qa.data, m->q_lora));
    TRY(rmsnorm_rows(qa.data, rows, m->q_lora, m->q_lora, w->q_a_layernorm, config->rms_norm_eps,
                     qa.data, m->q_lora));
    TRY(linear(w->q_b_proj, qa.data, rows, m->q_lora, q, m->q_dim));
done:
    moira_tensor_release(&qa);
    return status;
}

/* The latent c (normalised) and the unroped k_pe for `rows` rows of x: kv_a_proj_with_mqa splits
 * into [c | k_pe]. */
static moira_status_t mla_latent(const moira_model_config_t *config, const mla_dims_t *m,
                                 const moira_mla_weights_t *w, const float *x, int64_t rows,
                                 float *c, float *k_pe) {
    moira_status_t status = MOIRA_OK_STATUS;
    int64_t width = m->lora + m->rope;
    moira_tensor_t kv_a = {0};
    TRY(moira_tensor_alloc_f32(rows, width, &kv_a));
    float *kv = kv_a.data;
    TRY(linear(w->kv_a_proj_with_mqa, x, rows, m->d, kv, width));
    TRY(rmsnorm_rows(kv, rows, m->lora, width, w->kv_a_layernorm, config->rms_norm_eps, c,
                     m->lora));
    for (int64_t r = 0; r < rows; r++)
        memcpy(k_pe + r * m->rope, kv + r * width + m->lora, (size_t)m->rope * sizeof(float));
done:
    moira_tensor_release(&kv_a);
    return status;
}

/* Rotates the pairs (2i, 2i+1) of `rope` floats at `v` by pos * inv_freq[i], with cos and sin
 * scaled by YaRN's ratio. */
static void rope_rotate(float *v, int64_t rope, int32_t pos, const double *inv_freq,
                        double cos_sin_scale) {
    for (int64_t i = 0; i < rope / 2; i++) {
        double angle = (double)pos * inv_freq[i];
        double cs = cos(angle) * cos_sin_scale, sn = sin(angle) * cos_sin_scale;
        double a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = (float)(a * cs - b * sn);
        v[2 * i + 1] = (float)(b * cs + a * sn);
    }
}

/* Softmax in place over `n` scores; entries equal to -inf get probability 0. */
static void softmax_in_place(double *scores, int64_t n) {
    double max = -INFINITY, sum = 0;
    for (int64_t i = 0; i < n; i++)
        max = fmax(max, scores[i]);
    for (int64_t i = 0; i < n; i++) {
        scores[i] = scores[i] == -INFINITY ? 0.0 : exp(scores[i] - max);
        sum += scores[i];
    }
    for (int64_t i = 0; i < n; i++)
        scores[i] /= sum;
}

/* The textbook form: expand the latent to per-head keys and values, attend, project. */
moira_status_t moira_ref_mla(const moira_model_config_t *config, const moira_mla_weights_t *weights,
                             const moira_tensor_t *x, const moira_tensor_t *positions,
                             moira_tensor_t *out) {
    static const char fn[] = "moira_ref_mla";
    MOIRA_RETURN_IF_ERROR(check_mla_call(fn, config, weights, x, positions, out));
    mla_dims_t m = mla_dims_of(config);
    int64_t tokens = x->shape[0];

    moira_status_t status = MOIRA_OK_STATUS;
    moira_tensor_t q = {0}, c = {0}, k_pe = {0}, kv = {0}, attn = {0};
    double *inv_freq = malloc((size_t)(m.rope / 2 > 0 ? m.rope / 2 : 1) * sizeof(double));
    double *scores = malloc((size_t)(tokens > 0 ? tokens : 1) * sizeof(double));
    double *acc = malloc((size_t)m.v * sizeof(double));
    if (!inv_freq || !scores || !acc) {
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", fn);
        goto done;
    }
    double cos_sin_scale = 1, scale = moira_model_config_attention_scale(config);
    TRY(moira_rope_inv_freq(config, inv_freq, &cos_sin_scale));

    TRY(moira_tensor_alloc_f32(tokens, m.q_dim, &q));
    TRY(moira_tensor_alloc_f32(tokens, m.lora, &c));
    TRY(moira_tensor_alloc_f32(tokens, m.rope, &k_pe));
    TRY(moira_tensor_alloc_f32(tokens, m.heads * m.kv_head, &kv));
    TRY(moira_tensor_alloc_f32(tokens, m.heads * m.v, &attn));
    float *qv = q.data, *kpv = k_pe.data, *kvv = kv.data, *av = attn.data;
    TRY(mla_query(config, &m, weights, x->data, tokens, qv));
    TRY(mla_latent(config, &m, weights, x->data, tokens, c.data, kpv));
    TRY(linear(weights->kv_b_proj, c.data, tokens, m.lora, kvv, m.heads * m.kv_head));

    for (int64_t t = 0; t < tokens; t++) {
        int32_t pos = position_of(positions, t);
        rope_rotate(kpv + t * m.rope, m.rope, pos, inv_freq, cos_sin_scale);
        for (int64_t h = 0; h < m.heads; h++)
            rope_rotate(qv + t * m.q_dim + h * m.q_head + m.nope, m.rope, pos, inv_freq,
                        cos_sin_scale);
    }

    for (int64_t t = 0; t < tokens; t++) {
        int32_t pos_t = position_of(positions, t);
        for (int64_t h = 0; h < m.heads; h++) {
            const float *qh = qv + t * m.q_dim + h * m.q_head;
            for (int64_t s = 0; s < tokens; s++) {
                if (position_of(positions, s) > pos_t) {
                    scores[s] = -INFINITY;
                    continue;
                }
                const float *k_nope = kvv + s * m.heads * m.kv_head + h * m.kv_head;
                const float *kp = kpv + s * m.rope;
                double dot = 0;
                for (int64_t i = 0; i < m.nope; i++)
                    dot += (double)qh[i] * k_nope[i];
                for (int64_t i = 0; i < m.rope; i++)
                    dot += (double)qh[m.nope + i] * kp[i];
                scores[s] = dot * scale;
            }
            softmax_in_place(scores, tokens);
            for (int64_t i = 0; i < m.v; i++)
                acc[i] = 0;
            for (int64_t s = 0; s < tokens; s++) {
                if (scores[s] == 0) continue;
                const float *vs = kvv + s * m.heads * m.kv_head + h * m.kv_head + m.nope;
                for (int64_t i = 0; i < m.v; i++)
                    acc[i] += scores[s] * vs[i];
            }
            for (int64_t i = 0; i < m.v; i++)
                av[t * m.heads * m.v + h * m.v + i] = (float)acc[i];
        }
    }
    TRY(linear(weights->o_proj, av, tokens, m.heads * m.v, out->data, m.d));
done:
    moira_tensor_release(&q);
    moira_tensor_release(&c);
    moira_tensor_release(&k_pe);
    moira_tensor_release(&kv);
    moira_tensor_release(&attn);
    free(inv_freq);
    free(scores);
    free(acc);
    return status;
}

/* The decode form, as a decoder runs it: each token extends a cache of (c, roped k_pe) and
 * attends over it in latent space. Per head, the query's nope part is mapped into the latent by
 * W_UK^T (rows h*(nope+v) .. +nope of kv_b_proj) and the latent attention output is mapped to
 * the head's values by W_UV (the next v rows). */
moira_status_t moira_ref_mla_absorbed(const moira_model_config_t *config,
                                      const moira_mla_weights_t *weights, const moira_tensor_t *x,
                                      const moira_tensor_t *positions, moira_tensor_t *out) {
    static const char fn[] = "moira_ref_mla_absorbed";
    MOIRA_RETURN_IF_ERROR(check_mla_call(fn, config, weights, x, positions, out));
    mla_dims_t m = mla_dims_of(config);
    int64_t tokens = x->shape[0];

    moira_status_t status = MOIRA_OK_STATUS;
    moira_tensor_t q = {0}, cache_c = {0}, cache_k_pe = {0}, attn = {0}, y = {0};
    double *inv_freq = malloc((size_t)(m.rope / 2 > 0 ? m.rope / 2 : 1) * sizeof(double));
    double *scores = malloc((size_t)(tokens > 0 ? tokens : 1) * sizeof(double));
    double *q_lat = malloc((size_t)m.lora * sizeof(double));
    double *o_lat = malloc((size_t)m.lora * sizeof(double));
    float *w_row = malloc((size_t)m.lora * sizeof(float));
    if (!inv_freq || !scores || !q_lat || !o_lat || !w_row) {
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", fn);
        goto done;
    }
    double cos_sin_scale = 1, scale = moira_model_config_attention_scale(config);
    TRY(moira_rope_inv_freq(config, inv_freq, &cos_sin_scale));

    TRY(moira_tensor_alloc_f32(1, m.q_dim, &q));
    TRY(moira_tensor_alloc_f32(tokens, m.lora, &cache_c));
    TRY(moira_tensor_alloc_f32(tokens, m.rope, &cache_k_pe));
    TRY(moira_tensor_alloc_f32(1, m.heads * m.v, &attn));
    TRY(moira_tensor_alloc_f32(tokens, m.d, &y));
    const float *xv = x->data;
    float *qv = q.data, *cv = cache_c.data, *kpv = cache_k_pe.data, *av = attn.data;
    for (int64_t t = 0; t < tokens; t++) {
        int32_t pos_t = position_of(positions, t);
        const float *xt = xv + t * m.d;
        /* Extend the cache with this token, then compute its query. */
        TRY(mla_latent(config, &m, weights, xt, 1, cv + t * m.lora, kpv + t * m.rope));
        rope_rotate(kpv + t * m.rope, m.rope, pos_t, inv_freq, cos_sin_scale);
        TRY(mla_query(config, &m, weights, xt, 1, qv));
        for (int64_t h = 0; h < m.heads; h++) {
            float *qh = qv + h * m.q_head;
            rope_rotate(qh + m.nope, m.rope, pos_t, inv_freq, cos_sin_scale);
            for (int64_t l = 0; l < m.lora; l++)
                q_lat[l] = 0;
            for (int64_t i = 0; i < m.nope; i++) {
                moira_tensor_row_to_f32(weights->kv_b_proj, h * m.kv_head + i, w_row);
                for (int64_t l = 0; l < m.lora; l++)
                    q_lat[l] += (double)w_row[l] * qh[i];
            }
            for (int64_t s = 0; s <= t; s++) {
                if (position_of(positions, s) > pos_t) {
                    scores[s] = -INFINITY;
                    continue;
                }
                const float *cs = cv + s * m.lora, *kp = kpv + s * m.rope;
                double dot = 0;
                for (int64_t l = 0; l < m.lora; l++)
                    dot += q_lat[l] * cs[l];
                for (int64_t i = 0; i < m.rope; i++)
                    dot += (double)qh[m.nope + i] * kp[i];
                scores[s] = dot * scale;
            }
            softmax_in_place(scores, t + 1);
            for (int64_t l = 0; l < m.lora; l++)
                o_lat[l] = 0;
            for (int64_t s = 0; s <= t; s++) {
                if (scores[s] == 0) continue;
                for (int64_t l = 0; l < m.lora; l++)
                    o_lat[l] += scores[s] * cv[s * m.lora + l];
            }
            for (int64_t i = 0; i < m.v; i++) {
                moira_tensor_row_to_f32(weights->kv_b_proj, h * m.kv_head + m.nope + i, w_row);
                double dot = 0;
                for (int64_t l = 0; l < m.lora; l++)
                    dot += (double)w_row[l] * o_lat[l];
                av[h * m.v + i] = (float)dot;
            }
        }
        TRY(linear(weights->o_proj, av, 1, m.heads * m.v, (float *)y.data + t * m.d, m.d));
    }
    memcpy(out->data, y.data, (size_t)(tokens * m.d) * sizeof(float));
done:
    moira_tensor_release(&q);
    moira_tensor_release(&cache_c);
    moira_tensor_release(&cache_k_pe);
    moira_tensor_release(&attn);
    moira_tensor_release(&y);
    free(inv_freq);
    free(scores);
    free(q_lat);
    free(o_lat);
    free(w_row);
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * Decoder layer */

/* out = a + b elementwise, rounded once. */
static void add_rows(const float *a, const float *b, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++)
        out[i] = (float)((double)a[i] + (double)b[i]);
}

moira_status_t moira_ref_layer(const moira_model_config_t *config, int64_t layer,
                               const moira_layer_weights_t *weights, const moira_tensor_t *x,
                               const moira_tensor_t *positions, moira_tensor_t *out,
                               bool absorbed) {
    static const char fn[] = "moira_ref_layer";
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "x", x, MOIRA_DTYPE_F32, 2, -1, config->hidden_size));
    int64_t tokens = x->shape[0], d = x->shape[1];
    MOIRA_RETURN_IF_ERROR(expect_tensor(fn, "out", out, MOIRA_DTYPE_F32, 2, tokens, d));
    MOIRA_RETURN_IF_ERROR(expect_vector(fn, "input_layernorm", weights->input_layernorm, d));
    MOIRA_RETURN_IF_ERROR(
        expect_vector(fn, "post_attention_layernorm", weights->post_attention_layernorm, d));
    bool is_moe = moira_model_config_is_moe_layer(config, layer);
    if (weights->is_moe != is_moe)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s: layer %lld is %s in the config but the weights are %s", fn,
                                 (long long)layer, is_moe ? "an MoE layer" : "a dense layer",
                                 weights->is_moe ? "an MoE block" : "a dense MLP");
    if (!is_moe)
        MOIRA_RETURN_IF_ERROR(
            moira_mlp_weights_check(config, config->intermediate_size, &weights->mlp));

    moira_status_t status = MOIRA_OK_STATUS;
    moira_tensor_t normed = {0}, attn = {0}, h = {0}, ffn = {0};
    TRY(moira_tensor_alloc_f32(tokens, d, &normed));
    TRY(moira_tensor_alloc_f32(tokens, d, &attn));
    TRY(moira_tensor_alloc_f32(tokens, d, &h));
    TRY(moira_tensor_alloc_f32(tokens, d, &ffn));
    TRY(moira_ref_rmsnorm(x, weights->input_layernorm, config->rms_norm_eps, &normed));
    if (absorbed)
        TRY(moira_ref_mla_absorbed(config, &weights->mla, &normed, positions, &attn));
    else
        TRY(moira_ref_mla(config, &weights->mla, &normed, positions, &attn));
    add_rows(x->data, attn.data, tokens * d, h.data);
    TRY(moira_ref_rmsnorm(&h, weights->post_attention_layernorm, config->rms_norm_eps, &normed));
    if (is_moe)
        TRY(moira_ref_moe(config, &weights->moe, &normed, &ffn));
    else
        TRY(moira_ref_mlp(&weights->mlp, &normed, &ffn));
    add_rows(h.data, ffn.data, tokens * d, out->data);
done:
    moira_tensor_release(&normed);
    moira_tensor_release(&attn);
    moira_tensor_release(&h);
    moira_tensor_release(&ffn);
    return status;
}
