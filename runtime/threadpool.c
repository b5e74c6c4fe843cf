#include "runtime/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "runtime/clock.h"
#include "runtime/hwloc_topology.h"
#include "runtime/log.h"

/* How long a thread polls before it sleeps: a worker after its loop, waiting for the next; the
 * caller at the end of its share, waiting for the workers. Waking a sleeping thread goes through
 * the kernel (on a VM an inter-processor interrupt through the hypervisor): 15-20 us per loop on
 * the 2-core KVM machine of bench/RESULTS.md, more than a decode projection of a few MB takes to
 * stream. A kernel launch's loops follow each other within microseconds, so a short poll catches
 * them; between decode steps the poll runs out and the thread sleeps, so an idle pool costs at
 * most this much CPU time per loop. */
#define POLL_SECONDS 50e-6

struct moira_threadpool {
    int n_threads;
    pthread_t *workers;         /* n_threads - 1 */
    hwloc_cpuset_t *cpusets;    /* one per thread; the caller's is applied only while it works */
    pthread_mutex_t loop_mutex; /* one parallel loop at a time */
    pthread_mutex_t mutex;
    pthread_cond_t start;
    pthread_cond_t finished;
    uint64_t generation; /* bumped for every loop so workers know there is new work */
    int running;         /* workers still busy with this generation */
    bool stopping;
    /* The current loop. */
    moira_parallel_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next;
    /* `generation` and `running`, readable without the mutex by a polling thread. */
    atomic_ullong published_generation;
    atomic_int published_running;
};

/* Lets the other hardware thread of the core run while this one polls. */
#if defined(__x86_64__) || defined(__i386__)
static inline void relax(void) {
    __builtin_ia32_pause();
}
#else
static inline void relax(void) {}
#endif

/* Polls for up to POLL_SECONDS while `*value` equals `unchanged` (the clock is read every 64
 * polls: it costs more than a poll). */
static void poll_while_u64(atomic_ullong *value, uint64_t unchanged) {
    double deadline = moira_now_seconds() + POLL_SECONDS;
    for (int i = 1; atomic_load(value) == unchanged; i++) {
        relax();
        if (i % 64 == 0 && moira_now_seconds() > deadline) return;
    }
}

/* The same while `*value` is positive. */
static void poll_while_positive(atomic_int *value) {
    double deadline = moira_now_seconds() + POLL_SECONDS;
    for (int i = 1; atomic_load(value) > 0; i++) {
        relax();
        if (i % 64 == 0 && moira_now_seconds() > deadline) return;
    }
}

typedef struct worker_arg {
    moira_threadpool_t *pool;
    int thread;
} worker_arg_t;

/* Takes chunks until none are left; dynamic so uneven work (experts with more tokens) balances. */
static void run_chunks(moira_threadpool_t *pool, int thread) {
    for (;;) {
        int64_t begin = atomic_fetch_add(&pool->next, pool->chunk);
        if (begin >= pool->n) break;
        int64_t end = begin + pool->chunk < pool->n ? begin + pool->chunk : pool->n;
        pool->fn(pool->ctx, begin, end, thread);
    }
}

static void *worker_main(void *raw) {
    worker_arg_t arg = *(worker_arg_t *)raw;
    free(raw);
    moira_threadpool_t *pool = arg.pool;
    hwloc_topology_t topology;
    moira_status_t status = moira_hwloc_topology(&topology);
    if (!status && pool->cpusets[arg.thread])
        hwloc_set_cpubind(topology, pool->cpusets[arg.thread], HWLOC_CPUBIND_THREAD);
    moira_status_free(status);
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        if (!pool->stopping && pool->generation == seen) {
            pthread_mutex_unlock(&pool->mutex);
            poll_while_u64(&pool->published_generation, seen);
            pthread_mutex_lock(&pool->mutex);
        }
        while (!pool->stopping && pool->generation == seen)
            pthread_cond_wait(&pool->start, &pool->mutex);
        if (pool->stopping) break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mutex);
        run_chunks(pool, arg.thread);
        pthread_mutex_lock(&pool->mutex);
        atomic_store(&pool->published_running, --pool->running);
        if (pool->running == 0) pthread_cond_signal(&pool->finished);
    }
    pthread_mutex_unlock(&pool->mutex);
    return NULL;
}

