/* A read-only bandwidth kernel on Moira's thread pool (stream_read.h). */
#include "bench/stream_read.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench/largest_cache.h"
#include "runtime/clock.h"
#include "runtime/threadpool.h"

/* 64-byte vectors of 64-bit integers: integer adds, so the compiler keeps the order it is given
 * and no rounding enters. */
typedef uint64_t lanes_t __attribute__((vector_size(64)));

/* Iterations are 1 MiB blocks: the pool hands each thread long runs of them. */
#define BLOCK_BYTES (1 << 20)
/* A block is read as this many interleaved streams (its quarters, one 64-byte vector of each per
 * step, each into its own accumulator). One sequential stream per core leaves the memory system
 * idle between prefetches: on the 2-core EPYC of bench/RESULTS.md it read about 40% less than
 * 2 to 8 streams, and the kernels it is held against stream several panels at once. */
#define STREAMS 4

struct moira_stream_read {
    moira_threadpool_t *pool;
    unsigned char *data;
    size_t bytes;
    uint64_t sink[64]; /* one slot per thread, 8 apart (a cache line each) */
};

/* One block, compiled for AVX-512, AVX2 and the baseline (the best the CPU runs is picked when
 * the program loads), so the peer reads with the widest loads the machine has. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static uint64_t
sum_block(const unsigned char *block) {
    const size_t stream_bytes = BLOCK_BYTES / STREAMS;
    lanes_t acc[STREAMS] = {{0}};
    for (size_t at = 0; at < stream_bytes; at += 64)
        for (int s = 0; s < STREAMS; s++) {
            lanes_t v;
            memcpy(&v, block + s * stream_bytes + at, 64);
            acc[s] += v;
        }
    lanes_t sum = {0};
    for (int s = 0; s < STREAMS; s++)
        sum += acc[s];
    uint64_t total = 0;
    for (int i = 0; i < 8; i++)
        total += sum[i];
    return total;
}

/* Sums blocks [begin, end) into the thread's slot, so the reads cannot be optimised away. */
static void read_blocks(void *raw, int64_t begin, int64_t end, int thread) {
    moira_stream_read_t *r = raw;
    for (int64_t block = begin; block < end; block++)
        r->sink[8 * (thread % 8)] += sum_block(r->data + (size_t)block * BLOCK_BYTES);
}

/* First touch by the reading pool places each page on its readers' NUMA node. */
static void fill_blocks(void *raw, int64_t begin, int64_t end, int thread) {
    moira_stream_read_t *r = raw;
    (void)thread;
    memset(r->data + (size_t)begin * BLOCK_BYTES, 1, (size_t)(end - begin) * BLOCK_BYTES);
}

moira_status_t moira_stream_read_open(int threads, moira_stream_read_t **out_reader) {
    *out_reader = NULL;
    moira_stream_read_t *r = calloc(1, sizeof(*r));
    if (!r) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "stream read");
    double bytes = 8 * moira_bench_largest_cache_bytes();
    if (bytes < 256.0 * 1024 * 1024) bytes = 256.0 * 1024 * 1024;
    r->bytes = (size_t)(bytes / BLOCK_BYTES) * BLOCK_BYTES;
    r->data = aligned_alloc(4096, r->bytes);
    moira_status_t status =
        r->data ? moira_threadpool_create(threads, -1, &r->pool)
                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "stream read: %zu bytes", r->bytes);
    if (status) {
        moira_stream_read_close(r);
        return status;
    }
    moira_threadpool_parallel_for(r->pool, (int64_t)(r->bytes / BLOCK_BYTES), 1, fill_blocks, r);
    *out_reader = r;
    return MOIRA_OK_STATUS;
}

/* Best of the passes: the machine's bandwidth, not its noise. */
double moira_stream_read_run(moira_stream_read_t *r, int passes) {
    double best = 0;
    for (int pass = 0; pass < passes; pass++) {
        double start = moira_now_seconds();
        moira_threadpool_parallel_for(r->pool, (int64_t)(r->bytes / BLOCK_BYTES), 1, read_blocks,
                                      r);
        double gbs = (double)r->bytes / (moira_now_seconds() - start) * 1e-9;
        if (gbs > best) best = gbs;
    }
    return best;
}

/* The bench prints it, so a reader can see the buffer dwarfs the caches. */
double moira_stream_read_bytes(const moira_stream_read_t *r) {
    return (double)r->bytes;
}

/* Stops the pool before its buffer goes. */
void moira_stream_read_close(moira_stream_read_t *r) {
    if (!r) return;
    moira_threadpool_destroy(r->pool);
    free(r->data);
    free(r);
}
