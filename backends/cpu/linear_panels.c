/* Dense linears over packed panels (linear_panels.h).
 *
 * A launch runs in passes of up to TOKEN_PASS tokens. Each pass first puts the activations in
 * the form the tiles read (the job's own f32 rows when they can be read in place, else a padded
 * f32 copy or bf16 high/low planes), then runs one parallel loop over items: (slice, group of up
 * to 4 output panels, part of the pass's token tiles). An item walks the panels' depth in chunks
 * and, per chunk, every token tile of its part, so a chunk of weights is read from memory once
 * and from L2 by every further tile; the first chunk stores (or scales y by beta and adds), the
 * later ones add. Decode has one token tile, so every weight byte is read exactly once. */
#include "backends/cpu/linear_panels.h"

#include <stdatomic.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "runtime/log.h"

/* Tokens per pass: bounds the activation copy (4 bytes per element for 256 rows whatever the
 * prompt length) while each weight chunk read from memory still serves hundreds of tokens. */
#define TOKEN_PASS 256
/* Panel steps per chunk: four f32 panels of 1024 steps are 256 KB, which stays in a core's L2
 * while the item's token tiles pass over it. */
#define DEPTH_CHUNK 1024
/* Items per pool thread the split aims for, so the pool's dynamic chunks balance. */
#define ITEMS_PER_THREAD 8

typedef struct panel_ctx {
    const moira_cpu_linear_job_t *job;
    moira_cpu_tile_fn run;
    bool swiglu;
    /* The pass's activations: f32 rows, or (hi != NULL) bf16 high and low planes. */
    const float *f32;
    const uint16_t *hi, *lo;
    int64_t row_stride, batch_step; /* elements, in whichever form is used */
    int64_t step_elements;          /* activations per panel step: 1 (f32 panels), 2 (bf16) */
    int64_t t0, tokens;             /* the pass's first token and its token count */
    int64_t panels;                 /* output panels per slice (SWIGLU: gate/up pairs) */
    int64_t group, groups;          /* panels per item, items per slice and token part */
    int64_t tile_rows, tiles, tiles_per_part, parts;
    int64_t depth, depth_chunk;
} panel_ctx_t;

static int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

/* Points tile row r at token t of slice b, `step` panel steps into the depth. */
static void set_row(const panel_ctx_t *ctx, moira_cpu_tile_t *tile, int r, int64_t b, int64_t t,
                    int64_t step) {
    int64_t at = b * ctx->batch_step + t * ctx->row_stride + step * ctx->step_elements;
    if (ctx->hi) {
        tile->x[r] = ctx->hi + at;
        tile->x_lo[r] = ctx->lo + at;
    } else {
        tile->x[r] = ctx->f32 + at;
    }
}

/* Sets the tile's panels for output panels [first, first + n) of slice b, `step` steps in: the
 * panels themselves, or for SWIGLU gate and up panels alternating. */
static void set_panels(const panel_ctx_t *ctx, moira_cpu_tile_t *tile, int64_t b, int64_t first,
                       int n, int64_t step) {
    const moira_cpu_linear_job_t *job = ctx->job;
    int64_t panel = (job->weight_row0 + b * job->weight_batch_rows) / MOIRA_CPU_PANEL + first;
    size_t skip = (size_t)step * 64;
    for (int s = 0; s < n; s++) {
        const unsigned char *w = moira_cpu_packed_panel(job->packed, job->matrix, panel + s);
        if (!ctx->swiglu) {
            tile->panels[s] = w + skip;
            continue;
        }
        const unsigned char *up = moira_cpu_packed_panel(job->packed_up, job->matrix, panel + s);
        tile->panels[2 * s] = w + skip;
        tile->panels[2 * s + 1] = up + skip;
    }
    tile->streams = ctx->swiglu ? 2 * n : n;
}

