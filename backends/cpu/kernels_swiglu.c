/* The dense SwiGLU MLP (SWIGLU: shared experts and dense layers, DESIGN.md §4):
 * y = beta * y + W2 (silu(W1 x) * (W3 x)).
 *
 * On packed weights it is two GEMMs per chunk of tokens: the fused gate/up projection (gate and
 * up panels side by side in one tile, silu(gate) * up in registers, h written once) and the down
 * projection accumulating into y. Without packed gate and up of one panel type (packing ran out
 * of memory, or W1 and W3 differ in dtype) the projections run one by one. Both spread even one
 * decode token over every thread by weight panels or rows. */
#include "backends/cpu/kernels_common.h"

#include "backends/cpu/linear_panels.h"

/* Tokens per chunk: bounds h (and the separate path's gate and up) to 256 x I floats. */
#define TOKEN_CHUNK 256

typedef struct swiglu_run {
    const float *x;
    float *y;
    int64_t hidden, inter;
    float beta;
    moira_cpu_weight_t w1, w3, w2;
    moira_cpu_packed_t *packed[3]; /* W1, W3, W2, each NULL when it has no packed form */
} swiglu_run_t;

/* A projection of n tokens through one weight (packed or not; with `packed_up`, the fused gate/up
 * projection of W1 = w and W3); rows of x and y are contiguous. */
static moira_status_t project(moira_threadpool_t *pool, const float *x, const moira_cpu_weight_t *w,
                              const moira_cpu_packed_t *packed, const moira_cpu_packed_t *packed_up,
                              float *y, int64_t n, float beta) {
    moira_cpu_linear_job_t job = {
        .x = x,
        .x_stride = w->cols,
        .weight = w,
        .y = y,
        .y_stride = w->rows,
        .batch = 1,
        .tokens = n,
        .out_features = w->rows,
        .in_features = w->cols,
        .beta = beta,
        .packed = packed,
        .packed_up = packed_up,
    };
    return moira_cpu_linear_run(pool, &job);
}

/* Tokens [t0, t0 + n): h = silu(x W1^T) * (x W3^T) in one pass over the paired panels, then
 * y = beta * y + h W2^T. */
static moira_status_t fused_chunk(moira_threadpool_t *pool, const swiglu_run_t *run, int64_t t0,
                                  int64_t n, float *h) {
    MOIRA_RETURN_IF_ERROR(project(pool, run->x + t0 * run->hidden, &run->w1, run->packed[0],
                                  run->packed[1], h, n, 0.0f));
    return project(pool, h, &run->w2, run->packed[2], NULL, run->y + t0 * run->hidden, n,
                   run->beta);
}

/* The same with gate and up projected separately and combined in between. */
static moira_status_t separate_chunk(moira_threadpool_t *pool, const swiglu_run_t *run, int64_t t0,
                                     int64_t n, float *gate, float *up) {
    const float *x = run->x + t0 * run->hidden;
    MOIRA_RETURN_IF_ERROR(project(pool, x, &run->w1, run->packed[0], NULL, gate, n, 0.0f));
    MOIRA_RETURN_IF_ERROR(project(pool, x, &run->w3, run->packed[1], NULL, up, n, 0.0f));
    for (int64_t i = 0; i < n * run->inter; i++)
        gate[i] = moira_cpu_silu(gate[i]) * up[i];
    return project(pool, gate, &run->w2, run->packed[2], NULL, run->y + t0 * run->hidden, n,
                   run->beta);
}

/* Packs (or finds) the three weights, then chunk by chunk through the fused or separate path. */
moira_status_t moira_cpu_swiglu(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_swiglu_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    int64_t tokens = operands[0].shape[0];
    if (tokens == 0) return MOIRA_OK_STATUS;
    swiglu_run_t run = {
        .x = moira_cpu_f32(&operands[0]),
        .y = moira_cpu_f32(&operands[4]),
        .hidden = operands[0].shape[1],
        .beta = params->beta,
        .w1 = moira_cpu_weight_view(&operands[1]),
        .w3 = moira_cpu_weight_view(&operands[2]),
        .w2 = moira_cpu_weight_view(&operands[3]),
    };
    run.inter = run.w1.rows;
    for (int i = 0; i < 3; i++)
        moira_cpu_dense_weight_acquire(pool, &operands[1 + i], &run.packed[i]);
    bool fused =
        run.packed[0] && run.packed[1] && run.packed[0]->panel_dtype == run.packed[1]->panel_dtype;
    int64_t chunk = tokens < TOKEN_CHUNK ? tokens : TOKEN_CHUNK;
    size_t chunk_floats = (size_t)(chunk * run.inter);
    void *temp = NULL;
    moira_status_t status =
        moira_cpu_temp_alloc((fused ? 1 : 2) * chunk_floats * sizeof(float), "swiglu", &temp);
    for (int64_t t0 = 0; t0 < tokens && !status; t0 += chunk) {
        int64_t n = tokens - t0 < chunk ? tokens - t0 : chunk;
        status = fused ? fused_chunk(pool, &run, t0, n, temp)
                       : separate_chunk(pool, &run, t0, n, temp, (float *)temp + chunk_floats);
    }
    moira_cpu_temp_free(temp);
    for (int i = 0; i < 3; i++)
        moira_cpu_packed_release(run.packed[i]);
    return status;
}
