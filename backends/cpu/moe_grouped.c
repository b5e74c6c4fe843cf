/* The grouped expert FFN over packed panels (moe_grouped.h).
 *
 * Stage 1 computes h = silu(x W1^T) * (x W3^T) for every sorted row: its tiles take gate and up
 * panels in pairs, so both projections share each activation load and the SwiGLU happens in
 * registers. Stage 2 computes ys = h W2^T. Within an item the loop over row blocks is innermost,
 * so a group of weight panels is read from memory once and from cache for every further block of
 * the expert's rows: decode streams each weight once, large batches reuse it from L2.
 *
 * bf16 weights on an AVX512_BF16 CPU read activations as bf16 high and low parts (gemm.h), made
 * once per token for x and once per row for h. */
#include "backends/cpu/moe_grouped.h"

#include "backends/cpu/kernels_common.h"

#include <stdatomic.h>
#include <string.h>

/* Gate/up pairs per stage-1 item and down panels per stage-2 item: a few hundred KB of weights,
 * several tiles wide, and enough items that two threads balance even for one decode token. */
#define PAIRS_PER_ITEM 8
#define PANELS_PER_ITEM 16
/* Up to this many tokens a launch is a decode step: its items are one tile each (two gate/up
 * pairs, four down panels), claimed one at a time, so both threads stream the same expert's
 * panels at once and the last item leaves the other thread idle for one tile (about 10 us at
 * DeepSeek-V2-Lite's shape), not for a pool chunk of an eighth of the stage. */
#define DECODE_TOKENS 8

typedef moira_cpu_ffn_item_t item_t;

/* Activations as a tile reads them: f32 rows, or bf16 high/low planes. */
typedef struct rows {
    const float *f32;
    const uint16_t *hi, *lo;
    int64_t stride; /* elements */
} rows_t;

typedef struct ctx {
    const moira_cpu_grouped_ffn_t *job;
    bool split;
    int32_t row0;     /* offsets[0]: h row i is sorted row row0 + i */
    rows_t x;         /* per token */
    float *h;         /* [rows, h_stride] */
    rows_t h_rows;    /* what stage 2 reads: h itself or its split */
    int64_t h_stride; /* w1 panels * 16: whole panels, the padding columns computed as 0 */
    const item_t *items;
    int64_t n_items;
    atomic_llong next; /* the next unclaimed item of the stage */
} ctx_t;

/* Points tile row r at activation row `index`, in whichever form the tile reads. */
static void set_row(moira_cpu_tile_t *tile, int r, const rows_t *rows, int64_t index) {
    if (rows->f32) {
        tile->x[r] = rows->f32 + index * rows->stride;
    } else {
        tile->x[r] = rows->hi + index * rows->stride;
        tile->x_lo[r] = rows->lo + index * rows->stride;
    }
}

/* The tile of the weights' dtype from the launch's instruction-set table. */
static moira_cpu_tile_fn tile_fn(const ctx_t *ctx, const moira_cpu_packed_t *packed) {
    return packed->dtype == MOIRA_DTYPE_F32 ? ctx->job->kernels->f32 : ctx->job->kernels->bf16;
}

/* Stage 1: pairs [first, last) of one expert, two pairs (four panels) per tile. */
static void gate_up_items(void *raw, int64_t begin, int64_t end, int thread) {
    ctx_t *ctx = raw;
    const moira_cpu_grouped_ffn_t *job = ctx->job;
    moira_cpu_tile_fn run = tile_fn(ctx, job->w1);
    (void)begin, (void)end, (void)thread;
    for (int64_t i; (i = atomic_fetch_add(&ctx->next, 1)) < ctx->n_items;) {
        const item_t *item = &ctx->items[i];
        int32_t row_begin = job->offsets[item->expert], row_end = job->offsets[item->expert + 1];
        for (int32_t pair = item->first; pair < item->last; pair += 2) {
            moira_cpu_tile_t tile = {.depth = job->w1->depth,
                                     .out_stride = ctx->h_stride,
                                     .out_cols = (int)(ctx->h_stride - 16 * (int64_t)pair),
                                     .epilogue = MOIRA_CPU_EPILOGUE_SWIGLU};
            int pairs = item->last - pair < 2 ? 1 : 2;
            tile.streams = 2 * pairs;
            for (int q = 0; q < pairs; q++) {
                tile.panels[2 * q] = moira_cpu_packed_panel(job->w1, item->expert, pair + q);
                tile.panels[2 * q + 1] = moira_cpu_packed_panel(job->w3, item->expert, pair + q);
            }
            for (int32_t row = row_begin; row < row_end; row += MOIRA_CPU_TILE_ROWS) {
                tile.rows =
                    row_end - row < MOIRA_CPU_TILE_ROWS ? row_end - row : MOIRA_CPU_TILE_ROWS;
                for (int r = 0; r < tile.rows; r++)
                    set_row(&tile, r, &ctx->x, job->sorted_rows[row + r] / job->top_k);
                tile.out = ctx->h + (int64_t)(row - ctx->row0) * ctx->h_stride + 16 * pair;
                run(&tile);
            }
        }
    }
}

