/* MLA attention on the blocked online-softmax core (attend.h): the naive prefill form
 * (MLA_ATTENTION) and the absorbed decode form over the latent cache (MLA_DECODE_ATTENTION).
 *
 * Decode streams the cache: every head of a token is one query of a block, so each cache row
 * (c and k_pe) is loaded once for all heads, scored, and immediately folded into the heads'
 * weighted sums of c while it is still in cache. The cache is split into chunks across threads
 * (each with its own running max, sum and output), merged at the end.
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

/* ---- Absorbed decode ---- */

typedef struct decode_ctx {
    moira_cpu_mla_dims_t d;
    const moira_mla_params_t *params;
    const float *q_lat, *q, *c, *k_pe;
    const int32_t *positions;
    float *out;
    int64_t tokens, cache_len, head_blocks, chunks, chunk_keys;
    /* Per item (token, head block, chunk): Q_BLOCK running maxima, sums and outputs. */
    float *part_max;
    double *part_sum;
    float *part_out;
    const moira_cpu_attend_kernels_t *kernels;
    moira_cpu_scratch_t scratch;
} decode_ctx_t;

/* Cache rows token t sees: positions 0 .. pos[t], within the cache's valid rows. */
static int64_t visible_rows(const decode_ctx_t *ctx, int64_t t) {
    int64_t visible = (int64_t)ctx->positions[t] + 1;
    if (visible > ctx->cache_len) visible = ctx->cache_len;
    return visible < 0 ? 0 : visible;
}

/* One item folds one chunk of the cache into the running softmax of one block of heads of one
 * token; chunks are merged afterwards, so threads never share a state. */
static void decode_items(void *raw, int64_t begin, int64_t end, int thread) {
    const decode_ctx_t *ctx = raw;
    const moira_cpu_mla_dims_t *d = &ctx->d;
    float *scratch = (float *)moira_cpu_scratch_at(&ctx->scratch, thread);
    for (int64_t item = begin; item < end; item++) {
        int64_t chunk = item % ctx->chunks, rest = item / ctx->chunks;
        int64_t hb = rest % ctx->head_blocks, t = rest / ctx->head_blocks;
        int64_t h0 = hb * Q_BLOCK;
        moira_cpu_attend_t a = {
            .n_queries = (int)(d->heads - h0 < Q_BLOCK ? d->heads - h0 : Q_BLOCK),
            .k_a = ctx->c,
            .k_a_stride = d->latent,
            .k_b = ctx->k_pe,
            .k_b_stride = d->rope,
            .v = ctx->c,
            .v_stride = d->latent,
            .dim_a = d->latent,
            .dim_b = d->rope,
            .dim_v = d->latent,
            .scale = ctx->params->scale,
        };
        for (int i = 0; i < a.n_queries; i++) {
            a.q_a[i] = ctx->q_lat + t * d->heads * d->latent + (h0 + i) * d->latent;
            a.q_b[i] = ctx->q + t * d->q_width + (h0 + i) * (d->nope + d->rope) + d->nope;
        }
        moira_cpu_attend_state_t state;
        moira_cpu_attend_begin(&a, &state, ctx->part_out + item * Q_BLOCK * d->latent);
        int64_t first = chunk * ctx->chunk_keys, last = first + ctx->chunk_keys;
        if (last > visible_rows(ctx, t)) last = visible_rows(ctx, t);
        if (last > first)
            moira_cpu_attend_keys(ctx->kernels, &a, &state, first, last - first, NULL, NULL,
                                  scratch);
        for (int i = 0; i < Q_BLOCK; i++) {
            ctx->part_max[item * Q_BLOCK + i] = state.max[i];
            ctx->part_sum[item * Q_BLOCK + i] = state.sum[i];
        }
    }
}

/* out[t, h] = sum over chunks of out_chunk * exp(max_chunk - max) / sum of the rescaled sums;
 * zeros when the token sees no row. */
