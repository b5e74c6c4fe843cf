/* MLA attention in the naive prefill form (MLA_ATTENTION) on the blocked online-softmax core
 * (attend.h); the absorbed decode form is kernels_mla_decode.c.
 *
 * Prefill blocks queries (16 tokens of one head) against blocks of keys, so each key row is
 * loaded once per query block instead of once per query. */
#include <math.h>
#include <string.h>

#include "backends/cpu/attend.h"
#include "backends/cpu/kernels_common.h"
#include "backends/cpu/mla_dims.h"

#define Q_BLOCK MOIRA_CPU_ATTEND_QUERIES
/* Cache rows per decode item, at least: 256 rows of DeepSeek's c and k_pe are 576 KB. */
#define MIN_CHUNK_KEYS 256

/* ---- Prefill ---- */

typedef struct prefill_ctx {
    moira_cpu_mla_dims_t d;
    const moira_mla_params_t *params;
    const float *q, *kv, *k_pe;
    int64_t k_pe_stride, tokens, query_blocks;
    const int32_t *positions;
    float *out;
    const moira_cpu_attend_kernels_t *kernels;
    moira_cpu_scratch_t scratch;
} prefill_ctx_t;

typedef struct prefill_visible {
    const int32_t *positions;
    int64_t first_query;
} prefill_visible_t;

/* Key s is visible to query t when pos[s] <= pos[t] (DESIGN.md §4's causal rule). */
static int prefill_visible(const void *raw, int query, int64_t key) {
    const prefill_visible_t *v = raw;
    return v->positions[key] <= v->positions[v->first_query + query];
}

/* One item: one head, Q_BLOCK tokens, all keys. */
static void prefill_items(void *raw, int64_t begin, int64_t end, int thread) {
    const prefill_ctx_t *ctx = raw;
    const moira_cpu_mla_dims_t *d = &ctx->d;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    float *out = moira_cpu_take(&cursor, (size_t)(Q_BLOCK * d->v) * sizeof(float));
    float *scratch =
        moira_cpu_take(&cursor, moira_cpu_attend_scratch_floats(d->nope, d->rope) * sizeof(float));
    for (int64_t item = begin; item < end; item++) {
        int64_t h = item / ctx->query_blocks, t0 = item % ctx->query_blocks * Q_BLOCK;
        moira_cpu_attend_t a = {
            .n_queries = (int)(ctx->tokens - t0 < Q_BLOCK ? ctx->tokens - t0 : Q_BLOCK),
            .k_a = ctx->kv + h * (d->nope + d->v),
            .k_a_stride = d->kv_width,
            .k_b = ctx->k_pe,
            .k_b_stride = ctx->k_pe_stride,
            .v = ctx->kv + h * (d->nope + d->v) + d->nope,
            .v_stride = d->kv_width,
            .dim_a = d->nope,
            .dim_b = d->rope,
            .dim_v = d->v,
            .scale = ctx->params->scale,
        };
        for (int i = 0; i < a.n_queries; i++) {
            a.q_a[i] = ctx->q + (t0 + i) * d->q_width + h * (d->nope + d->rope);
            a.q_b[i] = a.q_a[i] + d->nope;
        }
        moira_cpu_attend_state_t state;
        moira_cpu_attend_begin(&a, &state, out);
        prefill_visible_t visible = {ctx->positions, t0};
        moira_cpu_attend_keys(ctx->kernels, &a, &state, 0, ctx->tokens, prefill_visible, &visible,
                              scratch);
        for (int i = 0; i < a.n_queries; i++) {
            float *dst = ctx->out + (t0 + i) * d->heads * d->v + h * d->v;
            float inv = state.sum[i] > 0 ? (float)(1.0 / state.sum[i]) : 0.0f;
            for (int64_t c = 0; c < d->v; c++)
                dst[c] = out[i * d->v + c] * inv;
        }
    }
}

/* Items are (head, block of 16 tokens): enough items for every thread even for a short prompt,
 * and each key row is read once per 16 queries. */
moira_status_t moira_cpu_mla_attention(const moira_op_launch_t *launch, moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    prefill_ctx_t ctx = {
        .d = moira_cpu_mla_dims(launch->params),
        .params = launch->params,
        .q = moira_cpu_f32(&operands[0]),
        .kv = moira_cpu_f32(&operands[1]),
        .k_pe = moira_cpu_f32(&operands[2]),
        .k_pe_stride = moira_dtensor_row_stride(&operands[2]),
        .positions = moira_cpu_i32(&operands[3]),
        .out = moira_cpu_f32(&operands[4]),
        .tokens = operands[0].shape[0],
        .kernels = moira_cpu_attend_kernels(moira_cpu_isa_best()),
    };
    if (ctx.tokens == 0) return MOIRA_OK_STATUS;
    ctx.query_blocks = (ctx.tokens + Q_BLOCK - 1) / Q_BLOCK;
    size_t scratch =
        MOIRA_CPU_ALIGN((size_t)(Q_BLOCK * ctx.d.v) * sizeof(float)) +
        MOIRA_CPU_ALIGN(moira_cpu_attend_scratch_floats(ctx.d.nope, ctx.d.rope) * sizeof(float));
    MOIRA_RETURN_IF_ERROR(moira_cpu_scratch_alloc(pool, scratch, &ctx.scratch));
    int64_t work = Q_BLOCK * ctx.tokens * (ctx.d.nope + ctx.d.rope + ctx.d.v);
    moira_threadpool_parallel_for(pool, ctx.d.heads * ctx.query_blocks, moira_cpu_grain(work),
                                  prefill_items, &ctx);
    moira_cpu_scratch_free(&ctx.scratch);
    return MOIRA_OK_STATUS;
}
