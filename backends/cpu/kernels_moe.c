/* The expert path: MOE_DISPATCH (sort assignments by expert), MOE_FFN (every expert's SwiGLU on
 * its rows, one launch) and MOE_COMBINE (weighted scatter back to tokens). The dense SWIGLU of
 * shared experts and dense layers is in kernels_swiglu.c. */
#include "backends/cpu/kernels_common.h"

#include "backends/cpu/moe_grouped.h"
#include "backends/cpu/moe_grouped_quant.h"

/* Sorted rows per MOE_FFN work item: each expert weight row is widened once per block. */
#define FFN_ROW_BLOCK 16

/* Routing indices live in device memory and may be garbage; the message says which and where. */
static moira_status_t bad_index(const char *op, const char *what, int64_t at, int64_t value,
                                int64_t limit) {
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: %s[%lld] = %lld outside [0, %lld)",
                             op, what, (long long)at, (long long)value, (long long)limit);
}

/* A stable counting sort: O(T*k + E) on one thread, far cheaper than the FFN it feeds.
 * Indices come from device memory, so an out-of-range one is an error, never a stray write. */
moira_status_t moira_cpu_moe_dispatch(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_moe_dispatch_params_t *params = launch->params;
    const int32_t *topk_idx = moira_cpu_i32(&launch->operands[0]);
    int32_t *offsets = moira_cpu_i32(&launch->operands[1]);
    int32_t *sorted_rows = moira_cpu_i32(&launch->operands[2]);
    int32_t *assignment_pos = moira_cpu_i32(&launch->operands[3]);
    int64_t assignments = moira_dtensor_numel(&launch->operands[0]);
    int n_experts = params->n_experts;
    (void)pool;
    if (assignments > INT32_MAX)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moe_dispatch: %lld assignments overflow int32 rows",
                                 (long long)assignments);
    for (int e = 0; e <= n_experts; e++)
        offsets[e] = 0;
    for (int64_t a = 0; a < assignments; a++) {
        int32_t expert = topk_idx[a];
        if (expert == -1) continue;
        if (expert < 0 || expert >= n_experts)
            return bad_index("moe_dispatch", "topk_idx", a, expert, n_experts);
        offsets[expert + 1]++;
    }
    for (int e = 0; e < n_experts; e++)
        offsets[e + 1] += offsets[e];
    void *temp = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_temp_alloc((size_t)(unsigned)n_experts * sizeof(int32_t), "moe_dispatch", &temp));
    int32_t *next = temp;
    for (int e = 0; e < n_experts; e++)
        next[e] = offsets[e];
    for (int64_t a = 0; a < assignments; a++) {
        int32_t expert = topk_idx[a];
        if (expert == -1) {
            assignment_pos[a] = -1;
            continue;
        }
        int32_t row = next[expert]++;
        sorted_rows[row] = (int32_t)a;
        assignment_pos[a] = row;
    }
    for (int64_t row = offsets[n_experts]; row < assignments; row++)
        sorted_rows[row] = -1;
    moira_cpu_temp_free(next);
    return MOIRA_OK_STATUS;
}

typedef struct ffn_item {
    int32_t expert, row_begin, row_end;
} ffn_item_t;

typedef struct ffn_ctx {
    const float *x;
    moira_cpu_weight_t w1, w3, w2;
    const int32_t *sorted_rows;
    float *ys;
    int64_t hidden, intermediate, top_k;
    const ffn_item_t *items;
    moira_cpu_scratch_t scratch;
} ffn_ctx_t;

/* One expert on up to FFN_ROW_BLOCK of its rows, fused: gate and up projections, SwiGLU, down
 * projection, written straight into the rows' slots of ys. */
static void ffn_items(void *raw, int64_t begin, int64_t end, int thread) {
    const ffn_ctx_t *ctx = raw;
    int64_t hidden = ctx->hidden, inter = ctx->intermediate;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    int64_t widest = hidden > inter ? hidden : inter;
    float *weight_buf = moira_cpu_take(&cursor, (size_t)widest * sizeof(float));
    float *gate = moira_cpu_take(&cursor, (size_t)(FFN_ROW_BLOCK * inter) * sizeof(float));
    float *up = moira_cpu_take(&cursor, (size_t)(FFN_ROW_BLOCK * inter) * sizeof(float));
    const float *rows[FFN_ROW_BLOCK];
    for (int64_t i = begin; i < end; i++) {
        const ffn_item_t *item = &ctx->items[i];
        int n_rows = item->row_end - item->row_begin;
        for (int r = 0; r < n_rows; r++)
            rows[r] = ctx->x + ctx->sorted_rows[item->row_begin + r] / ctx->top_k * hidden;
        for (int64_t j = 0; j < inter; j++) {
            const float *w1 = moira_cpu_weight_row(&ctx->w1, item->expert, j, weight_buf);
            moira_cpu_dot_rows(rows, n_rows, w1, hidden, gate + j, inter);
            const float *w3 = moira_cpu_weight_row(&ctx->w3, item->expert, j, weight_buf);
            moira_cpu_dot_rows(rows, n_rows, w3, hidden, up + j, inter);
        }
        for (int64_t j = 0; j < n_rows * inter; j++)
            gate[j] = moira_cpu_silu(gate[j]) * up[j];
        for (int r = 0; r < n_rows; r++)
            rows[r] = gate + r * inter;
        float *out = ctx->ys + (int64_t)item->row_begin * hidden;
        for (int64_t d = 0; d < hidden; d++) {
            const float *w2 = moira_cpu_weight_row(&ctx->w2, item->expert, d, weight_buf);
            moira_cpu_dot_rows(rows, n_rows, w2, inter, out + d, hidden);
        }
    }
}

