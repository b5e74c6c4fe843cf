/* The machine's read bandwidth: a pure read reduction (every byte loaded once, summed, nothing
 * written) over one buffer far larger than the last-level cache, on as many threads as Moira's
 * cpu device, bound one per core. The bound for kernels that stream a weight matrix once (dense
 * projections at decode): unlike the STREAM triad it has no write traffic, so it is what a
 * read-only kernel can reach. */
#ifndef MOIRA_BENCH_STREAM_READ_H
#define MOIRA_BENCH_STREAM_READ_H

#include "runtime/status.h"

typedef struct moira_stream_read moira_stream_read_t;

/* Allocates and first-touches the buffer (8x the largest cache hwloc reports, at least 256 MiB)
 * with `threads` threads (0: one per core). Caller closes it. */
moira_status_t moira_stream_read_open(int threads, moira_stream_read_t **out_reader);

/* Runs `passes` passes over the buffer; the best pass's bandwidth in GB/s (1e9 bytes/s). */
double moira_stream_read_run(moira_stream_read_t *reader, int passes);

/* Bytes of the buffer. */
double moira_stream_read_bytes(const moira_stream_read_t *reader);

void moira_stream_read_close(moira_stream_read_t *reader);

#endif
