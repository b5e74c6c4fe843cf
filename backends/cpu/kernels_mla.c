/* Multi-head latent attention (DESIGN.md §4): the naive prefill attention, and the absorbed
 * decode path (fold kv_b_proj's K part into the query, attend over the latent cache, apply its V
 * part to the result). Attention is split over (token, head) pairs. */
#include "backends/cpu/kernels_common.h"

#include <math.h>
#include <string.h>

/* Tokens per MLA_ABSORB_Q work item: each kv_b_proj row is widened once per block. */
#define ABSORB_TOKEN_BLOCK 16

/* The dimensions every MLA kernel needs, from the shared parameters. */
typedef struct mla_dims {
    int64_t heads, nope, rope, v, latent;
    int64_t q_width;  /* H * (nope + rope) */
    int64_t kv_width; /* H * (nope + v) */
} mla_dims_t;

/* Widened to int64 once, so index arithmetic never overflows int32 on large T * H * L. */
static mla_dims_t mla_dims(const moira_mla_params_t *p) {
    return (mla_dims_t){
        .heads = p->n_heads,
        .nope = p->nope_dim,
        .rope = p->rope_dim,
        .v = p->v_dim,
        .latent = p->kv_lora_rank,
        .q_width = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim),
        .kv_width = (int64_t)p->n_heads * (p->nope_dim + p->v_dim),
    };
}

/* out = sum_s softmax(scores)[s] * values[s] over the keys with finite scores, with the maximum
 * subtracted before exp and the normaliser summed in double. Writes zeros when no key is
 * visible. `values` rows are `value_stride` apart. */
static void softmax_weighted_sum(const double *scores, int64_t n_keys, const float *values,
                                 int64_t value_stride, int64_t width, float *out) {
    double max_score = -INFINITY;
    for (int64_t s = 0; s < n_keys; s++)
        if (scores[s] > max_score) max_score = scores[s];
    for (int64_t j = 0; j < width; j++)
        out[j] = 0;
    if (max_score == -INFINITY) return;
    double sum = 0;
    for (int64_t s = 0; s < n_keys; s++) {
        if (scores[s] == -INFINITY) continue;
        double p = exp(scores[s] - max_score);
        sum += p;
        moira_cpu_axpy((float)p, values + s * value_stride, out, width);
    }
    float inv_sum = (float)(1.0 / sum);
    for (int64_t j = 0; j < width; j++)
        out[j] *= inv_sum;
}

typedef struct attention_ctx {
    const moira_mla_params_t *params;
    mla_dims_t dims;
    const float *q, *kv, *k_pe, *c, *q_lat;
    int64_t k_pe_stride;
    const int32_t *positions;
    float *out;
    int64_t tokens, cache_len;
    moira_cpu_scratch_t scratch;
} attention_ctx_t;

/* Naive attention for one (token, head): key s is visible when pos[s] <= pos[t]. */
static void attention_items(void *raw, int64_t begin, int64_t end, int thread) {
    const attention_ctx_t *ctx = raw;
    const mla_dims_t *d = &ctx->dims;
    double *scores = (double *)moira_cpu_scratch_at(&ctx->scratch, thread);
    for (int64_t item = begin; item < end; item++) {
        int64_t t = item / d->heads, h = item % d->heads;
        const float *q_nope = ctx->q + t * d->q_width + h * (d->nope + d->rope);
        const float *q_pe = q_nope + d->nope;
        const float *kv_head = ctx->kv + h * (d->nope + d->v);
        for (int64_t s = 0; s < ctx->tokens; s++) {
            if (ctx->positions[s] > ctx->positions[t]) {
                scores[s] = -INFINITY;
                continue;
            }
            float score = moira_cpu_dot(q_nope, kv_head + s * d->kv_width, d->nope) +
                          moira_cpu_dot(q_pe, ctx->k_pe + s * ctx->k_pe_stride, d->rope);
            scores[s] = (double)score * ctx->params->scale;
        }
        float *out = ctx->out + t * d->heads * d->v + h * d->v;
        softmax_weighted_sum(scores, ctx->tokens, kv_head + d->nope, d->kv_width, d->v, out);
    }
}