/* expert_offsets and sorted_rows come from device memory (normally MOE_DISPATCH); checking them
 * once here lets the parallel part trust every index. */
static moira_status_t check_routing(const int32_t *offsets, int n_experts,
                                    const int32_t *sorted_rows, int64_t assignments) {
    if (offsets[0] < 0) return bad_index("moe_ffn", "expert_offsets", 0, offsets[0], 1);
    for (int e = 0; e < n_experts; e++)
        if (offsets[e + 1] < offsets[e] || offsets[e + 1] > assignments)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "moe_ffn: expert_offsets[%d] = %d is not in [%d, %lld]", e + 1,
                                     offsets[e + 1], offsets[e], (long long)assignments);
    for (int64_t row = offsets[0]; row < offsets[n_experts]; row++)
        if (sorted_rows[row] < 0 || sorted_rows[row] >= assignments)
            return bad_index("moe_ffn", "sorted_rows", row, sorted_rows[row], assignments);
    return MOIRA_OK_STATUS;
}

/* The grouped path over packed weights (moe_grouped.c), when all three weights have a packed
 * form: *out_ran says whether it ran. */
static moira_status_t packed_ffn(const moira_op_launch_t *launch, moira_threadpool_t *pool,
                                 bool *out_ran) {
    const moira_moe_ffn_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    moira_cpu_packed_t *packed[3] = {NULL, NULL, NULL};
    moira_status_t status = MOIRA_OK_STATUS;
    *out_ran = false;
    for (int i = 0; i < 3 && !status; i++)
        status = moira_cpu_packed_acquire(pool, &operands[1 + i], &packed[i]);
    moira_dtype_t dtype = operands[1].dtype;
    /* The int8 tiles take one format for all three; a mix with a quantised weight goes the
     * row-widening way. */
    bool quantized = moira_dtype_is_quantized(operands[1].dtype) ||
                     moira_dtype_is_quantized(operands[2].dtype) ||
                     moira_dtype_is_quantized(operands[3].dtype);
    bool mixed = operands[2].dtype != dtype || operands[3].dtype != dtype;
    if (!status && packed[0] && packed[1] && packed[2] && !(quantized && mixed)) {
        moira_cpu_grouped_ffn_t job = {
            .x = moira_cpu_f32(&operands[0]),
            .tokens = operands[0].shape[0],
            .hidden = operands[0].shape[1],
            .inter = operands[1].shape[1],
            .top_k = params->top_k,
            .w1 = packed[0],
            .w3 = packed[1],
            .w2 = packed[2],
            .n_experts = (int)operands[1].shape[0],
            .offsets = moira_cpu_i32(&operands[4]),
            .sorted_rows = moira_cpu_i32(&operands[5]),
            .ys = moira_cpu_f32(&operands[6]),
            .kernels = moira_cpu_gemm_kernels_for_launch(),
        };
        status = quantized ? moira_cpu_grouped_qffn_run(pool, &job, moira_cpu_qtile_kernel(dtype))
                           : moira_cpu_grouped_ffn_run(pool, &job);
        *out_ran = true;
    }
    for (int i = 0; i < 3; i++)
        moira_cpu_packed_release(packed[i]);
    return status;
}

/* f32 and bf16 weights run grouped over packed panels, MXFP4 and INT8 over their int8 panels
 * where the CPU has the tile (quant_panels.h). Other dtypes are widened row by row:
 * work items are (expert, block of its rows) across all experts in one parallel loop; the pool
 * hands them out dynamically, so busy experts spread over threads. */
