/* The cpu benchmark peer: the routed experts of a MoE layer as a user without Moira would run
 * them on the CPU, and a single dense projection (one sgemm). For every expert with tokens: gather
 * its rows, three cblas_sgemm calls (gate, up, down: the GEMMs of llama.cpp's and PyTorch's CPU
 * paths), silu(gate) * up between them, and a weighted scatter-add of the results into the tokens'
 * outputs. f32 weights, OpenBLAS running as many threads as Moira. OpenBLAS is loaded (dlopen) when
 * a bench first asks for it; nothing links it. */
#ifndef MOIRA_BENCH_OPENBLAS_PEER_H
#define MOIRA_BENCH_OPENBLAS_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

/* One MoE problem in host memory; every pointer is borrowed until the peer is closed. */
typedef struct moira_openblas_moe_problem {
    int64_t tokens, hidden, inter, experts, top_k;
    const float *x;           /* [T, D] */
    const int32_t *topk_idx;  /* [T, k], -1 for a dropped assignment */
    const float *topk_weight; /* [T, k] */
    const float *w1, *w3;     /* [E, I, D] gate_proj, up_proj */
    const float *w2;          /* [E, D, I] down_proj */
    float *y;                 /* [T, D], written by each run */
} moira_openblas_moe_problem_t;

typedef struct moira_openblas_moe moira_openblas_moe_t;

/* Whether OpenBLAS could be loaded (the first call loads it); without it every call below fails
 * with MOIRA_CODE_UNSUPPORTED and a message saying how to install it. */
bool moira_openblas_available(void);

/* Sets OpenBLAS to `threads` threads and allocates the loop's scratch. Caller closes the peer. */
moira_status_t moira_openblas_moe_open(const moira_openblas_moe_problem_t *problem, int threads,
                                       moira_openblas_moe_t **out_peer);

/* Runs the whole loop once (y = sum over the tokens' experts); its wall time in *out_seconds. */
moira_status_t moira_openblas_moe_run(moira_openblas_moe_t *peer, double *out_seconds);

void moira_openblas_moe_close(moira_openblas_moe_t *peer);

/* One dense projection as a user would call OpenBLAS for it: y[T, N] = x[T, K] W[N, K]^T, one
 * cblas_sgemm (row major, W transposed) on `threads` threads; the call's wall time in
 * *out_seconds. Pointers are borrowed for the call. */
moira_status_t moira_openblas_linear(int threads, int64_t tokens, int64_t out_features,
                                     int64_t in_features, const float *x, const float *w, float *y,
                                     double *out_seconds);

/* "OpenBLAS 0.3.21 (Cooperlake kernels)" into `out` (`size` bytes). */
void moira_openblas_describe(char *out, size_t size);

#endif
