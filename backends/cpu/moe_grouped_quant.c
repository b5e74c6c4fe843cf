/* The grouped expert FFN over quantised panels (moe_grouped_quant.h). Work items and their
 * claiming follow moe_grouped.c: (expert, gate/up pairs) then (expert, down panels), the row loop
 * innermost so a panel is read from memory once per item, items claimed one at a time from an
 * atomic counter so both threads stream the same expert in a decode step. */
#include "backends/cpu/moe_grouped_quant.h"

#include <stdatomic.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels_common.h"

#define PAIRS_PER_ITEM 8
#define PANELS_PER_ITEM 16
#define DECODE_TOKENS 8

typedef moira_cpu_ffn_item_t item_t;

/* Activation rows quantised per block: row i at q + i * blocks * 32, scale/corr + i * blocks. */
typedef struct qrows {
    int8_t *q;
    float *scale;
    int32_t *corr;
    int64_t blocks;
} qrows_t;

typedef struct ctx {
    const moira_cpu_grouped_ffn_t *job;
    moira_cpu_qtile_fn tile;
    int32_t row0;
    qrows_t x, h_q;
    float *h;
    int64_t h_stride;
    const item_t *items;
    int64_t n_items;
    atomic_llong next;
    /* what quantise_rows reads */
    const float *src;
    int64_t src_stride, n;
    qrows_t *dst;
} ctx_t;

/* Points tile row r at quantised row `index`. */
static void set_row(moira_cpu_qtile_t *tile, int r, const qrows_t *rows, int64_t index) {
    tile->xq[r] = rows->q + index * rows->blocks * MOIRA_CPU_QBLOCK;
    tile->xs[r] = rows->scale + index * rows->blocks;
    tile->xc[r] = rows->corr + index * rows->blocks;
}

/* Rows are quantised independently, so the pool takes them in blocks. */
static void quantise_rows(void *raw, int64_t begin, int64_t end, int thread) {
    ctx_t *ctx = raw;
    moira_dtype_t dtype = ctx->job->w1->dtype;
    (void)thread;
    for (int64_t r = begin; r < end; r++)
        moira_cpu_quantize_row(
            ctx->src + r * ctx->src_stride, ctx->n, ctx->dst->blocks, moira_cpu_quant_offset(dtype),
            dtype == MOIRA_DTYPE_MXFP4 ? 0.5f : 1.0f,
            ctx->dst->q + r * ctx->dst->blocks * MOIRA_CPU_QBLOCK,
            ctx->dst->scale + r * ctx->dst->blocks, ctx->dst->corr + r * ctx->dst->blocks);
}

static void quantise(moira_threadpool_t *pool, ctx_t *ctx, const float *src, int64_t rows,
                     int64_t n, int64_t stride, qrows_t *dst) {
    ctx->src = src;
    ctx->src_stride = stride;
    ctx->n = n;
    ctx->dst = dst;
    moira_threadpool_parallel_for(pool, rows, 16, quantise_rows, ctx);
}

/* Runs panels [first, first + count) of the item's matrices over its expert's rows: tiles of up
 * to 4 rows and as many panels as a tile of that many rows takes (moira_cpu_qtile_streams).
 * `pairs`: gate/up pairs of w1/w3 (stage 1, into h), else panels of w2 (stage 2, into ys). */
static void run_item(ctx_t *ctx, const item_t *item, bool pairs) {
    const moira_cpu_grouped_ffn_t *job = ctx->job;
    int32_t row_begin = job->offsets[item->expert], row_end = job->offsets[item->expert + 1];
    for (int32_t row = row_begin; row < row_end; row += MOIRA_CPU_QTILE_ROWS) {
        moira_cpu_qtile_t tile = {
            .blocks = (pairs ? job->w1 : job->w2)->depth,
            .swiglu = pairs,
            .exact_scales = pairs ? job->w1->extreme_scales || job->w3->extreme_scales
                                  : job->w2->extreme_scales,
        };
        tile.rows = row_end - row < MOIRA_CPU_QTILE_ROWS ? row_end - row : MOIRA_CPU_QTILE_ROWS;
        for (int r = 0; r < tile.rows; r++) {
            if (pairs)
                set_row(&tile, r, &ctx->x, job->sorted_rows[row + r] / job->top_k);
            else
                set_row(&tile, r, &ctx->h_q, row + r - ctx->row0);
        }
        int most = moira_cpu_qtile_streams(tile.rows) / (pairs ? 2 : 1);
        for (int32_t p = item->first; p < item->last;) {
            int n = item->last - p >= most ? most : item->last - p >= 2 ? 2 : 1;
            if (pairs) {
                tile.streams = 2 * n;
                for (int q = 0; q < n; q++) {
                    tile.panels[2 * q] = moira_cpu_packed_panel(job->w1, item->expert, p + q);
                    tile.panels[2 * q + 1] = moira_cpu_packed_panel(job->w3, item->expert, p + q);
                }
                tile.out_stride = ctx->h_stride;
                tile.out_cols = (int)(job->inter - 16 * (int64_t)p);
                tile.out = ctx->h + (int64_t)(row - ctx->row0) * ctx->h_stride + 16 * p;
            } else {
                tile.streams = n;
                for (int q = 0; q < n; q++)
                    tile.panels[q] = moira_cpu_packed_panel(job->w2, item->expert, p + q);
                tile.out_stride = job->hidden;
                tile.out_cols = (int)(job->hidden - 16 * (int64_t)p);
                tile.out = job->ys + (int64_t)row * job->hidden + 16 * p;
            }
            ctx->tile(&tile);
            p += n;
        }
    }
}

