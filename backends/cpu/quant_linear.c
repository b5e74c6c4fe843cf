/* Dense projections on quantised panels (quant_linear.h). Work items are blocks of panels (or
 * gate/up pairs), every token of the launch against them with the token loop innermost, so a
 * panel is read from memory once per item, as in the grouped expert FFN (moe_grouped_quant.c). */
#include "backends/cpu/quant_linear.h"

#include "backends/cpu/packed_weights.h"
#include "backends/cpu/quant_panels.h"

/* Up to 8 tokens share one pass over the panels; then small items keep both threads busy. */
#define DECODE_TOKENS 8

typedef struct qlinear {
    const moira_cpu_linear_job_t *job;
    moira_cpu_qtile_fn tile;
    bool pairs; /* SWIGLU's fused gate/up: panels of packed and packed_up side by side */
    int64_t blocks;
    int8_t *q; /* [tokens, blocks * 32] */
    float *scale;
    int32_t *corr; /* [tokens, blocks] each */
    float *out;    /* where tile sums go: y itself, or a [tokens, out_stride] temporary */
    int64_t out_stride, per_item;
} qlinear_t;

/* Tokens are quantised independently. */
static void quantise_tokens(void *raw, int64_t begin, int64_t end, int thread) {
    const qlinear_t *ctx = raw;
    const moira_cpu_linear_job_t *job = ctx->job;
    moira_dtype_t dtype = job->packed->panel_dtype;
    (void)thread;
    for (int64_t t = begin; t < end; t++)
        moira_cpu_quantize_row(job->x + t * job->x_stride, job->in_features, ctx->blocks,
                               moira_cpu_quant_offset(dtype),
                               dtype == MOIRA_DTYPE_MXFP4 ? 0.5f : 1.0f,
                               ctx->q + t * ctx->blocks * MOIRA_CPU_QBLOCK,
                               ctx->scale + t * ctx->blocks, ctx->corr + t * ctx->blocks);
}

/* One item: panels (or pairs) [first, last) against every token, in tiles of up to 4 tokens and
 * as many panels as a tile of that many tokens takes. */
static void run_items(void *raw, int64_t begin, int64_t end, int thread) {
    const qlinear_t *ctx = raw;
    const moira_cpu_linear_job_t *job = ctx->job;
    (void)thread;
    for (int64_t item = begin; item < end; item++) {
        int64_t first = item * ctx->per_item, last = first + ctx->per_item;
        if (last > job->packed->panels) last = job->packed->panels;
        for (int64_t t0 = 0; t0 < job->tokens; t0 += MOIRA_CPU_QTILE_ROWS) {
            moira_cpu_qtile_t tile = {
                .blocks = ctx->blocks,
                .swiglu = ctx->pairs,
                .exact_scales =
                    job->packed->extreme_scales || (ctx->pairs && job->packed_up->extreme_scales),
            };
            tile.rows = (int)(job->tokens - t0 < MOIRA_CPU_QTILE_ROWS ? job->tokens - t0
                                                                      : MOIRA_CPU_QTILE_ROWS);
            for (int r = 0; r < tile.rows; r++) {
                tile.xq[r] = ctx->q + (t0 + r) * ctx->blocks * MOIRA_CPU_QBLOCK;
                tile.xs[r] = ctx->scale + (t0 + r) * ctx->blocks;
                tile.xc[r] = ctx->corr + (t0 + r) * ctx->blocks;
            }
            int most = moira_cpu_qtile_streams(tile.rows) / (ctx->pairs ? 2 : 1);
            for (int64_t p = first; p < last;) {
                int n = last - p >= most ? most : last - p >= 2 ? 2 : 1;
                tile.streams = ctx->pairs ? 2 * n : n;
                for (int s = 0; s < n; s++) {
                    if (ctx->pairs) {
                        tile.panels[2 * s] = moira_cpu_packed_panel(job->packed, 0, p + s);
                        tile.panels[2 * s + 1] = moira_cpu_packed_panel(job->packed_up, 0, p + s);
                    } else {
                        tile.panels[s] = moira_cpu_packed_panel(job->packed, 0, p + s);
                    }
                }
                tile.out = ctx->out + t0 * ctx->out_stride + 16 * p;
                tile.out_stride = ctx->out_stride;
                tile.out_cols = (int)(job->out_features - 16 * p);
                ctx->tile(&tile);
                p += n;
            }
        }
    }
}

/* y = beta * y + the temporary's sums, token by token. */
static void accumulate(const qlinear_t *ctx) {
    const moira_cpu_linear_job_t *job = ctx->job;
    for (int64_t t = 0; t < job->tokens; t++) {
        float *y = job->y + t * job->y_stride;
        const float *sum = ctx->out + t * ctx->out_stride;
        for (int64_t n = 0; n < job->out_features; n++)
            y[n] = job->beta * y[n] + sum[n];
    }
}

/* Quantises the tokens, runs the items, and folds in beta * y when y is read (the tiles only
 * store, so sums then go to a temporary first). */
moira_status_t moira_cpu_quant_linear_run(moira_threadpool_t *pool,
                                          const moira_cpu_linear_job_t *job) {
    if (job->batch != 1 || job->matrix != 0 || job->weight_row0 != 0)
        return moira_status_make(MOIRA_CODE_INTERNAL,
                                 "cpu: a batched or offset linear over quantised weights");
    if (job->tokens <= 0 || job->out_features <= 0) return MOIRA_OK_STATUS;
    qlinear_t ctx = {
        .job = job,
        .tile = moira_cpu_qtile_kernel(job->packed->panel_dtype),
        .pairs = job->packed_up != NULL,
        .blocks = job->packed->depth,
    };
    if (!ctx.tile)
        return moira_status_make(MOIRA_CODE_INTERNAL, "cpu: quantised panels without their tile");
    bool direct = ctx.pairs || job->beta == 0;
    size_t q_bytes = MOIRA_CPU_ALIGN((size_t)(job->tokens * ctx.blocks * MOIRA_CPU_QBLOCK));
    size_t s_bytes = MOIRA_CPU_ALIGN((size_t)(job->tokens * ctx.blocks) * sizeof(float));
    size_t out_bytes =
        direct ? 0 : MOIRA_CPU_ALIGN((size_t)(job->tokens * job->out_features) * sizeof(float));
    void *temp = NULL;
    MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(q_bytes + 2 * s_bytes + out_bytes, "linear", &temp));
    unsigned char *cursor = temp;
    ctx.q = (int8_t *)cursor;
    ctx.scale = (float *)(cursor + q_bytes);
    ctx.corr = (int32_t *)(cursor + q_bytes + s_bytes);
    ctx.out = direct ? job->y : (float *)(cursor + q_bytes + 2 * s_bytes);
    ctx.out_stride = direct ? job->y_stride : job->out_features;
    moira_threadpool_parallel_for(pool, job->tokens, 16, quantise_tokens, &ctx);
    bool decode = job->tokens <= DECODE_TOKENS;
    ctx.per_item = ctx.pairs ? (decode ? 3 : 8) : (decode ? 6 : 16);
    int64_t items = (job->packed->panels + ctx.per_item - 1) / ctx.per_item;
    moira_threadpool_parallel_for(pool, items, 1, run_items, &ctx);
    if (!direct) accumulate(&ctx);
    moira_cpu_temp_free(temp);
    return MOIRA_OK_STATUS;
}