/* Stage 2: down panels [first, last) of one expert, four per tile, straight into ys. */
static void down_items(void *raw, int64_t begin, int64_t end, int thread) {
    ctx_t *ctx = raw;
    const moira_cpu_grouped_ffn_t *job = ctx->job;
    moira_cpu_tile_fn run = tile_fn(ctx, job->w2);
    (void)begin, (void)end, (void)thread;
    for (int64_t i; (i = atomic_fetch_add(&ctx->next, 1)) < ctx->n_items;) {
        const item_t *item = &ctx->items[i];
        int32_t row_begin = job->offsets[item->expert], row_end = job->offsets[item->expert + 1];
        for (int32_t panel = item->first; panel < item->last; panel += MOIRA_CPU_TILE_STREAMS) {
            moira_cpu_tile_t tile = {.depth = job->w2->depth,
                                     .out_stride = job->hidden,
                                     .out_cols = (int)(job->hidden - 16 * (int64_t)panel),
                                     .epilogue = MOIRA_CPU_EPILOGUE_STORE};
            tile.streams = item->last - panel < MOIRA_CPU_TILE_STREAMS ? item->last - panel
                                                                       : MOIRA_CPU_TILE_STREAMS;
            for (int s = 0; s < tile.streams; s++)
                tile.panels[s] = moira_cpu_packed_panel(job->w2, item->expert, panel + s);
            for (int32_t row = row_begin; row < row_end; row += MOIRA_CPU_TILE_ROWS) {
                tile.rows =
                    row_end - row < MOIRA_CPU_TILE_ROWS ? row_end - row : MOIRA_CPU_TILE_ROWS;
                for (int r = 0; r < tile.rows; r++)
                    set_row(&tile, r, &ctx->h_rows, row + r - ctx->row0);
                tile.out = job->ys + (int64_t)row * job->hidden + 16 * panel;
                run(&tile);
            }
        }
    }
}

typedef struct split_ctx {
    const float *src;
    int64_t src_stride, n;
    uint16_t *hi, *lo;
    int64_t dst_stride;
    void (*split)(const float *x, int64_t n, uint16_t *hi, uint16_t *lo);
} split_ctx_t;

/* Rows are split independently, so the pool takes them in blocks. */
static void split_rows(void *raw, int64_t begin, int64_t end, int thread) {
    const split_ctx_t *ctx = raw;
    (void)thread;
    for (int64_t r = begin; r < end; r++)
        ctx->split(ctx->src + r * ctx->src_stride, ctx->n, ctx->hi + r * ctx->dst_stride,
                   ctx->lo + r * ctx->dst_stride);
}

/* rows x width floats become bf16 planes of `stride` (even) elements, the padding zero. */
static void split_matrix(moira_threadpool_t *pool, const moira_cpu_gemm_kernels_t *kernels,
                         const float *src, int64_t rows, int64_t width, int64_t src_stride,
                         uint16_t *hi, uint16_t *lo, int64_t stride) {
    memset(hi, 0, (size_t)(rows * stride) * sizeof(uint16_t));
    memset(lo, 0, (size_t)(rows * stride) * sizeof(uint16_t));
    split_ctx_t ctx = {src, src_stride, width, hi, lo, stride, kernels->split_bf16};
    moira_threadpool_parallel_for(pool, rows, 64, split_rows, &ctx);
}

/* Items for every expert with rows: (expert, [first, last)) blocks of `per_item` out of `count`. */
int64_t moira_cpu_ffn_items(const moira_cpu_grouped_ffn_t *job, int64_t count, int64_t per_item,
                            moira_cpu_ffn_item_t *items) {
    int64_t n = 0;
    for (int e = 0; e < job->n_experts; e++) {
        if (job->offsets[e + 1] == job->offsets[e]) continue;
        for (int64_t first = 0; first < count; first += per_item)
            items[n++] = (item_t){e, (int32_t)first,
                                  (int32_t)(first + per_item < count ? first + per_item : count)};
    }
    return n;
}

/* Scratch regions are 64-byte aligned so every one starts on a cache line. */
static size_t floats_bytes(int64_t n) {
    return MOIRA_CPU_ALIGN((size_t)n * sizeof(float));
}

/* Sizes one scratch block for everything (x split, h, h split, items) and takes it from the
 * queue's arena: a prefill launch needs tens of MB, and a fresh allocation of that size is a
 * fresh mmap whose every page faults and is zeroed on first touch (about a tenth of a 512-token
 * launch), while the arena's block stays mapped from launch to launch. Then runs stage 1 over
 * (expert, gate/up pairs) items, splits h where bf16 tiles need it, then stage 2 over (expert,
 * down panels) items. */