/* One item: its panel group against its part of the token tiles, chunk by chunk of depth. */
static void panel_items(void *raw, int64_t begin, int64_t end, int thread) {
    const panel_ctx_t *ctx = raw;
    const moira_cpu_linear_job_t *job = ctx->job;
    (void)thread;
    for (int64_t item = begin; item < end; item++) {
        int64_t part = item % ctx->parts, group = item / ctx->parts % ctx->groups;
        int64_t b = item / ctx->parts / ctx->groups;
        int64_t first = group * ctx->group;
        int n = (int)min64(ctx->group, ctx->panels - first);
        int64_t tile0 = part * ctx->tiles_per_part;
        int64_t tile1 = min64(tile0 + ctx->tiles_per_part, ctx->tiles);
        moira_cpu_tile_t tile;
        memset(&tile, 0, sizeof(tile));
        tile.out_stride = job->y_stride;
        tile.out_cols = (int)(job->out_features - MOIRA_CPU_PANEL * first);
        /* k0 == 0 runs once even for an empty depth, so y still gets beta * y. */
        for (int64_t k0 = 0; k0 == 0 || k0 < ctx->depth; k0 += ctx->depth_chunk) {
            tile.depth = min64(ctx->depth_chunk, ctx->depth - k0);
            tile.epilogue = ctx->swiglu                    ? MOIRA_CPU_EPILOGUE_SWIGLU
                            : k0 == 0 && job->beta == 0.0f ? MOIRA_CPU_EPILOGUE_STORE
                                                           : MOIRA_CPU_EPILOGUE_ACCUMULATE;
            tile.beta = k0 == 0 ? job->beta : 1.0f;
            set_panels(ctx, &tile, b, first, n, k0);
            for (int64_t t = tile0; t < tile1; t++) {
                int64_t r0 = t * ctx->tile_rows;
                tile.rows = (int)min64(ctx->tile_rows, ctx->tokens - r0);
                for (int r = 0; r < tile.rows; r++)
                    set_row(ctx, &tile, r, b, r0 + r, k0);
                tile.out = job->y + b * job->y_batch_step + (ctx->t0 + r0) * job->y_stride +
                           MOIRA_CPU_PANEL * first;
                ctx->run(&tile);
            }
        }
    }
}

/* How the activations reach the tiles. */
typedef struct prep_ctx {
    const moira_cpu_linear_job_t *job;
    const moira_cpu_gemm_kernels_t *kernels;
    int64_t t0, tokens, width; /* width: the copy's row length (K, or K + 1 for bf16 pairs) */
    float *padded;             /* f32 copy, or NULL */
    uint16_t *hi, *lo;         /* bf16 planes, or NULL */
} prep_ctx_t;

/* Row (slice b, token t) of the pass into the copy, the padding column zero. */
static void prep_rows(void *raw, int64_t begin, int64_t end, int thread) {
    const prep_ctx_t *ctx = raw;
    const moira_cpu_linear_job_t *job = ctx->job;
    int64_t k = job->in_features;
    (void)thread;
    for (int64_t row = begin; row < end; row++) {
        int64_t b = row / ctx->tokens, t = row % ctx->tokens;
        const float *src = job->x + b * job->x_batch_step + (ctx->t0 + t) * job->x_stride;
        size_t at = (size_t)(row * ctx->width);
        if (ctx->hi) {
            ctx->kernels->split_bf16(src, k, ctx->hi + at, ctx->lo + at);
            for (int64_t c = k; c < ctx->width; c++)
                ctx->hi[at + (size_t)c] = ctx->lo[at + (size_t)c] = 0;
        } else {
            memcpy(ctx->padded + at, src, (size_t)k * sizeof(float));
            for (int64_t c = k; c < ctx->width; c++)
                ctx->padded[at + (size_t)c] = 0;
        }
    }
}

/* Splits the pass into items: whole 4-panel groups when there are enough token tiles to share
 * them (prefill), narrower groups when there are few tokens (decode), so even a small matrix
 * gives every thread several items; then token parts if there are still too few. */
