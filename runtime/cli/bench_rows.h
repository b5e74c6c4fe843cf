/* The result rows of the kernel benches (moe, mla, linear) and how they are printed: a table,
 * or with --json {"rows": [{"bench", "dtype", "tokens" | "context", "moira_us", "peer",
 * "peer_us", "ratio", "gflops", "gbs"}]}, linear rows also naming their "weight" ("q_proj", ...,
 * "lm_head") after "bench", mla rows also "tokens", "roofline_us" and "roofline_ratio". ratio =
 * peer_us / moira_us, so above 1 Moira is faster; for a bandwidth peer peer_us is the time the peer
 * needs to stream the bytes Moira read, so ratio is Moira's achieved bandwidth over the peer's. */
#ifndef MOIRA_RUNTIME_CLI_BENCH_ROWS_H
#define MOIRA_RUNTIME_CLI_BENCH_ROWS_H

#include <stdbool.h>
#include <stdio.h>

#include "runtime/backend.h"
#include "runtime/cli/bench.h"

typedef struct moira_bench_row {
    char bench[16];   /* "moe", "mla", "mla_absorb", "linear" */
    char weight[16];  /* linear: the projection ("q_proj", "lm_head", ...); "" for the others */
    char dtype[8];    /* weight dtype: "f32", "bf16" */
    char size_key[8]; /* "tokens" or "context" */
    long long size;
    double moira_us;
    char peer[16];  /* "openblas", "clblast", "stream_triad", "stream_read"; "" when none */
    double peer_us; /* NAN without a peer */
    double gflops;  /* Moira's */
    double gbs;     /* Moira's: weight bytes (moe) or cache bytes (mla) read per second */
    /* mla: query tokens per launch, printed as "tokens" beside "context"; 0 for the others */
    long long tokens;
    /* mla: max(FLOPs / FMA peak, bytes / read bandwidth), printed with roofline_ratio =
     * roofline_us / moira_us (null when NAN); 0 for rows without a roofline (not printed) */
    double roofline_us;
} moira_bench_row_t;

/* A growable list of rows. */
typedef struct moira_bench_rows {
    moira_bench_row_t *rows; /* owned */
    int count, capacity;
} moira_bench_rows_t;

/* Appends a copy; false when out of memory. */
bool moira_bench_rows_add(moira_bench_rows_t *rows, const moira_bench_row_t *row);
void moira_bench_rows_free(moira_bench_rows_t *rows);

/* peer_us / moira_us, NAN without a peer. */
double moira_bench_row_ratio(const moira_bench_row_t *row);

/* The rows as JSON (one object) or as a table under `title`. */
void moira_bench_rows_print(FILE *out, const moira_bench_rows_t *rows, bool json,
                            const char *title);

/* Starts the runtime and finds --backend's device (default cpu:0). On failure the runtime is shut
 * down again and the error returned; on success the caller shuts it down. */
moira_status_t moira_bench_open_device(const moira_bench_args_t *args, moira_device_t **out_device);

/* The cpu device's thread count (its "threads" detail); 0 for devices without one. */
int moira_bench_device_threads(const moira_device_info_t *info);

/* Launches `launches` in order on `queue` and waits for them; the wall time in *out_seconds. */
moira_status_t moira_bench_time_launches(moira_queue_t *queue, const moira_op_launch_t *launches,
                                         int n_launches, double *out_seconds);

#endif
