/* The router (DESIGN.md §4): scores, bias-steered group and top-k selection, weights, then the
 * capacity limit. Tokens are independent except for the capacity limit, which is first come,
 * first served in token order and so runs after the parallel part, on one thread. */
#include "backends/cpu/kernels_common.h"

#include <math.h>
#include <string.h>

/* Tokens per work item: each gate weight row is widened once per block. */
#define GATE_TOKEN_BLOCK 16

typedef struct gate_ctx {
    const moira_gate_params_t *params;
    const float *x;
    moira_cpu_weight_t weight;
    const float *bias; /* NULL when absent */
    int32_t *topk_idx;
    float *topk_weight;
    float *selection; /* NULL when not wanted */
    int64_t tokens, hidden;
    moira_cpu_scratch_t scratch;
} gate_ctx_t;

/* Picks the `count` largest of `values`, in descending order, a tie going to the lower index
 * (the scan is ascending and only a strictly larger value replaces the best). NaNs never win a
 * comparison, so they are picked last, in index order. */
static void top_indices(const double *values, int n, int count, int *out, unsigned char *taken) {
    for (int i = 0; i < n; i++)
        taken[i] = 0;
    for (int j = 0; j < count; j++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!taken[i] && (best < 0 || values[i] > values[best])) best = i;
        taken[best] = 1;
        out[j] = best;
    }
}

typedef struct gate_work {
    double *scores; /* [E] routing probabilities (orig) */
    double *chosen; /* [E] selection scores, biased and group-masked */
    double *group_scores;
    int *order; /* [E] */
    unsigned char *taken;
} gate_work_t;

/* Turns one token's logits into its top-k indices and weights (and selection scores). Done in
 * double: it is O(E) per token against the O(E*D) of the logits. */
static void route_token(const gate_ctx_t *ctx, const float *logits, const gate_work_t *work,
                        int64_t t) {
    const moira_gate_params_t *p = ctx->params;
    int n_experts = p->n_experts;
    double *scores = work->scores, *chosen = work->chosen;
    if (p->scoring == MOIRA_SCORING_SOFTMAX) {
        double max_logit = -INFINITY, sum = 0;
        for (int e = 0; e < n_experts; e++)
            if (logits[e] > max_logit) max_logit = logits[e];
        for (int e = 0; e < n_experts; e++)
            sum += scores[e] = exp(logits[e] - max_logit);
        for (int e = 0; e < n_experts; e++)
            scores[e] /= sum;
    } else {
        for (int e = 0; e < n_experts; e++)
            scores[e] = 1.0 / (1.0 + exp(-(double)logits[e]));
    }
    for (int e = 0; e < n_experts; e++)
        chosen[e] = scores[e] + (ctx->bias ? ctx->bias[e] : 0.0);

    if (p->n_group > 1) {
        int group_size = n_experts / p->n_group;
        for (int g = 0; g < p->n_group; g++) {
            const double *group = chosen + (int64_t)g * group_size;
            int take = ctx->bias && group_size >= 2 ? 2 : 1;
            top_indices(group, group_size, take, work->order, work->taken);
            double score = group[work->order[0]];
            if (take == 2) score += group[work->order[1]];
            work->group_scores[g] = score;
        }
        top_indices(work->group_scores, p->n_group, p->topk_group, work->order, work->taken);
        /* `taken` now marks the kept groups. */
        for (int e = 0; e < n_experts; e++)
            if (!work->taken[e / group_size]) chosen[e] = -INFINITY;
    }

    int32_t *idx = ctx->topk_idx + t * p->top_k;
    float *weight = ctx->topk_weight + t * p->top_k;
    top_indices(chosen, n_experts, p->top_k, work->order, work->taken);
    double sum = 0;
    for (int j = 0; j < p->top_k; j++)
        sum += scores[work->order[j]];
    double norm = p->norm_topk_prob ? 1.0 / (sum + 1e-20) : 1.0;
    for (int j = 0; j < p->top_k; j++) {
        idx[j] = work->order[j];
        weight[j] = (float)(scores[work->order[j]] * norm * p->routed_scaling_factor);
    }
    if (ctx->selection)
        for (int e = 0; e < n_experts; e++)
            ctx->selection[t * n_experts + e] = (float)chosen[e];
}

/* Logits for a block of tokens (each gate row widened once for the block), then each token's
 * routing from its logits. */
