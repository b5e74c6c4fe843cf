/* Absorbed MLA decode attention over the latent cache (MLA_DECODE_ATTENTION), flash-decoding
 * style, on the micro-kernels of mla_decode.h.
 *
 * Queries come in groups of 16 heads of one token. The cache rows are cut into chunks of a few
 * blocks; one work item is a chunk and a set of up to GROUPS_PER_SET groups (all the heads of up
 * to 8 tokens, or 8 blocks of 16 heads), which it walks block by block: each block of 64 rows is
 * brought in once and folded into every group of the set while it is in L2, so a row is read
 * from memory once per launch for all heads and all tokens of the set. Threads take items one at
 * a time from a shared counter, so a thread the machine slows down holds up no one, and fold each
 * into their own running max, normaliser and output per group (softmax does not care in which
 * order rows come); a merge of the threads' states ends the launch. Chunks are taken in order, so
 * threads running at the same time read neighbouring rows. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "backends/cpu/kernels_common.h"
#include "backends/cpu/mla_decode.h"
#include "backends/cpu/mla_dims.h"

#define Q MOIRA_CPU_DECODE_QUERIES
#define KEYS MOIRA_CPU_DECODE_KEYS
/* Cache rows per chunk: two blocks, small enough that the last items even out the threads'
 * finishing times, large enough that taking one costs nothing next to folding it. */
#define CHUNK_KEYS (2 * KEYS)
/* Groups one item folds each block into: their query layouts and outputs (about 68 KB each for
 * DeepSeek's shapes) stay in L2 beside the block. */
#define GROUPS_PER_SET 8

typedef struct decode_ctx {
    moira_cpu_mla_dims_t d;
    float scale;
    const moira_cpu_decode_kernels_t *kernels; /* reads f32 rows, or the cache's own dtype */
    moira_cpu_isa_t isa;
    bool widen; /* bf16 cache folded through the f32 kernels, a block at a time */
    const unsigned char *c, *k_pe;
    size_t element; /* bytes of one cache element */
    const float *q_lat, *q;
    const int32_t *positions;
    float *out;
    int64_t tokens, cache_len, head_blocks, groups, sets, chunks, threads;
    unsigned char *layouts; /* [groups][layout_stride] */
    size_t layout_stride;
    /* Per (thread, group): 16 maxima, normalisers and unnormalised outputs [16][latent], and
     * whether the thread has folded any row into it yet. */
    float *part_max, *part_sum, *part_out;
    bool *fresh;
    atomic_llong next_item; /* the next item a thread takes */
    moira_cpu_scratch_t scratch;
} decode_ctx_t;

