/* Dense linear layers: the LINEAR op and the batched driver that SWIGLU and MLA reuse. A job
 * whose weight is packed runs on the GEMM tiles (linear_panels.c); this file's row-by-row path is
 * what runs when there is no packed copy (packing ran out of memory, or MLA head slices that do
 * not start on a panel). */
#include "backends/cpu/kernels_common.h"

#include "backends/cpu/linear_panels.h"
#include "backends/cpu/quant_linear.h"

/* A work item is a block of tokens against a block of weight rows, so each weight row is widened
 * once per token block and each token block stays in cache across the weight rows. */
#define TOKEN_BLOCK 32
#define WEIGHT_ROW_BLOCK 16

typedef struct linear_ctx {
    const moira_cpu_linear_job_t *job;
    moira_cpu_scratch_t scratch;
    int64_t token_blocks, row_blocks;
} linear_ctx_t;

/* Items run with the row block fastest: consecutive items of a chunk share their tokens. */
static void linear_items(void *raw, int64_t begin, int64_t end, int thread) {
    const linear_ctx_t *ctx = raw;
    const moira_cpu_linear_job_t *job = ctx->job;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    float *weight_buf = moira_cpu_take(&cursor, (size_t)job->in_features * sizeof(float));
    float *dots = moira_cpu_take(&cursor, TOKEN_BLOCK * sizeof(float));
    const float *x_rows[TOKEN_BLOCK];
    for (int64_t item = begin; item < end; item++) {
        int64_t row_block = item % ctx->row_blocks;
        int64_t token_block = item / ctx->row_blocks % ctx->token_blocks;
        int64_t slice = item / ctx->row_blocks / ctx->token_blocks;
        int64_t t0 = token_block * TOKEN_BLOCK;
        int n_tokens = (int)(job->tokens - t0 < TOKEN_BLOCK ? job->tokens - t0 : TOKEN_BLOCK);
        for (int t = 0; t < n_tokens; t++)
            x_rows[t] = job->x + slice * job->x_batch_step + (t0 + t) * job->x_stride;
        float *y = job->y + slice * job->y_batch_step + t0 * job->y_stride;
        int64_t n0 = row_block * WEIGHT_ROW_BLOCK;
        int64_t n1 =
            n0 + WEIGHT_ROW_BLOCK < job->out_features ? n0 + WEIGHT_ROW_BLOCK : job->out_features;
        for (int64_t n = n0; n < n1; n++) {
            int64_t weight_row = job->weight_row0 + slice * job->weight_batch_rows + n;
            const float *w = moira_cpu_weight_row(job->weight, job->matrix, weight_row, weight_buf);
            moira_cpu_dot_rows(x_rows, n_tokens, w, job->in_features, dots, 1);
            for (int t = 0; t < n_tokens; t++) {
                float *out = &y[t * job->y_stride + n];
                *out = job->beta == 0 ? dots[t] : job->beta * *out + dots[t];
            }
        }
    }
}

/* Packed jobs go to the GEMM tiles (the int8 tiles for MXFP4 and INT8 panels); the others block
 * tokens and weight rows into items and let the pool balance them. */
moira_status_t moira_cpu_linear_run(moira_threadpool_t *pool, const moira_cpu_linear_job_t *job) {
    if (job->packed && moira_dtype_is_quantized(job->packed->panel_dtype))
        return moira_cpu_quant_linear_run(pool, job);
    if (job->packed) return moira_cpu_panel_linear_run(pool, job);
    if (job->batch <= 0 || job->tokens <= 0 || job->out_features <= 0) return MOIRA_OK_STATUS;
    linear_ctx_t ctx = {
        .job = job,
        .token_blocks = (job->tokens + TOKEN_BLOCK - 1) / TOKEN_BLOCK,
        .row_blocks = (job->out_features + WEIGHT_ROW_BLOCK - 1) / WEIGHT_ROW_BLOCK,
    };
    size_t scratch_bytes = MOIRA_CPU_ALIGN((size_t)job->in_features * sizeof(float)) +
                           MOIRA_CPU_ALIGN(TOKEN_BLOCK * sizeof(float));
    MOIRA_RETURN_IF_ERROR(moira_cpu_scratch_alloc(pool, scratch_bytes, &ctx.scratch));
    int64_t tokens_per_item = job->tokens < TOKEN_BLOCK ? job->tokens : TOKEN_BLOCK;
    int64_t rows_per_item =
        job->out_features < WEIGHT_ROW_BLOCK ? job->out_features : WEIGHT_ROW_BLOCK;
    int64_t items = job->batch * ctx.token_blocks * ctx.row_blocks;
    int64_t grain = moira_cpu_grain(tokens_per_item * rows_per_item * job->in_features);
    moira_threadpool_parallel_for(pool, items, grain, linear_items, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}

/* y = beta * y + x W^T, with x and y possibly column slices of wider rows, on the weight's
 * packed panels (made on first use unless the device prepared them at upload). */
moira_status_t moira_cpu_linear(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_linear_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0];
    const moira_dtensor_t *y = &launch->operands[2];
    moira_cpu_weight_t weight = moira_cpu_weight_view(&launch->operands[1]);
    moira_cpu_packed_t *packed = NULL;
    moira_cpu_dense_weight_acquire(pool, &launch->operands[1], &packed);
    moira_cpu_linear_job_t job = {
        .x = moira_cpu_f32(x),
        .x_stride = moira_dtensor_row_stride(x),
        .weight = &weight,
        .y = moira_cpu_f32(y),
        .y_stride = moira_dtensor_row_stride(y),
        .batch = 1,
        .tokens = x->shape[0],
        .out_features = weight.rows,
        .in_features = weight.cols,
        .beta = params->beta,
        .packed = packed,
    };
    moira_status_t status = moira_cpu_linear_run(pool, &job);
    moira_cpu_packed_release(packed);
    return status;
}
