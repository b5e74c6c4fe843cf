/* The absorbed projections of multi-head latent attention (DESIGN.md §4): fold kv_b_proj's K part
 * into the query (MLA_ABSORB_Q) and apply its V part to the latent outputs (MLA_ABSORB_OUT). The
 * attention itself is in kernels_mla_attention.c. */
#include "backends/cpu/kernels_common.h"

#include <string.h>

#include "backends/cpu/linear_panels.h"
#include "backends/cpu/mla_dims.h"

/* Tokens per MLA_ABSORB_Q work item: each kv_b_proj row is widened once per block. */
#define ABSORB_TOKEN_BLOCK 16

typedef struct absorb_q_ctx {
    moira_cpu_mla_dims_t dims;
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
    const moira_cpu_mla_dims_t *d = &ctx->dims;
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
        .dims = moira_cpu_mla_dims(launch->params),
        .q = moira_cpu_f32(&operands[0]),
        .weight = moira_cpu_weight_view(&operands[1]),
        .q_lat = moira_cpu_f32(&operands[2]),
        .tokens = operands[0].shape[0],
    };
    ctx.token_blocks = (ctx.tokens + ABSORB_TOKEN_BLOCK - 1) / ABSORB_TOKEN_BLOCK;
    const moira_cpu_mla_dims_t *d = &ctx.dims;
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
 * single batched linear so all heads share one parallel loop. On kv_b_proj's packed panels (the
 * same copy the prefill LINEAR uses) when every head's V rows start on a panel, as they do for
 * DeepSeek's 128-wide heads. */
moira_status_t moira_cpu_mla_absorb_out(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    moira_cpu_mla_dims_t d = moira_cpu_mla_dims(launch->params);
    moira_cpu_weight_t weight = moira_cpu_weight_view(&operands[1]);
    moira_cpu_packed_t *packed = NULL;
    if (d.nope % MOIRA_CPU_PANEL == 0 && (d.nope + d.v) % MOIRA_CPU_PANEL == 0)
        moira_cpu_dense_weight_acquire(pool, &operands[1], &packed);
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
        .packed = packed,
    };
    moira_status_t status = moira_cpu_linear_run(pool, &job);
    moira_cpu_packed_release(packed);
    return status;
}