static void plan_items(panel_ctx_t *ctx, int threads) {
    const moira_cpu_linear_job_t *job = ctx->job;
    int64_t want = (int64_t)ITEMS_PER_THREAD * threads;
    ctx->panels = (job->out_features + MOIRA_CPU_PANEL - 1) / MOIRA_CPU_PANEL;
    ctx->tiles = (ctx->tokens + MOIRA_CPU_TILE_ROWS - 1) / MOIRA_CPU_TILE_ROWS;
    ctx->tile_rows = (ctx->tokens + ctx->tiles - 1) / ctx->tiles;
    ctx->group = ctx->swiglu ? MOIRA_CPU_TILE_STREAMS / 2 : MOIRA_CPU_TILE_STREAMS;
    while (ctx->tiles < 4 && ctx->group > 1 &&
           job->batch * ((ctx->panels + ctx->group - 1) / ctx->group) < want)
        ctx->group /= 2;
    ctx->groups = (ctx->panels + ctx->group - 1) / ctx->group;
    int64_t per_part = job->batch * ctx->groups;
    ctx->parts = per_part < want ? min64(ctx->tiles, (want + per_part - 1) / per_part) : 1;
    ctx->tiles_per_part = (ctx->tiles + ctx->parts - 1) / ctx->parts;
    ctx->parts = (ctx->tiles + ctx->tiles_per_part - 1) / ctx->tiles_per_part;
}

/* One temporary for the largest pass's copy, then pass after pass: prepare, run the items. */
moira_status_t moira_cpu_panel_linear_run(moira_threadpool_t *pool,
                                          const moira_cpu_linear_job_t *job) {
    if (job->batch <= 0 || job->tokens <= 0 || job->out_features <= 0) return MOIRA_OK_STATUS;
    const moira_cpu_gemm_kernels_t *kernels = moira_cpu_gemm_kernels_for_launch();
    bool bf16 = job->packed->panel_dtype == MOIRA_DTYPE_BF16;
    bool split = bf16 && kernels->bf16_input != MOIRA_CPU_BF16_INPUT_F32;
    int64_t k = job->in_features, width = bf16 ? (k + 1) / 2 * 2 : k;
    bool copy = split || width != k;
    panel_ctx_t ctx = {
        .job = job,
        .run = bf16 ? kernels->bf16 : kernels->f32,
        .swiglu = job->packed_up != NULL,
        .step_elements = bf16 ? 2 : 1,
        .depth = job->packed->depth,
    };
    ctx.depth_chunk = ctx.swiglu ? (ctx.depth > 0 ? ctx.depth : 1) : DEPTH_CHUNK;
    int64_t pass_tokens = min64(job->tokens, TOKEN_PASS);
    size_t plane_bytes = MOIRA_CPU_ALIGN((size_t)(job->batch * pass_tokens * width) * 2);
    void *temp = NULL;
    if (copy) MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(2 * plane_bytes, "linear", &temp));
    prep_ctx_t prep = {.job = job, .kernels = kernels, .width = width};
    if (split) {
        prep.hi = temp;
        prep.lo = (uint16_t *)((unsigned char *)temp + plane_bytes);
    } else if (copy) {
        prep.padded = temp;
    }
    for (int64_t t0 = 0; t0 < job->tokens; t0 += TOKEN_PASS) {
        ctx.t0 = prep.t0 = t0;
        ctx.tokens = prep.tokens = min64(job->tokens - t0, TOKEN_PASS);
        if (copy) {
            moira_threadpool_parallel_for(pool, job->batch * ctx.tokens, moira_cpu_grain(width),
                                          prep_rows, &prep);
            ctx.f32 = prep.padded;
            ctx.hi = prep.hi;
            ctx.lo = prep.lo;
            ctx.row_stride = width;
            ctx.batch_step = ctx.tokens * width;
        } else {
            ctx.f32 = job->x + t0 * job->x_stride;
            ctx.row_stride = job->x_stride;
            ctx.batch_step = job->x_batch_step;
        }
        plan_items(&ctx, moira_threadpool_size(pool));
        moira_threadpool_parallel_for(pool, job->batch * ctx.groups * ctx.parts, 1, panel_items,
                                      &ctx);
    }
    moira_cpu_temp_free(temp);
    return MOIRA_OK_STATUS;
}

/* The fallback is logged once per process: every later launch would say the same. */
void moira_cpu_dense_weight_acquire(moira_threadpool_t *pool, const moira_dtensor_t *weight,
                                    moira_cpu_packed_t **out_packed) {
    static atomic_flag warned = ATOMIC_FLAG_INIT;
    moira_status_t status = moira_cpu_packed_acquire_widened(pool, weight, out_packed);
    if (!status) return;
    if (!atomic_flag_test_and_set(&warned))
        MOIRA_LOG_W("%s; dense projections widen weight rows one at a time instead (slower)",
                    moira_status_message(status));
    moira_status_free(status);
    *out_packed = NULL;
}
