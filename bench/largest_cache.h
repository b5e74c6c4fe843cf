/* The size of the machine's largest cache, which the bandwidth peers (stream_triad.h,
 * stream_read.h) size their buffers against so that no pass is served from cache. */
#ifndef MOIRA_BENCH_LARGEST_CACHE_H
#define MOIRA_BENCH_LARGEST_CACHE_H

/* Bytes of the largest cache hwloc knows (the last level), or 32 MiB when it knows none. */
double moira_bench_largest_cache_bytes(void);

#endif
