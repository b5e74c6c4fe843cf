/* STREAM triad on Moira's thread pool (stream_triad.h). */
#include "bench/stream_triad.h"

#include <stdlib.h>
#include <time.h>

#include "bench/largest_cache.h"
#include "runtime/threadpool.h"

struct moira_stream_triad {
    moira_threadpool_t *pool;
    float *a, *b, *c;
    int64_t n;
};

typedef struct pass_ctx {
    moira_stream_triad_t *triad;
    float scale;
} pass_ctx_t;

/* Chunks of whole 4 KiB pages per iteration, so each thread streams long runs. */
#define PAGE_FLOATS 1024

static void init_pages(void *raw, int64_t begin, int64_t end, int thread) {
    moira_stream_triad_t *t = ((pass_ctx_t *)raw)->triad;
    (void)thread;
    for (int64_t i = begin * PAGE_FLOATS; i < end * PAGE_FLOATS && i < t->n; i++) {
        t->a[i] = 0.0f;
        t->b[i] = 1.0f;
        t->c[i] = 2.0f;
    }
}

/* STREAM's triad kernel over whole pages, restrict-qualified so the compiler vectorises it as
 * STREAM's C does. */
static void triad_pages(void *raw, int64_t begin, int64_t end, int thread) {
    const pass_ctx_t *ctx = raw;
    moira_stream_triad_t *t = ctx->triad;
    int64_t last = end * PAGE_FLOATS < t->n ? end * PAGE_FLOATS : t->n;
    float *restrict a = t->a;
    const float *restrict b = t->b, *restrict c = t->c;
    (void)thread;
    for (int64_t i = begin * PAGE_FLOATS; i < last; i++)
        a[i] = b[i] + ctx->scale * c[i];
}

/* Arrays are first-touched by the pool that later streams them, so each page sits on the NUMA
 * node of the thread that reads it. */
moira_status_t moira_stream_triad_open(int threads, moira_stream_triad_t **out_triad) {
    *out_triad = NULL;
    moira_stream_triad_t *t = calloc(1, sizeof(*t));
    if (!t) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "stream triad");
    double bytes = 4 * moira_bench_largest_cache_bytes();
    if (bytes < 64.0 * 1024 * 1024) bytes = 64.0 * 1024 * 1024;
    t->n = (int64_t)(bytes / sizeof(float)) / PAGE_FLOATS * PAGE_FLOATS;
    t->a = aligned_alloc(4096, (size_t)t->n * sizeof(float));
    t->b = aligned_alloc(4096, (size_t)t->n * sizeof(float));
    t->c = aligned_alloc(4096, (size_t)t->n * sizeof(float));
    moira_status_t status = t->a && t->b && t->c
                                ? moira_threadpool_create(threads, -1, &t->pool)
                                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "stream triad");
    if (status) {
        moira_stream_triad_close(t);
        return status;
    }
    pass_ctx_t ctx = {t, 0};
    moira_threadpool_parallel_for(t->pool, t->n / PAGE_FLOATS, 16, init_pages, &ctx);
    *out_triad = t;
    return MOIRA_OK_STATUS;
}

/* Monotonic wall time for a pass. */
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of several passes, as STREAM reports: the machine's bandwidth, not its noise. */
double moira_stream_triad_run(moira_stream_triad_t *t, int passes) {
    double best = 0;
    for (int pass = 0; pass < passes; pass++) {
        pass_ctx_t ctx = {t, 0.5f + (float)pass};
        double start = now_seconds();
        moira_threadpool_parallel_for(t->pool, t->n / PAGE_FLOATS, 16, triad_pages, &ctx);
        double gbs = 3.0 * (double)t->n * sizeof(float) / (now_seconds() - start) * 1e-9;
        if (gbs > best) best = gbs;
    }
    return best;
}

/* The bench prints it, so a reader can see the arrays dwarf the caches. */
double moira_stream_triad_array_bytes(const moira_stream_triad_t *triad) {
    return (double)triad->n * sizeof(float);
}

/* Stops the pool before its arrays go. */
void moira_stream_triad_close(moira_stream_triad_t *t) {
    if (!t) return;
    moira_threadpool_destroy(t->pool);
    free(t->a);
    free(t->b);
    free(t->c);
    free(t);
}