moira_status_t moira_cpu_moe_ffn(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_moe_ffn_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    const int32_t *offsets = moira_cpu_i32(&operands[4]);
    int n_experts = (int)operands[1].shape[0];
    MOIRA_RETURN_IF_ERROR(
        check_routing(offsets, n_experts, moira_cpu_i32(&operands[5]), operands[5].shape[0]));
    bool ran = false;
    MOIRA_RETURN_IF_ERROR(packed_ffn(launch, pool, &ran));
    if (ran) return MOIRA_OK_STATUS;
    ffn_ctx_t ctx = {
        .x = moira_cpu_f32(&operands[0]),
        .w1 = moira_cpu_weight_view(&operands[1]),
        .w3 = moira_cpu_weight_view(&operands[2]),
        .w2 = moira_cpu_weight_view(&operands[3]),
        .sorted_rows = moira_cpu_i32(&operands[5]),
        .ys = moira_cpu_f32(&operands[6]),
        .hidden = operands[0].shape[1],
        .intermediate = operands[1].shape[1],
        .top_k = params->top_k,
    };

    int64_t n_items = 0;
    for (int e = 0; e < n_experts; e++)
        n_items += (offsets[e + 1] - offsets[e] + FFN_ROW_BLOCK - 1) / FFN_ROW_BLOCK;
    if (n_items == 0 || ctx.hidden == 0) return MOIRA_OK_STATUS;
    void *temp = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_temp_alloc((size_t)n_items * sizeof(ffn_item_t), "moe_ffn", &temp));
    ffn_item_t *items = temp;
    int64_t n = 0;
    for (int e = 0; e < n_experts; e++)
        for (int32_t row = offsets[e]; row < offsets[e + 1]; row += FFN_ROW_BLOCK)
            items[n++] = (ffn_item_t){e, row,
                                      offsets[e + 1] - row < FFN_ROW_BLOCK ? offsets[e + 1]
                                                                           : row + FFN_ROW_BLOCK};
    ctx.items = items;
    int64_t widest = ctx.hidden > ctx.intermediate ? ctx.hidden : ctx.intermediate;
    size_t scratch_bytes =
        MOIRA_CPU_ALIGN((size_t)widest * sizeof(float)) +
        2 * MOIRA_CPU_ALIGN((size_t)(FFN_ROW_BLOCK * ctx.intermediate) * sizeof(float));
    moira_status_t status = moira_cpu_scratch_alloc(pool, scratch_bytes, &ctx.scratch);
    if (!status) {
        int64_t work_per_item = FFN_ROW_BLOCK * 3 * ctx.hidden * ctx.intermediate;
        moira_threadpool_parallel_for(pool, n_items, moira_cpu_grain(work_per_item), ffn_items,
                                      &ctx);
        moira_cpu_scratch_free(&ctx.scratch);
    }
    moira_cpu_temp_free(items);
    return status;
}

typedef struct combine_ctx {
    const moira_moe_combine_params_t *params;
    const float *ys;
    const int32_t *assignment_pos;
    const float *topk_weight;
    float *y;
    int64_t hidden, top_k;
    moira_cpu_scratch_t scratch;
} combine_ctx_t;

/* Sums a token's expert outputs in selection order, then folds in beta * y once. */
static void combine_tokens(void *raw, int64_t begin, int64_t end, int thread) {
    const combine_ctx_t *ctx = raw;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    float *sum = moira_cpu_take(&cursor, (size_t)ctx->hidden * sizeof(float));
    float beta = ctx->params->beta;
    for (int64_t t = begin; t < end; t++) {
        for (int64_t d = 0; d < ctx->hidden; d++)
            sum[d] = 0;
        for (int64_t j = 0; j < ctx->top_k; j++) {
            int32_t pos = ctx->assignment_pos[t * ctx->top_k + j];
            if (pos < 0) continue;
            moira_cpu_axpy(ctx->topk_weight[t * ctx->top_k + j], ctx->ys + pos * ctx->hidden, sum,
                           ctx->hidden);
        }
        float *y = ctx->y + t * ctx->hidden;
        for (int64_t d = 0; d < ctx->hidden; d++)
            y[d] = beta == 0 ? sum[d] : beta * y[d] + sum[d];
    }
}

/* assignment_pos is checked up front so the parallel part can trust it; tokens are independent. */
moira_status_t moira_cpu_moe_combine(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    combine_ctx_t ctx = {
        .params = launch->params,
        .ys = moira_cpu_f32(&operands[0]),
        .assignment_pos = moira_cpu_i32(&operands[1]),
        .topk_weight = moira_cpu_f32(&operands[2]),
        .y = moira_cpu_f32(&operands[3]),
        .hidden = operands[3].shape[1],
        .top_k = operands[1].shape[1],
    };
    int64_t tokens = operands[1].shape[0];
    int64_t assignments = tokens * ctx.top_k;
    for (int64_t a = 0; a < assignments; a++)
        if (ctx.assignment_pos[a] < -1 || ctx.assignment_pos[a] >= assignments)
            return bad_index("moe_combine", "assignment_pos", a, ctx.assignment_pos[a],
                             assignments);
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_scratch_alloc(pool, (size_t)ctx.hidden * sizeof(float), &ctx.scratch));
    moira_threadpool_parallel_for(pool, tokens, moira_cpu_grain(ctx.top_k * ctx.hidden + 1),
                                  combine_tokens, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}