/* One cpuset per physical core (first PU of each), restricted to a NUMA node when asked. */
static int assign_cpusets(moira_threadpool_t *pool, int wanted, int numa_node) {
    hwloc_topology_t topology;
    moira_status_t status = moira_hwloc_topology(&topology);
    if (status) {
        moira_status_free(status);
        return wanted > 0 ? wanted : 1;
    }
    hwloc_const_cpuset_t allowed = hwloc_topology_get_topology_cpuset(topology);
    if (numa_node >= 0) {
        hwloc_obj_t node = hwloc_get_numanode_obj_by_os_index(topology, (unsigned)numa_node);
        if (node) allowed = node->cpuset;
    }
    int n_cores = hwloc_get_nbobjs_inside_cpuset_by_type(topology, allowed, HWLOC_OBJ_CORE);
    if (n_cores <= 0) n_cores = 1;
    int n = wanted > 0 ? wanted : n_cores;
    pool->cpusets = calloc((size_t)n, sizeof(*pool->cpusets));
    if (!pool->cpusets) return n;
    for (int i = 0; i < n; i++) {
        hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(topology, allowed, HWLOC_OBJ_CORE,
                                                               (unsigned)(i % n_cores));
        if (!core) continue;
        pool->cpusets[i] = hwloc_bitmap_dup(core->cpuset);
        hwloc_bitmap_singlify(pool->cpusets[i]);
    }
    return n;
}

moira_status_t moira_threadpool_create(int n_threads, int numa_node,
                                       moira_threadpool_t **out_pool) {
    *out_pool = NULL;
    moira_threadpool_t *pool = calloc(1, sizeof(*pool));
    if (!pool) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a thread pool");
    pool->n_threads = assign_cpusets(pool, n_threads, numa_node);
    if (!pool->cpusets) pool->cpusets = calloc((size_t)pool->n_threads, sizeof(*pool->cpusets));
    pthread_mutex_init(&pool->loop_mutex, NULL);
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->start, NULL);
    pthread_cond_init(&pool->finished, NULL);
    pool->workers = calloc((size_t)pool->n_threads, sizeof(pthread_t));
    if (!pool->workers || !pool->cpusets) {
        moira_threadpool_destroy(pool);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate a thread pool");
    }
    for (int i = 1; i < pool->n_threads; i++) {
        worker_arg_t *arg = malloc(sizeof(*arg));
        if (arg) *arg = (worker_arg_t){.pool = pool, .thread = i};
        if (!arg || pthread_create(&pool->workers[i], NULL, worker_main, arg) != 0) {
            free(arg);
            MOIRA_LOG_W("thread pool: could only start %d of %d threads", i, pool->n_threads);
            pool->n_threads = i;
            break;
        }
    }
    *out_pool = pool;
    return MOIRA_OK_STATUS;
}

void moira_threadpool_destroy(moira_threadpool_t *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    pool->stopping = true;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads && pool->workers; i++)
        pthread_join(pool->workers[i], NULL);
    for (int i = 0; pool->cpusets && i < pool->n_threads; i++)
        if (pool->cpusets[i]) hwloc_bitmap_free(pool->cpusets[i]);
    free(pool->cpusets);
    free(pool->workers);
    pthread_mutex_destroy(&pool->loop_mutex);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->start);
    pthread_cond_destroy(&pool->finished);
    free(pool);
}

int moira_threadpool_size(const moira_threadpool_t *pool) {
    return pool->n_threads;
}

void moira_threadpool_parallel_for(moira_threadpool_t *pool, int64_t n, int64_t grain,
                                   moira_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    /* Small loops, or a one-thread pool, are not worth waking anyone for. */
    if (pool->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&pool->loop_mutex);
    int64_t chunks_wanted = (int64_t)pool->n_threads * 4;
    int64_t chunk = (n + chunks_wanted - 1) / chunks_wanted;
    if (chunk < grain) chunk = grain;
    pthread_mutex_lock(&pool->mutex);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n = n;
    pool->chunk = chunk;
    atomic_store(&pool->next, 0);
    pool->running = pool->n_threads - 1;
    pool->generation++;
    atomic_store(&pool->published_running, pool->running);
    atomic_store(&pool->published_generation, pool->generation);
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mutex);
    run_chunks(pool, 0);
    poll_while_positive(&pool->published_running);
    pthread_mutex_lock(&pool->mutex);
    while (pool->running > 0)
        pthread_cond_wait(&pool->finished, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
    pthread_mutex_unlock(&pool->loop_mutex);
}
