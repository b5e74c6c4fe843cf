/* A register-only FMA kernel on Moira's thread pool (fma_peak.h). */
#include "bench/fma_peak.h"

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/clock.h"
#include "runtime/threadpool.h"

/* Independent accumulator chains: enough to cover the FMA latency (4-5 cycles) times the FMA
 * units (two on many cores) with room to spare, and few enough to stay in registers. */
#define CHAINS 12
/* FMAs of one chain per work item, and items per thread per pass: a pass is a few milliseconds,
 * split finely so a core that the machine's other work slows down hands items to the others. */
#define STEPS_PER_ITEM (1 << 16)
#define ITEMS_PER_THREAD 16

typedef int64_t (*fma_kernel_fn)(int64_t steps, float *sink);

/* One kernel: what it runs on and the multiply-adds one of its instructions does. */
typedef struct fma_kernel {
    fma_kernel_fn run;
    const char *isa;
    int lanes;
} fma_kernel_t;

struct moira_fma_peak {
    moira_threadpool_t *pool;
    fma_kernel_t f32, bf16;
    const fma_kernel_t *running; /* the one run_items runs */
    float sink[64 * 16];         /* one cache line per thread slot, so results are kept */
};

/* acc = acc * 0.5 + 1 converges to 2: every value stays normal, so no slow path is taken. Each
 * kernel returns the FMAs it ran per lane. */
__attribute__((target("avx512f"))) static int64_t fma_avx512(int64_t steps, float *sink) {
    __m512 acc[CHAINS], half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (int64_t s = 0; s < steps; s++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_fmadd_ps(acc[c], half, one);
    __m512 total = acc[0];
    for (int c = 1; c < CHAINS; c++)
        total = _mm512_add_ps(total, acc[c]);
    *sink += _mm512_reduce_add_ps(total);
    return steps * CHAINS;
}

__attribute__((target("avx2,fma"))) static int64_t fma_avx2(int64_t steps, float *sink) {
    __m256 acc[CHAINS], half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm256_set1_ps((float)c);
    for (int64_t s = 0; s < steps; s++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm256_fmadd_ps(acc[c], half, one);
    float lanes[8];
    __m256 total = acc[0];
    for (int c = 1; c < CHAINS; c++)
        total = _mm256_add_ps(total, acc[c]);
    _mm256_storeu_ps(lanes, total);
    for (int i = 0; i < 8; i++)
        *sink += lanes[i];
    return steps * CHAINS;
}

/* acc += a . b over bf16 pairs: the values stay far from overflow for every pass's steps. */
__attribute__((target("avx512f,avx512bf16"))) static int64_t fma_avx512_bf16(int64_t steps,
                                                                             float *sink) {
    __m512 acc[CHAINS];
    __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(3e-3f), _mm512_set1_ps(1e-3f));
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (int64_t s = 0; s < steps; s++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    __m512 total = acc[0];
    for (int c = 1; c < CHAINS; c++)
        total = _mm512_add_ps(total, acc[c]);
    *sink += _mm512_reduce_add_ps(total);
    return steps * CHAINS;
}

/* Plain C: a multiply and an add, the two FLOPs of an FMA on a CPU without one. */
static int64_t fma_portable(int64_t steps, float *sink) {
    float acc[CHAINS];
    for (int c = 0; c < CHAINS; c++)
        acc[c] = (float)c;
    for (int64_t s = 0; s < steps; s++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = acc[c] * 0.5f + 1.0f;
    for (int c = 0; c < CHAINS; c++)
        *sink += acc[c];
    return steps * CHAINS;
}

static void run_items(void *raw, int64_t begin, int64_t end, int thread) {
    moira_fma_peak_t *p = raw;
    for (int64_t i = begin; i < end; i++)
        p->running->run(STEPS_PER_ITEM, &p->sink[16 * (thread % 64)]);
}

moira_status_t moira_fma_peak_open(int threads, moira_fma_peak_t **out_peak) {
    *out_peak = NULL;
    moira_fma_peak_t *p = calloc(1, sizeof(*p));
    if (!p) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "fma peak");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        p->f32 = (fma_kernel_t){fma_avx512, "avx512", 16};
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        p->f32 = (fma_kernel_t){fma_avx2, "avx2", 8};
    else
        p->f32 = (fma_kernel_t){fma_portable, "portable", 1};
    p->bf16 = p->f32;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"))
        p->bf16 = (fma_kernel_t){fma_avx512_bf16, "avx512_bf16", 32};
    moira_status_t status = moira_threadpool_create(threads, -1, &p->pool);
    if (status) {
        free(p);
        return status;
    }
    *out_peak = p;
    return MOIRA_OK_STATUS;
}

/* Best of the passes: the machine's peak, not its noise. */
static double run_kernel(moira_fma_peak_t *p, const fma_kernel_t *kernel, int passes) {
    int64_t items = (int64_t)moira_threadpool_size(p->pool) * ITEMS_PER_THREAD;
    double flops = 2.0 * (double)items * STEPS_PER_ITEM * CHAINS * kernel->lanes, best = 0;
    p->running = kernel;
    for (int pass = 0; pass < passes; pass++) {
        double start = moira_now_seconds();
        moira_threadpool_parallel_for(p->pool, items, 1, run_items, p);
        double gflops = flops / (moira_now_seconds() - start) * 1e-9;
        if (gflops > best) best = gflops;
    }
    return best;
}

double moira_fma_peak_run(moira_fma_peak_t *p, int passes) {
    return run_kernel(p, &p->f32, passes);
}

double moira_fma_peak_run_bf16(moira_fma_peak_t *p, int passes) {
    return run_kernel(p, &p->bf16, passes);
}

const char *moira_fma_peak_isa(const moira_fma_peak_t *p) {
    return p->f32.isa;
}

const char *moira_fma_peak_isa_bf16(const moira_fma_peak_t *p) {
    return p->bf16.isa;
}

/* Stops the pool before the state it writes to goes. */
void moira_fma_peak_close(moira_fma_peak_t *p) {
    if (!p) return;
    moira_threadpool_destroy(p->pool);
    free(p);
}
