/* Row-wise elementwise ops: RMSNORM and ROPE. Both are split over tokens. Both may write a bf16
 * latent cache (ops/op.h): each value is computed in f32 or better, then rounded once. */
#include "backends/cpu/kernels_common.h"

#include <math.h>
#include <string.h>

#include "runtime/dtype.h"

typedef struct rows_ctx {
    const moira_op_launch_t *launch;
    const float *x;
    float *y;      /* f32 y */
    uint16_t *y16; /* bf16 y; exactly one of y and y16 is set */
    int64_t x_stride, y_stride, cols;
} rows_ctx_t;

/* Element i of row t of y, in y's dtype. */
static inline void put(const rows_ctx_t *ctx, int64_t t, int64_t i, float value) {
    if (ctx->y16)
        ctx->y16[t * ctx->y_stride + i] = moira_f32_to_bf16(value);
    else
        ctx->y[t * ctx->y_stride + i] = value;
}

/* Both ops read operand 0 and write operand 2, row by row. */
static rows_ctx_t rows_ctx_make(const moira_op_launch_t *launch) {
    const moira_dtensor_t *x = &launch->operands[0];
    const moira_dtensor_t *y = &launch->operands[2];
    bool bf16 = y->dtype == MOIRA_DTYPE_BF16;
    rows_ctx_t ctx = {
        .launch = launch,
        .x = moira_cpu_f32(x),
        .y = bf16 ? NULL : moira_cpu_f32(y),
        .y16 = bf16 ? (uint16_t *)moira_cpu_tensor_ptr(y) : NULL,
        .x_stride = moira_dtensor_row_stride(x),
        .y_stride = moira_dtensor_row_stride(y),
        .cols = x->shape[1],
    };
    return ctx;
}

/* The sum of squares is taken in double: it is one pass per row and makes the result exact to
 * f32 rounding however long the row. x is fully read before y is written, so y may be x. */
static void rmsnorm_rows(void *raw, int64_t begin, int64_t end, int thread) {
    const rows_ctx_t *ctx = raw;
    const moira_rmsnorm_params_t *params = ctx->launch->params;
    const float *w = moira_cpu_f32(&ctx->launch->operands[1]);
    (void)thread;
    for (int64_t t = begin; t < end; t++) {
        const float *x = ctx->x + t * ctx->x_stride;
        double sum_squares = 0;
        for (int64_t i = 0; i < ctx->cols; i++)
            sum_squares += (double)x[i] * x[i];
        double inv_rms = 1.0 / sqrt(sum_squares / (double)ctx->cols + params->eps);
        if (ctx->y16) {
            for (int64_t i = 0; i < ctx->cols; i++)
                put(ctx, t, i, (float)(x[i] * inv_rms * w[i]));
            continue;
        }
        float *y = ctx->y + t * ctx->y_stride;
        for (int64_t i = 0; i < ctx->cols; i++)
            y[i] = (float)(x[i] * inv_rms * w[i]);
    }
}

/* Rows are cheap, so the grain keeps short batches on one thread. */
moira_status_t moira_cpu_rmsnorm(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *x = &launch->operands[0];
    rows_ctx_t ctx = rows_ctx_make(launch);
    if (ctx.cols == 0) return MOIRA_OK_STATUS;
    moira_threadpool_parallel_for(pool, x->shape[0], moira_cpu_grain(ctx.cols * 4), rmsnorm_rows,
                                  &ctx);
    return MOIRA_OK_STATUS;
}

/* Angles are formed and rotated in double: positions reach the hundreds of thousands, where an
 * f32 angle would already be off by more than the tolerance. cos and sin are computed once per
 * token and shared by its heads. Elements outside the rope slices are copied when y is not x;
 * each pair is read from x before it is written, so y may be x. */
static void rope_rows(void *raw, int64_t begin, int64_t end, int thread) {
    const rows_ctx_t *ctx = raw;
    const moira_rope_params_t *params = ctx->launch->params;
    const int32_t *positions = moira_cpu_i32(&ctx->launch->operands[1]);
    int pairs = params->rope_dim / 2;
    double cosines[MOIRA_ROPE_MAX_PAIRS], sines[MOIRA_ROPE_MAX_PAIRS];
    (void)thread;
    for (int64_t t = begin; t < end; t++) {
        const float *x = ctx->x + t * ctx->x_stride;
        if (ctx->y16) {
            for (int64_t i = 0; i < ctx->cols; i++)
                put(ctx, t, i, x[i]);
        } else if (ctx->y + t * ctx->y_stride != x) {
            memcpy(ctx->y + t * ctx->y_stride, x, (size_t)ctx->cols * sizeof(float));
        }
        for (int i = 0; i < pairs; i++) {
            double angle = (double)positions[t] * params->inv_freq[i];
            cosines[i] = cos(angle) * params->cos_sin_scale;
            sines[i] = sin(angle) * params->cos_sin_scale;
        }
        for (int h = 0; h < params->n_heads; h++) {
            int64_t first = (int64_t)h * params->head_stride + params->rope_offset;
            for (int i = 0; i < pairs; i++) {
                double even = x[first + 2 * i], odd = x[first + 2 * i + 1];
                put(ctx, t, first + 2 * i, (float)(even * cosines[i] - odd * sines[i]));
                put(ctx, t, first + 2 * i + 1, (float)(even * sines[i] + odd * cosines[i]));
            }
        }
    }
}

/* Split over tokens: each token has its own angle, shared by its heads. */
moira_status_t moira_cpu_rope(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_rope_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0];
    rows_ctx_t ctx = rows_ctx_make(launch);
    int64_t work_per_token = ctx.cols + (int64_t)params->n_heads * params->rope_dim * 4;
    moira_threadpool_parallel_for(pool, x->shape[0], moira_cpu_grain(work_per_token), rope_rows,
                                  &ctx);
    return MOIRA_OK_STATUS;
}