/* The exact widening (bf16 is the top half of an f32), vectorised where the ISA allows. */
void moira_cpu_decode_widen(moira_cpu_isa_t isa, const uint16_t *src, float *dst, int64_t n) {
    if (isa >= MOIRA_CPU_ISA_AVX512) {
        moira_cpu_decode_widen_avx512(src, dst, n);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        dst[i] = moira_bf16_to_f32(src[i]);
}

/* AVX512_BF16 reads a bf16 cache directly; below it a bf16 cache is widened (NULL). */
const moira_cpu_decode_kernels_t *moira_cpu_decode_kernels(moira_cpu_isa_t isa,
                                                           moira_dtype_t dtype) {
    if (dtype == MOIRA_DTYPE_BF16)
        return isa >= MOIRA_CPU_ISA_AVX512_BF16 ? &moira_cpu_decode_avx512_bf16 : NULL;
    return isa >= MOIRA_CPU_ISA_AVX512 ? &moira_cpu_decode_avx512 : &moira_cpu_decode_portable;
}

/* Cache rows token t sees: positions 0 .. pos[t], within the cache's valid rows. */
static int64_t visible_rows(const decode_ctx_t *ctx, int64_t t) {
    int64_t visible = (int64_t)ctx->positions[t] + 1;
    if (visible > ctx->cache_len) visible = ctx->cache_len;
    return visible < 0 ? 0 : visible;
}

/* Group g: the heads 16 * (g % head_blocks) onwards of token g / head_blocks. */
static moira_cpu_decode_queries_t group_queries(const decode_ctx_t *ctx, int64_t g) {
    const moira_cpu_mla_dims_t *d = &ctx->d;
    int64_t t = g / ctx->head_blocks, h0 = g % ctx->head_blocks * Q;
    moira_cpu_decode_queries_t queries = {
        .n = (int)(d->heads - h0 < Q ? d->heads - h0 : Q),
        .latent = d->latent,
        .rope = d->rope,
        .scale = ctx->scale,
    };
    for (int i = 0; i < queries.n; i++) {
        queries.q_lat[i] = ctx->q_lat + t * d->heads * d->latent + (h0 + i) * d->latent;
        queries.q_pe[i] = ctx->q + t * d->q_width + (h0 + i) * (d->nope + d->rope) + d->nope;
    }
    return queries;
}

/* Every group's queries in the kernels' layout, once per launch. */
static void prepare_groups(void *raw, int64_t begin, int64_t end, int thread) {
    const decode_ctx_t *ctx = raw;
    (void)thread;
    for (int64_t g = begin; g < end; g++) {
        moira_cpu_decode_queries_t queries = group_queries(ctx, g);
        ctx->kernels->prepare(&queries, ctx->layouts + (size_t)g * ctx->layout_stride);
    }
}

/* Rows [first, first + n) as the kernels read them: the cache itself, or (bf16 without a bf16
 * kernel) widened into `wide`. */
static moira_cpu_decode_rows_t block_rows(const decode_ctx_t *ctx, int64_t first, int n,
                                          float *wide) {
    const moira_cpu_mla_dims_t *d = &ctx->d;
    const unsigned char *c = ctx->c + (size_t)(first * d->latent) * ctx->element;
    const unsigned char *k_pe = ctx->k_pe + (size_t)(first * d->rope) * ctx->element;
    moira_cpu_decode_rows_t rows = {
        .c = c, .k_pe = k_pe, .c_stride = d->latent, .pe_stride = d->rope, .n = n};
    if (!ctx->widen) return rows;
    float *wide_pe = wide + n * d->latent;
    moira_cpu_decode_widen(ctx->isa, (const uint16_t *)c, wide, n * d->latent);
    moira_cpu_decode_widen(ctx->isa, (const uint16_t *)k_pe, wide_pe, n * d->rope);
    rows.c = wide;
    rows.k_pe = wide_pe;
    return rows;
}

/* Thread `thread`'s state of group g. */
static moira_cpu_decode_state_t thread_state(const decode_ctx_t *ctx, int thread, int64_t g) {
    int64_t part = thread * ctx->groups + g;
    return (moira_cpu_decode_state_t){.max = ctx->part_max + part * Q,
                                      .sum = ctx->part_sum + part * Q,
                                      .out = ctx->part_out + part * Q * ctx->d.latent,
                                      .fresh = ctx->fresh[part]};
}

/* Item `item`: chunk item / sets of the rows folded block by block into `thread`'s states of the
 * groups of set item % sets, each group stopping at the rows its token sees. */
static void fold_item(decode_ctx_t *ctx, int64_t item, int64_t following, int thread,
                      float *scratch, float *wide) {
    int64_t chunk = item / ctx->sets, g0 = item % ctx->sets * GROUPS_PER_SET;
    int64_t g1 = g0 + GROUPS_PER_SET < ctx->groups ? g0 + GROUPS_PER_SET : ctx->groups;
    int64_t first = chunk * CHUNK_KEYS, last = first + CHUNK_KEYS, seen = 0;
    moira_cpu_decode_queries_t queries[GROUPS_PER_SET];
    moira_cpu_decode_state_t states[GROUPS_PER_SET];
    int64_t visible[GROUPS_PER_SET];
    for (int64_t g = g0; g < g1; g++) {
        queries[g - g0] = group_queries(ctx, g);
        states[g - g0] = thread_state(ctx, thread, g);
        visible[g - g0] = visible_rows(ctx, g / ctx->head_blocks);
        seen = visible[g - g0] > seen ? visible[g - g0] : seen;
    }
    if (last > seen) last = seen;
    for (int64_t block = first; block < last; block += KEYS) {
        int n = (int)(last - block < KEYS ? last - block : KEYS);
        moira_cpu_decode_rows_t rows = block_rows(ctx, block, n, wide);
        /* The next block; after the chunk's last, the first of the item this thread takes
         * next. (Widened rows are read once, in order: the hardware prefetches them.) */
        int64_t next = block + KEYS < last ? block + KEYS : following / ctx->sets * CHUNK_KEYS;
        int64_t ahead = ctx->cache_len - next;
        if (!ctx->widen && ahead > 0) {
            moira_cpu_decode_rows_t rows_ahead = block_rows(ctx, next, 0, NULL);
            rows.ahead_c = rows_ahead.c;
            rows.ahead_pe = rows_ahead.k_pe;
            rows.ahead_n = (int)(ahead < KEYS ? ahead : KEYS);
        }
        for (int64_t g = g0; g < g1; g++) {
            int64_t sees = visible[g - g0] - block;
            if (sees <= 0) continue;
            moira_cpu_decode_rows_t mine = rows;
            mine.n = sees < n ? (int)sees : n;
            ctx->kernels->fold(ctx->layouts + (size_t)g * ctx->layout_stride, &queries[g - g0],
                               &mine, &states[g - g0], scratch);
            rows.ahead_c = rows.ahead_pe = NULL; /* the first group's fold fetched them */
        }
    }
    for (int64_t g = g0; g < g1; g++)
        ctx->fresh[thread * ctx->groups + g] = states[g - g0].fresh;
}

/* A thread takes items until none is left, each one item ahead, so that it knows which rows to
 * prefetch at the end of the one it folds. The pool may run this more than once on one thread
 * (when it takes another's share before that one wakes): the states carry over. */
static void decode_worker(void *raw, int64_t begin, int64_t end, int thread) {
    decode_ctx_t *ctx = raw;
    const moira_cpu_mla_dims_t *d = &ctx->d;
    unsigned char *cursor = moira_cpu_scratch_at(&ctx->scratch, thread);
    float *scratch = moira_cpu_take(&cursor, MOIRA_CPU_DECODE_SCRATCH_FLOATS * sizeof(float));
    float *wide =
        ctx->widen ? moira_cpu_take(&cursor, (size_t)(KEYS * (d->latent + d->rope)) * 4) : NULL;
    (void)begin, (void)end;
    int64_t items = ctx->chunks * ctx->sets;
    for (int64_t item = atomic_fetch_add(&ctx->next_item, 1); item < items;) {
        int64_t following = atomic_fetch_add(&ctx->next_item, 1);
        fold_item(ctx, item, following, thread, scratch, wide);
        item = following;
    }
}

/* out[t, h] = sum over threads of out_thread * exp(max_thread - max) / the rescaled normalisers;
 * zeros when the token sees no row. */
static void merge_items(void *raw, int64_t begin, int64_t end, int thread) {
    const decode_ctx_t *ctx = raw;
    const moira_cpu_mla_dims_t *d = &ctx->d;
    (void)thread;
    for (int64_t th = begin; th < end; th++) {
        int64_t t = th / d->heads, h = th % d->heads;
        int64_t g = t * ctx->head_blocks + h / Q, lane = h % Q;
        float max = -INFINITY;
        for (int64_t w = 0; w < ctx->threads; w++) {
            int64_t part = w * ctx->groups + g;
            float m = ctx->part_max[part * Q + lane];
            max = !ctx->fresh[part] && m > max ? m : max;
        }
        float *dst = ctx->out + t * d->heads * d->latent + h * d->latent;
        memset(dst, 0, (size_t)d->latent * sizeof(float));
        if (max == -INFINITY) continue;
        double sum = 0;
        for (int64_t w = 0; w < ctx->threads; w++) {
            int64_t part = w * ctx->groups + g;
            if (ctx->fresh[part]) continue;
            float scale = expf(ctx->part_max[part * Q + lane] - max);
            sum += (double)ctx->part_sum[part * Q + lane] * scale;
            moira_cpu_axpy(scale, ctx->part_out + (part * Q + lane) * d->latent, dst, d->latent);
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < d->latent; j++)
            dst[j] *= inv;
    }
}

/* Items (chunk of rows, set of groups) for the threads to take; each thread's states are sized
 * by the groups alone, so the memory a decode step needs does not change as the cache grows. */
moira_status_t moira_cpu_mla_decode_attention(const moira_op_launch_t *launch,
                                              moira_threadpool_t *pool) {
    const moira_dtensor_t *operands = launch->operands;
    const moira_mla_params_t *params = launch->params;
    moira_dtype_t dtype = operands[2].dtype;
    moira_cpu_isa_t isa = moira_cpu_isa_best();
    const moira_cpu_decode_kernels_t *direct = moira_cpu_decode_kernels(isa, dtype);
    if (direct && direct->pairs && (params->kv_lora_rank | params->rope_dim) & 1) direct = NULL;
    decode_ctx_t ctx = {
        .d = moira_cpu_mla_dims(params),
        .scale = params->scale,
        .kernels = direct ? direct : moira_cpu_decode_kernels(isa, MOIRA_DTYPE_F32),
        .isa = isa,
        .widen = direct == NULL,
        .c = moira_cpu_tensor_ptr(&operands[2]),
        .k_pe = moira_cpu_tensor_ptr(&operands[3]),
        .element = moira_dtype_size(dtype),
        .q_lat = moira_cpu_f32(&operands[0]),
        .q = moira_cpu_f32(&operands[1]),
        .positions = moira_cpu_i32(&operands[4]),
        .out = moira_cpu_f32(&operands[5]),
        .tokens = operands[0].shape[0],
        .cache_len = operands[2].shape[0],
        .threads = moira_threadpool_size(pool),
    };
    if (ctx.tokens == 0) return MOIRA_OK_STATUS;
    ctx.head_blocks = (ctx.d.heads + Q - 1) / Q;
    ctx.groups = ctx.tokens * ctx.head_blocks;
    ctx.sets = (ctx.groups + GROUPS_PER_SET - 1) / GROUPS_PER_SET;
    ctx.chunks = (ctx.cache_len + CHUNK_KEYS - 1) / CHUNK_KEYS;
    atomic_init(&ctx.next_item, 0);
    size_t parts = (size_t)(ctx.threads * ctx.groups), lanes = parts * Q;
    ctx.layout_stride = MOIRA_CPU_ALIGN(ctx.kernels->layout_bytes(ctx.d.latent, ctx.d.rope));
    size_t layout_bytes = (size_t)ctx.groups * ctx.layout_stride;
    size_t max_bytes = MOIRA_CPU_ALIGN(lanes * sizeof(float));
    size_t out_bytes = MOIRA_CPU_ALIGN(lanes * (size_t)ctx.d.latent * sizeof(float));
    void *temp = NULL;
    MOIRA_RETURN_IF_ERROR(moira_cpu_temp_alloc(layout_bytes + 2 * max_bytes + out_bytes + parts,
                                               "mla_decode_attention", &temp));
    ctx.layouts = temp;
    ctx.part_max = (float *)(ctx.layouts + layout_bytes);
    ctx.part_sum = (float *)((unsigned char *)ctx.part_max + max_bytes);
    ctx.part_out = (float *)((unsigned char *)ctx.part_sum + max_bytes);
    ctx.fresh = (bool *)((unsigned char *)ctx.part_out + out_bytes);
    for (size_t i = 0; i < parts; i++)
        ctx.fresh[i] = true;
    size_t scratch = MOIRA_CPU_ALIGN(MOIRA_CPU_DECODE_SCRATCH_FLOATS * sizeof(float));
    if (ctx.widen) scratch += MOIRA_CPU_ALIGN((size_t)(KEYS * (ctx.d.latent + ctx.d.rope)) * 4);
    moira_status_t status = moira_cpu_scratch_alloc(pool, scratch, &ctx.scratch);
    if (!status) {
        int64_t query_work = Q * (ctx.d.latent + ctx.d.rope);
        moira_threadpool_parallel_for(pool, ctx.groups, moira_cpu_grain(query_work), prepare_groups,
                                      &ctx);
        moira_threadpool_parallel_for(pool, ctx.threads, 1, decode_worker, &ctx);
        moira_threadpool_parallel_for(pool, ctx.tokens * ctx.d.heads,
                                      moira_cpu_grain(ctx.threads * ctx.d.latent), merge_items,
                                      &ctx);
        moira_cpu_scratch_free(&ctx.scratch);
    }
    moira_cpu_temp_free(temp);
    return status;
}
