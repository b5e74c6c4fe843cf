/* A fixed pool of worker threads, each bound to one core (hwloc), that splits loops.
 *
 * The calling thread works too, so a pool of N threads has N-1 workers. One parallel loop runs at
 * a time per pool: concurrent callers (several queues of one device) take turns, which keeps the
 * cores from being oversubscribed. */
#ifndef MOIRA_RUNTIME_THREADPOOL_H
#define MOIRA_RUNTIME_THREADPOOL_H

#include <stdint.h>

#include "runtime/status.h"

typedef struct moira_threadpool moira_threadpool_t;

/* Runs iterations [begin, end) on thread `thread` (0 .. size-1). */
typedef void (*moira_parallel_fn)(void *ctx, int64_t begin, int64_t end, int thread);

/* Creates a pool of `n_threads` (0: one per physical core of the machine, from hwloc), bound to
 * cores of NUMA node `numa_node` when it is >= 0. Caller destroys it. */
moira_status_t moira_threadpool_create(int n_threads, int numa_node, moira_threadpool_t **out_pool);
void moira_threadpool_destroy(moira_threadpool_t *pool);

int moira_threadpool_size(const moira_threadpool_t *pool);

/* Splits [0, n) into chunks of at least `grain` iterations over the pool's threads and blocks
 * until all are done. `ctx` is borrowed for the call. */
void moira_threadpool_parallel_for(moira_threadpool_t *pool, int64_t n, int64_t grain,
                                   moira_parallel_fn fn, void *ctx);

#endif