static void merge_items(void *raw, int64_t begin, int64_t end, int thread) {
    const decode_ctx_t *ctx = raw;
    const moira_cpu_mla_dims_t *d = &ctx->d;
    (void)thread;
    for (int64_t th = begin; th < end; th++) {
        int64_t t = th / d->heads, h = th % d->heads;
        int64_t first_item = (t * ctx->head_blocks + h / Q_BLOCK) * ctx->chunks;
        int lane = (int)(h % Q_BLOCK);
        float max = -INFINITY;
        for (int64_t c = 0; c < ctx->chunks; c++) {
            float m = ctx->part_max[(first_item + c) * Q_BLOCK + lane];
            max = m > max ? m : max;
        }
        float *dst = ctx->out + t * d->heads * d->latent + h * d->latent;
        memset(dst, 0, (size_t)d->latent * sizeof(float));
        if (max == -INFINITY) continue;
        double sum = 0;
        for (int64_t c = 0; c < ctx->chunks; c++) {
            int64_t item = first_item + c;
            float m = ctx->part_max[item * Q_BLOCK + lane];
            if (m == -INFINITY) continue;
            float scale = expf(m - max);
            sum += ctx->part_sum[item * Q_BLOCK + lane] * scale;
            moira_cpu_axpy(scale, ctx->part_out + (item * Q_BLOCK + lane) * d->latent, dst,
                           d->latent);
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < d->latent; j++)
            dst[j] *= inv;
    }
}

/* Items (token, block of 16 heads, chunk of cache rows): enough chunks that every thread gets
 * several even for one token, each at least MIN_CHUNK_KEYS rows. The partial results are sized
 * for the most chunks any cache length gives this many tokens, so the scratch a decode step needs
 * does not change as the cache grows. */
moira_status_t moira_cpu_mla_decode_attention(const moira_op_launch_t *launch,
                                              moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    decode_ctx_t ctx = {
        .d = moira_cpu_mla_dims(launch->params),
        .params = launch->params,
        .q_lat = moira_cpu_f32(&operands[0]),
        .q = moira_cpu_f32(&operands[1]),
        .c = moira_cpu_f32(&operands[2]),
        .k_pe = moira_cpu_f32(&operands[3]),
        .positions = moira_cpu_i32(&operands[4]),
        .out = moira_cpu_f32(&operands[5]),
        .tokens = operands[0].shape[0],
        .cache_len = operands[2].shape[0],
        .kernels = moira_cpu_attend_kernels(moira_cpu_isa_best()),
    };
    if (ctx.tokens == 0) return MOIRA_OK_STATUS;
    ctx.head_blocks = (ctx.d.heads + Q_BLOCK - 1) / Q_BLOCK;
    int64_t wanted = 8 * moira_threadpool_size(pool) / (ctx.tokens * ctx.head_blocks);
    int64_t keys = wanted > 1 ? (ctx.cache_len + wanted - 1) / wanted : ctx.cache_len;
    keys = (keys + MOIRA_CPU_ATTEND_KEYS - 1) / MOIRA_CPU_ATTEND_KEYS * MOIRA_CPU_ATTEND_KEYS;
    ctx.chunk_keys = keys > MIN_CHUNK_KEYS ? keys : MIN_CHUNK_KEYS;
    ctx.chunks = ctx.cache_len > 0 ? (ctx.cache_len + ctx.chunk_keys - 1) / ctx.chunk_keys : 1;
    int64_t items = ctx.tokens * ctx.head_blocks * ctx.chunks;
    /* chunk_keys >= cache_len / wanted, so chunks <= wanted (and 1 when wanted <= 1). */
    int64_t most_items = ctx.tokens * ctx.head_blocks * (wanted > 1 ? wanted : 1);
    size_t lanes = (size_t)((most_items > items ? most_items : items) * Q_BLOCK);
    size_t max_bytes = MOIRA_CPU_ALIGN(lanes * sizeof(float));
    size_t sum_bytes = MOIRA_CPU_ALIGN(lanes * sizeof(double));
    void *parts = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_cpu_temp_alloc(max_bytes + sum_bytes + lanes * (size_t)ctx.d.latent * sizeof(float),
                             "mla_decode_attention", &parts));
    ctx.part_max = parts;
    ctx.part_sum = (double *)((unsigned char *)parts + max_bytes);
    ctx.part_out = (float *)((unsigned char *)parts + max_bytes + sum_bytes);
    moira_status_t status = moira_cpu_scratch_alloc(
        pool, moira_cpu_attend_scratch_floats(ctx.d.latent, ctx.d.rope) * sizeof(float),
        &ctx.scratch);
    if (!status) {
        moira_threadpool_parallel_for(pool, items, 1, decode_items, &ctx);
        moira_threadpool_parallel_for(pool, ctx.tokens * ctx.d.heads,
                                      moira_cpu_grain(ctx.chunks * ctx.d.latent), merge_items,
                                      &ctx);
        moira_cpu_scratch_free(&ctx.scratch);
    }
    moira_cpu_temp_free(parts);
    return status;
}