static void gate_blocks(void *raw, int64_t begin, int64_t end, int thread) {
    const gate_ctx_t *ctx = raw;
    int n_experts = ctx->params->n_experts;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    gate_work_t work = {
        .scores = moira_cpu_take(&cursor, (size_t)n_experts * sizeof(double)),
        .chosen = moira_cpu_take(&cursor, (size_t)n_experts * sizeof(double)),
        .group_scores = moira_cpu_take(&cursor, (size_t)ctx->params->n_group * sizeof(double)),
        .order = moira_cpu_take(&cursor, (size_t)n_experts * sizeof(int)),
        .taken = moira_cpu_take(&cursor, (size_t)n_experts),
    };
    float *weight_buf = moira_cpu_take(&cursor, (size_t)ctx->hidden * sizeof(float));
    float *logits = moira_cpu_take(&cursor, (size_t)GATE_TOKEN_BLOCK * n_experts * sizeof(float));
    const float *x_rows[GATE_TOKEN_BLOCK];
    for (int64_t block = begin; block < end; block++) {
        int64_t t0 = block * GATE_TOKEN_BLOCK;
        int n_tokens =
            (int)(ctx->tokens - t0 < GATE_TOKEN_BLOCK ? ctx->tokens - t0 : GATE_TOKEN_BLOCK);
        for (int t = 0; t < n_tokens; t++)
            x_rows[t] = ctx->x + (t0 + t) * ctx->hidden;
        for (int e = 0; e < n_experts; e++) {
            const float *w = moira_cpu_weight_row(&ctx->weight, 0, e, weight_buf);
            moira_cpu_dot_rows(x_rows, n_tokens, w, ctx->hidden, logits + e, n_experts);
        }
        for (int t = 0; t < n_tokens; t++)
            route_token(ctx, logits + (int64_t)t * n_experts, &work, t0 + t);
    }
}

/* First come, first served in token order, then in each token's selection order. */
static moira_status_t apply_capacity(const gate_ctx_t *ctx) {
    int32_t capacity = moira_gate_capacity(ctx->params, ctx->tokens);
    if (capacity == INT32_MAX) return MOIRA_OK_STATUS;
    size_t bytes = (size_t)ctx->params->n_experts * sizeof(int32_t);
    void *temp = NULL;
    MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(bytes, "gate", &temp));
    int32_t *taken = memset(temp, 0, bytes);
    int64_t assignments = ctx->tokens * ctx->params->top_k;
    for (int64_t a = 0; a < assignments; a++) {
        int32_t expert = ctx->topk_idx[a];
        if (taken[expert] < capacity) {
            taken[expert]++;
        } else {
            ctx->topk_idx[a] = -1;
            ctx->topk_weight[a] = 0;
        }
    }
    moira_cpu_temp_free(taken);
    return MOIRA_OK_STATUS;
}

/* Blocks of tokens in parallel; the capacity limit afterwards because it depends on every
 * earlier token. */
moira_status_t moira_cpu_gate(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    gate_ctx_t ctx = {
        .params = launch->params,
        .x = moira_cpu_f32(&operands[0]),
        .weight = moira_cpu_weight_view(&operands[1]),
        .bias = moira_cpu_f32(&operands[2]),
        .topk_idx = moira_cpu_i32(&operands[3]),
        .topk_weight = moira_cpu_f32(&operands[4]),
        .selection = moira_cpu_f32(&operands[5]),
        .tokens = operands[0].shape[0],
        .hidden = operands[0].shape[1],
    };
    size_t n_experts = (size_t)ctx.params->n_experts;
    size_t scratch_bytes = 2 * MOIRA_CPU_ALIGN(n_experts * sizeof(double)) +
                           MOIRA_CPU_ALIGN((size_t)ctx.params->n_group * sizeof(double)) +
                           MOIRA_CPU_ALIGN(n_experts * sizeof(int)) + MOIRA_CPU_ALIGN(n_experts) +
                           MOIRA_CPU_ALIGN((size_t)ctx.hidden * sizeof(float)) +
                           MOIRA_CPU_ALIGN(GATE_TOKEN_BLOCK * n_experts * sizeof(float));
    MOIRA_RETURN_IF_ERROR(moira_cpu_scratch_alloc(pool, scratch_bytes, &ctx.scratch));
    int64_t blocks = (ctx.tokens + GATE_TOKEN_BLOCK - 1) / GATE_TOKEN_BLOCK;
    int64_t tokens_per_block = ctx.tokens < GATE_TOKEN_BLOCK ? ctx.tokens : GATE_TOKEN_BLOCK;
    int64_t work_per_block = tokens_per_block * (int64_t)n_experts * ctx.hidden;
    moira_threadpool_parallel_for(pool, blocks, moira_cpu_grain(work_per_block), gate_blocks, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return apply_capacity(&ctx);
}
