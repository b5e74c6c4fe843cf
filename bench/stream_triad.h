/* The machine's memory bandwidth, measured the way STREAM's triad does: a[i] = b[i] + s * c[i]
 * over three arrays far larger than the last-level cache, counting the three arrays' bytes per
 * pass (STREAM's convention: the write-allocate read of `a` is not counted). The peer that
 * memory-bound kernels (MLA decode over the latent cache) are held against. */
#ifndef MOIRA_BENCH_STREAM_TRIAD_H
#define MOIRA_BENCH_STREAM_TRIAD_H

#include "runtime/status.h"

typedef struct moira_stream_triad moira_stream_triad_t;

/* Allocates and first-touches the arrays (each at least 4x the largest cache hwloc reports, and
 * at least 64 MiB) with `threads` threads bound one per core, as Moira's cpu device binds its
 * own (0: one per core). Caller closes it. */
moira_status_t moira_stream_triad_open(int threads, moira_stream_triad_t **out_triad);

/* Runs `passes` triads; the best pass's bandwidth in GB/s (1e9 bytes per second). */
double moira_stream_triad_run(moira_stream_triad_t *triad, int passes);

/* Bytes of one array. */
double moira_stream_triad_array_bytes(const moira_stream_triad_t *triad);

void moira_stream_triad_close(moira_stream_triad_t *triad);

#endif