/* One item per (token, head): T * H items balance well even for a single long prompt. */
moira_status_t moira_cpu_mla_attention(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    attention_ctx_t ctx = {
        .params = launch->params,
        .dims = mla_dims(launch->params),
        .q = moira_cpu_f32(&operands[0]),
        .kv = moira_cpu_f32(&operands[1]),
        .k_pe = moira_cpu_f32(&operands[2]),
        .k_pe_stride = moira_dtensor_row_stride(&operands[2]),
        .positions = moira_cpu_i32(&operands[3]),
        .out = moira_cpu_f32(&operands[4]),
        .tokens = operands[0].shape[0],
    };
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_scratch_alloc(pool, (size_t)ctx.tokens * sizeof(double), &ctx.scratch));
    const mla_dims_t *d = &ctx.dims;
    int64_t work_per_item = ctx.tokens * (d->nope + d->rope + d->v);
    moira_threadpool_parallel_for(pool, ctx.tokens * d->heads, moira_cpu_grain(work_per_item),
                                  attention_items, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}

/* Absorbed attention for one (token, head) over cache rows 0 .. min(pos[t], S - 1). */
static void decode_items(void *raw, int64_t begin, int64_t end, int thread) {
    const attention_ctx_t *ctx = raw;
    const mla_dims_t *d = &ctx->dims;
    double *scores = (double *)moira_cpu_scratch_at(&ctx->scratch, thread);
    for (int64_t item = begin; item < end; item++) {
        int64_t t = item / d->heads, h = item % d->heads;
        const float *q_lat = ctx->q_lat + t * d->heads * d->latent + h * d->latent;
        const float *q_pe = ctx->q + t * d->q_width + h * (d->nope + d->rope) + d->nope;
        int64_t visible = (int64_t)ctx->positions[t] + 1;
        if (visible > ctx->cache_len) visible = ctx->cache_len;
        if (visible < 0) visible = 0;
        for (int64_t s = 0; s < visible; s++) {
            float score = moira_cpu_dot(q_lat, ctx->c + s * d->latent, d->latent) +
                          moira_cpu_dot(q_pe, ctx->k_pe + s * d->rope, d->rope);
            scores[s] = (double)score * ctx->params->scale;
        }
        float *out = ctx->out + t * d->heads * d->latent + h * d->latent;
        softmax_weighted_sum(scores, visible, ctx->c, d->latent, d->latent, out);
    }
}

/* Decode has few tokens, so the items are again (token, head) pairs to use every thread. */
moira_status_t moira_cpu_mla_decode_attention(const moira_op_launch_t *launch,
                                              moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    attention_ctx_t ctx = {
        .params = launch->params,
        .dims = mla_dims(launch->params),
        .q_lat = moira_cpu_f32(&operands[0]),
        .q = moira_cpu_f32(&operands[1]),
        .c = moira_cpu_f32(&operands[2]),
        .k_pe = moira_cpu_f32(&operands[3]),
        .positions = moira_cpu_i32(&operands[4]),
        .out = moira_cpu_f32(&operands[5]),
        .tokens = operands[0].shape[0],
        .cache_len = operands[2].shape[0],
    };
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_scratch_alloc(pool, (size_t)ctx.cache_len * sizeof(double), &ctx.scratch));
    const mla_dims_t *d = &ctx.dims;
    int64_t work_per_item = ctx.cache_len * (2 * d->latent + d->rope);
    moira_threadpool_parallel_for(pool, ctx.tokens * d->heads, moira_cpu_grain(work_per_item),
                                  decode_items, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}