/* Stage 1: gate/up pairs of one expert per item: h = silu(x W1^T) * (x W3^T). */
static void gate_up_items(void *raw, int64_t begin, int64_t end, int thread) {
    ctx_t *ctx = raw;
    (void)begin, (void)end, (void)thread;
    for (int64_t i; (i = atomic_fetch_add(&ctx->next, 1)) < ctx->n_items;)
        run_item(ctx, &ctx->items[i], true);
}

/* Stage 2: down panels of one expert per item, straight into ys. */
static void down_items(void *raw, int64_t begin, int64_t end, int thread) {
    ctx_t *ctx = raw;
    (void)begin, (void)end, (void)thread;
    for (int64_t i; (i = atomic_fetch_add(&ctx->next, 1)) < ctx->n_items;)
        run_item(ctx, &ctx->items[i], false);
}

/* Carves quantised rows for `rows` rows of `blocks` blocks out of the scratch cursor. */
static qrows_t take_rows(unsigned char **cursor, int64_t rows, int64_t blocks) {
    qrows_t q = {.blocks = blocks};
    q.q = (int8_t *)*cursor;
    *cursor += MOIRA_CPU_ALIGN((size_t)(rows * blocks * MOIRA_CPU_QBLOCK));
    q.scale = (float *)*cursor;
    *cursor += MOIRA_CPU_ALIGN((size_t)(rows * blocks) * sizeof(float));
    q.corr = (int32_t *)*cursor;
    *cursor += MOIRA_CPU_ALIGN((size_t)(rows * blocks) * sizeof(int32_t));
    return q;
}

static size_t rows_bytes(int64_t rows, int64_t blocks) {
    return MOIRA_CPU_ALIGN((size_t)(rows * blocks * MOIRA_CPU_QBLOCK)) +
           2 * MOIRA_CPU_ALIGN((size_t)(rows * blocks) * sizeof(float));
}

/* One scratch block from the queue's arena (x and h quantised, h, items), then x quantised per
 * token, stage 1, h quantised per row, stage 2. */
moira_status_t moira_cpu_grouped_qffn_run(moira_threadpool_t *pool,
                                          const moira_cpu_grouped_ffn_t *job,
                                          moira_cpu_qtile_fn tile) {
    int64_t n_rows = job->offsets[job->n_experts] - job->offsets[0];
    if (n_rows == 0 || job->hidden == 0) return MOIRA_OK_STATUS;
    ctx_t ctx = {
        .job = job, .tile = tile, .row0 = job->offsets[0], .h_stride = job->w1->panels * 16};
    int64_t x_blocks = moira_cpu_quant_blocks(job->hidden), h_blocks = job->w2->depth;
    bool decode = job->tokens <= DECODE_TOKENS;
    int64_t pairs_per_item = decode ? 3 : PAIRS_PER_ITEM;
    int64_t panels_per_item = decode ? 6 : PANELS_PER_ITEM;
    int64_t per1 = (job->w1->panels + pairs_per_item - 1) / pairs_per_item;
    int64_t per2 = (job->w2->panels + panels_per_item - 1) / panels_per_item;
    size_t items_bytes =
        MOIRA_CPU_ALIGN((size_t)(job->n_experts * (per1 > per2 ? per1 : per2)) * sizeof(item_t));
    size_t h_bytes = MOIRA_CPU_ALIGN((size_t)(n_rows * ctx.h_stride) * sizeof(float));
    size_t bytes =
        rows_bytes(job->tokens, x_blocks) + rows_bytes(n_rows, h_blocks) + h_bytes + items_bytes;
    void *scratch = NULL;
    MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(bytes, "moe_ffn", &scratch));
    unsigned char *cursor = scratch;
    ctx.x = take_rows(&cursor, job->tokens, x_blocks);
    ctx.h_q = take_rows(&cursor, n_rows, h_blocks);
    ctx.h = (float *)cursor;
    cursor += h_bytes;
    item_t *items = (item_t *)cursor;
    ctx.items = items;

    int64_t workers = moira_threadpool_size(pool);
    quantise(pool, &ctx, job->x, job->tokens, job->hidden, job->hidden, &ctx.x);
    ctx.n_items = moira_cpu_ffn_items(job, job->w1->panels, pairs_per_item, items);
    atomic_init(&ctx.next, 0);
    moira_threadpool_parallel_for(pool, workers, 1, gate_up_items, &ctx);
    quantise(pool, &ctx, ctx.h, n_rows, job->inter, ctx.h_stride, &ctx.h_q);
    ctx.n_items = moira_cpu_ffn_items(job, job->w2->panels, panels_per_item, items);
    atomic_store(&ctx.next, 0);
    moira_threadpool_parallel_for(pool, workers, 1, down_items, &ctx);
    moira_cpu_temp_free(scratch);
    return MOIRA_OK_STATUS;
}