moira_status_t moira_cpu_grouped_ffn_run(moira_threadpool_t *pool,
                                         const moira_cpu_grouped_ffn_t *job) {
    int64_t n_rows = job->offsets[job->n_experts] - job->offsets[0];
    if (n_rows == 0 || job->hidden == 0) return MOIRA_OK_STATUS;
    bool bf16 = job->w1->dtype == MOIRA_DTYPE_BF16;
    ctx_t ctx = {.job = job,
                 .split = bf16 && job->kernels->bf16_input != MOIRA_CPU_BF16_INPUT_F32,
                 .row0 = job->offsets[0],
                 .h_stride = job->w1->panels * MOIRA_CPU_PANEL};
    /* bf16 pairs read an even number of activations: x gets a zero column when D is odd. */
    int64_t x_stride = bf16 ? (job->hidden + 1) / 2 * 2 : job->hidden;
    bool copy_x = bf16 && !ctx.split && x_stride != job->hidden;
    int64_t pair_count = job->w1->panels, panel_count = job->w2->panels;
    bool decode = job->tokens <= DECODE_TOKENS;
    int64_t pairs_per_item = decode ? 2 : PAIRS_PER_ITEM;
    int64_t panels_per_item = decode ? MOIRA_CPU_TILE_STREAMS : PANELS_PER_ITEM;
    int64_t per_expert1 = (pair_count + pairs_per_item - 1) / pairs_per_item;
    int64_t per_expert2 = (panel_count + panels_per_item - 1) / panels_per_item;
    size_t x_bytes = ctx.split ? 2 * MOIRA_CPU_ALIGN((size_t)(job->tokens * x_stride) * 2)
                     : copy_x  ? floats_bytes(job->tokens * x_stride)
                               : 0;
    size_t h_bytes = floats_bytes(n_rows * ctx.h_stride);
    size_t h_split_bytes = ctx.split ? 2 * MOIRA_CPU_ALIGN((size_t)(n_rows * ctx.h_stride) * 2) : 0;
    size_t items_bytes = MOIRA_CPU_ALIGN(
        (size_t)(job->n_experts * (per_expert1 > per_expert2 ? per_expert1 : per_expert2)) *
        sizeof(item_t));
    size_t scratch_bytes = x_bytes + h_bytes + h_split_bytes + items_bytes;
    void *scratch = NULL;
    MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(scratch_bytes, "moe_ffn", &scratch));
    unsigned char *cursor = scratch;
    ctx.x = (rows_t){.f32 = job->x, .stride = x_stride};
    if (ctx.split) {
        size_t plane = MOIRA_CPU_ALIGN((size_t)(job->tokens * x_stride) * 2);
        ctx.x = (rows_t){
            .hi = (uint16_t *)cursor, .lo = (uint16_t *)(cursor + plane), .stride = x_stride};
        split_matrix(pool, job->kernels, job->x, job->tokens, job->hidden, job->hidden,
                     (uint16_t *)ctx.x.hi, (uint16_t *)ctx.x.lo, x_stride);
    } else if (copy_x) {
        float *padded = (float *)cursor;
        for (int64_t t = 0; t < job->tokens; t++) {
            memcpy(padded + t * x_stride, job->x + t * job->hidden,
                   (size_t)job->hidden * sizeof(float));
            padded[t * x_stride + job->hidden] = 0;
        }
        ctx.x.f32 = padded;
    }
    cursor += x_bytes;
    ctx.h = (float *)cursor;
    cursor += h_bytes;
    ctx.h_rows = (rows_t){.f32 = ctx.h, .stride = ctx.h_stride};
    if (ctx.split) {
        size_t plane = MOIRA_CPU_ALIGN((size_t)(n_rows * ctx.h_stride) * 2);
        ctx.h_rows = (rows_t){
            .hi = (uint16_t *)cursor, .lo = (uint16_t *)(cursor + plane), .stride = ctx.h_stride};
    }
    cursor += h_split_bytes;
    item_t *items = (item_t *)cursor;
    ctx.items = items;

    /* One loop iteration per pool thread, each claiming items until none are left. */
    int64_t workers = moira_threadpool_size(pool);
    ctx.n_items = moira_cpu_ffn_items(job, pair_count, pairs_per_item, items);
    atomic_init(&ctx.next, 0);
    moira_threadpool_parallel_for(pool, workers, 1, gate_up_items, &ctx);
    if (ctx.split)
        split_matrix(pool, job->kernels, ctx.h, n_rows, ctx.h_stride, ctx.h_stride,
                     (uint16_t *)ctx.h_rows.hi, (uint16_t *)ctx.h_rows.lo, ctx.h_stride);
    ctx.n_items = moira_cpu_ffn_items(job, panel_count, panels_per_item, items);
    atomic_store(&ctx.next, 0);
    moira_threadpool_parallel_for(pool, workers, 1, down_items, &ctx);
    moira_cpu_temp_free(scratch);
    return MOIRA_OK_STATUS;
}
