/* Blocked attention for the MLA kernels: a block of up to 16 queries against a block of keys,
 * scores in two dot-product parts (the latent or nope part and the shared rope part), values
 * that may be the keys' own rows (absorbed decode reads c as key and value), and an online
 * softmax (running max, normaliser and output per query) so that keys are read once, block by
 * block, however long the cache. Private to backends/cpu/.
 *
 * The score and value micro-kernels are per instruction set; the softmax bookkeeping between
 * them is shared C (attend_common.c). */
#ifndef MOIRA_BACKENDS_CPU_ATTEND_H
#define MOIRA_BACKENDS_CPU_ATTEND_H

#include <stddef.h>
#include <stdint.h>

#include "backends/cpu/cpu_isa.h"

#define MOIRA_CPU_ATTEND_QUERIES 16 /* queries per block */
/* Keys per block: the softmax bookkeeping between the kernels is paid once per 64 keys (32 was
 * about 5% slower at 16K context, 16 slower still). */
#define MOIRA_CPU_ATTEND_KEYS 64

/* One query block and the keys it reads. Pointers borrowed. */
typedef struct moira_cpu_attend {
    int n_queries;                              /* 1 .. MOIRA_CPU_ATTEND_QUERIES */
    const float *q_a[MOIRA_CPU_ATTEND_QUERIES]; /* dim_a each */
    const float *q_b[MOIRA_CPU_ATTEND_QUERIES]; /* dim_b each */
    const float *k_a, *k_b, *v;                 /* key s's rows at k_a + s * k_a_stride, ... */
    int64_t k_a_stride, k_b_stride, v_stride;
    int64_t dim_a, dim_b, dim_v;
    float scale;
    /* The queries transposed, [dim_a + dim_b][16]: step d of q_a then of q_b holds that element
     * of every query (zero for missing queries). moira_cpu_attend_keys builds it in its scratch
     * once per call, so a score kernel may read 16 queries with one load. */
    const float *q_t;
} moira_cpu_attend_t;

typedef struct moira_cpu_attend_kernels {
    moira_cpu_isa_t isa;
    /* scores[j * 16 + i] = scale * (q_a[i] . k_a[key0 + j] + q_b[i] . k_b[key0 + j]) for
     * j < n_keys (<= MOIRA_CPU_ATTEND_KEYS), i < n_queries. */
    void (*scores)(const moira_cpu_attend_t *a, int64_t key0, int n_keys, float *scores);
    /* out[i][c] = out[i][c] * rescale[i] + sum_j p[j * 16 + i] * v[key0 + j][c], out rows
     * dim_v apart. */
    void (*accumulate)(const moira_cpu_attend_t *a, int64_t key0, int n_keys, const float *p,
                       const float *rescale, float *out);
    /* x[i] = exp(x[i]) for i < n (exp(-inf) = 0). */
    void (*exp)(float *x, int64_t n);
} moira_cpu_attend_kernels_t;

const moira_cpu_attend_kernels_t *moira_cpu_attend_kernels(moira_cpu_isa_t isa);

extern const moira_cpu_attend_kernels_t moira_cpu_attend_portable;
extern const moira_cpu_attend_kernels_t moira_cpu_attend_avx512;

/* A query block's running softmax state over the keys seen so far. */
typedef struct moira_cpu_attend_state {
    float max[MOIRA_CPU_ATTEND_QUERIES];  /* -inf until a key is visible */
    double sum[MOIRA_CPU_ATTEND_QUERIES]; /* of exp(score - max) */
    float *out;                           /* [n_queries][dim_v], unnormalised; borrowed */
} moira_cpu_attend_state_t;

/* Starts a state: max -inf, sums and outputs zero. */
void moira_cpu_attend_begin(const moira_cpu_attend_t *a, moira_cpu_attend_state_t *state,
                            float *out);

/* Which keys each query sees in a block: visible(ctx, query, key) for key in [key0, key0 + n). */
typedef int (*moira_cpu_attend_visible_fn)(const void *ctx, int query, int64_t key);

/* Floats of scratch moira_cpu_attend_keys needs for queries of these dimensions: scores and
 * weights of one key block, and the transposed queries. */
size_t moira_cpu_attend_scratch_floats(int64_t dim_a, int64_t dim_b);

/* Folds keys [key0, key0 + n_keys) into the state, block by block. `visible` NULL: all keys
 * visible. `scratch` (64-byte aligned) holds moira_cpu_attend_scratch_floats(dim_a, dim_b)
 * floats. */
void moira_cpu_attend_keys(const moira_cpu_attend_kernels_t *kernels, const moira_cpu_attend_t *a,
                           moira_cpu_attend_state_t *state, int64_t key0, int64_t n_keys,
                           moira_cpu_attend_visible_fn visible, const void *visible_ctx,
                           float *scratch);

#endif