typedef struct absorb_q_ctx {
    mla_dims_t dims;
    const float *q;
    moira_cpu_weight_t weight;
    float *q_lat;
    int64_t tokens, token_blocks;
    moira_cpu_scratch_t scratch;
} absorb_q_ctx_t;

/* q_lat[t,h] = sum_i q_nope[t,h,i] * W_UK[h][i]: a sum of kv_b_proj rows, so each widened row is
 * added into every token of the block. */
static void absorb_q_items(void *raw, int64_t begin, int64_t end, int thread) {
    const absorb_q_ctx_t *ctx = raw;
    const mla_dims_t *d = &ctx->dims;
    float *weight_buf = (float *)moira_cpu_scratch_at(&ctx->scratch, thread);
    for (int64_t item = begin; item < end; item++) {
        int64_t h = item / ctx->token_blocks;
        int64_t t0 = item % ctx->token_blocks * ABSORB_TOKEN_BLOCK;
        int64_t t1 = t0 + ABSORB_TOKEN_BLOCK < ctx->tokens ? t0 + ABSORB_TOKEN_BLOCK : ctx->tokens;
        for (int64_t t = t0; t < t1; t++)
            memset(ctx->q_lat + t * d->heads * d->latent + h * d->latent, 0,
                   (size_t)d->latent * sizeof(float));
        for (int64_t i = 0; i < d->nope; i++) {
            int64_t row = h * (d->nope + d->v) + i;
            const float *w = moira_cpu_weight_row(&ctx->weight, 0, row, weight_buf);
            for (int64_t t = t0; t < t1; t++) {
                float q_nope = ctx->q[t * d->q_width + h * (d->nope + d->rope) + i];
                moira_cpu_axpy(q_nope, w, ctx->q_lat + t * d->heads * d->latent + h * d->latent,
                               d->latent);
            }
        }
    }
}

/* Items are (head, token block): heads are independent and each reads its own kv_b_proj rows. */
moira_status_t moira_cpu_mla_absorb_q(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    absorb_q_ctx_t ctx = {
        .dims = mla_dims(launch->params),
        .q = moira_cpu_f32(&operands[0]),
        .weight = moira_cpu_weight_view(&operands[1]),
        .q_lat = moira_cpu_f32(&operands[2]),
        .tokens = operands[0].shape[0],
    };
    ctx.token_blocks = (ctx.tokens + ABSORB_TOKEN_BLOCK - 1) / ABSORB_TOKEN_BLOCK;
    const mla_dims_t *d = &ctx.dims;
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_scratch_alloc(pool, (size_t)d->latent * sizeof(float), &ctx.scratch));
    int64_t tokens_per_item = ctx.tokens < ABSORB_TOKEN_BLOCK ? ctx.tokens : ABSORB_TOKEN_BLOCK;
    int64_t work_per_item = tokens_per_item * d->nope * d->latent;
    moira_threadpool_parallel_for(pool, d->heads * ctx.token_blocks, moira_cpu_grain(work_per_item),
                                  absorb_q_items, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}

/* out[t,h] = W_UV[h] o_lat[t,h]: one linear per head over its V rows of kv_b_proj, run as a
 * single batched linear so all heads share one parallel loop. */
moira_status_t moira_cpu_mla_absorb_out(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    mla_dims_t d = mla_dims(launch->params);
    moira_cpu_weight_t weight = moira_cpu_weight_view(&operands[1]);
    moira_cpu_linear_job_t job = {
        .x = moira_cpu_f32(&operands[0]),
        .x_stride = d.heads * d.latent,
        .x_batch_step = d.latent,
        .weight = &weight,
        .weight_row0 = d.nope,
        .weight_batch_rows = d.nope + d.v,
        .y = moira_cpu_f32(&operands[2]),
        .y_stride = d.heads * d.v,
        .y_batch_step = d.v,
        .batch = d.heads,
        .tokens = operands[0].shape[0],
        .out_features = d.v,
        .in_features = d.latent,
    };
    return moira_cpu_linear_run(pool, &job);
}
