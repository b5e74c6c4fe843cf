/* The named benchmarks behind `moira bench NAME` (DESIGN.md §7): each measures Moira and its peer
 * in the same run and reports their ratio. */
#ifndef MOIRA_RUNTIME_CLI_BENCH_H
#define MOIRA_RUNTIME_CLI_BENCH_H

#include <stdbool.h>

/* The options every bench shares; a bench reads the ones it uses. */
typedef struct moira_bench_args {
    const char *backend; /* --backend DEVICE, NULL when not given */
    const char *model;   /* --model FILE, NULL when not given */
    long long tokens;    /* --tokens N, 0 when not given */
    long long iters;     /* --iters N, 0 when not given */
    const char *text;    /* --text FILE (tokenize), NULL when not given */
    const char *dtype;   /* --dtype NAME (moe: one weight format), NULL when not given */
    bool json;           /* --json: one JSON object on stdout */
} moira_bench_args_t;

/* Each returns the process exit code (0, or 2 for bad input, with the error printed). */
int moira_bench_plan(const moira_bench_args_t *args);
int moira_bench_moe(const moira_bench_args_t *args);
int moira_bench_mla(const moira_bench_args_t *args);
int moira_bench_linear(const moira_bench_args_t *args);
int moira_bench_tokenize(const moira_bench_args_t *args);
int moira_bench_generate(const moira_bench_args_t *args);
int moira_bench_serve(const moira_bench_args_t *args);
int moira_bench_alltoall(const moira_bench_args_t *args);

/* Seconds from a monotonic clock. */
double moira_bench_seconds(void);

#endif
