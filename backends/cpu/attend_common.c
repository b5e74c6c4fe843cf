/* The online softmax between the attention micro-kernels (attend.h). */
#include "backends/cpu/attend.h"

#include <math.h>
#include <string.h>

const moira_cpu_attend_kernels_t *moira_cpu_attend_kernels(moira_cpu_isa_t isa) {
    return isa >= MOIRA_CPU_ISA_AVX512 ? &moira_cpu_attend_avx512 : &moira_cpu_attend_portable;
}

/* A fresh state for each query block: nothing seen yet, so the first visible key sets the max. */
void moira_cpu_attend_begin(const moira_cpu_attend_t *a, moira_cpu_attend_state_t *state,
                            float *out) {
    for (int i = 0; i < MOIRA_CPU_ATTEND_QUERIES; i++) {
        state->max[i] = -INFINITY;
        state->sum[i] = 0;
    }
    state->out = out;
    memset(out, 0, (size_t)(a->n_queries * a->dim_v) * sizeof(float));
}

/* Callers size their per-thread scratch from this, so the transposed queries always fit. */
size_t moira_cpu_attend_scratch_floats(int64_t dim_a, int64_t dim_b) {
    return (size_t)(2 * MOIRA_CPU_ATTEND_KEYS + dim_a + dim_b) * MOIRA_CPU_ATTEND_QUERIES;
}

/* q_t[d][i] = query i's element d (q_a's, then q_b's), zero past the last query: built once per
 * call, it lets the score kernels read all 16 queries' element d with one aligned load. */
static void transpose_queries(const moira_cpu_attend_t *a, float *q_t) {
    const int Q = MOIRA_CPU_ATTEND_QUERIES;
    memset(q_t, 0, (size_t)((a->dim_a + a->dim_b) * Q) * sizeof(float));
    for (int i = 0; i < a->n_queries; i++) {
        for (int64_t d = 0; d < a->dim_a; d++)
            q_t[d * Q + i] = a->q_a[i][d];
        for (int64_t d = 0; d < a->dim_b; d++)
            q_t[(a->dim_a + d) * Q + i] = a->q_b[i][d];
    }
}

/* Per block: scores, masking, the new running max per query, exp(score - max) as weights, the
 * old sums and outputs rescaled by exp(old max - new max), then the weighted values. Masked keys
 * and queries that have seen no key get weight exactly 0. */
void moira_cpu_attend_keys(const moira_cpu_attend_kernels_t *kernels, const moira_cpu_attend_t *a,
                           moira_cpu_attend_state_t *state, int64_t key0, int64_t n_keys,
                           moira_cpu_attend_visible_fn visible, const void *visible_ctx,
                           float *scratch) {
    const int Q = MOIRA_CPU_ATTEND_QUERIES;
    float *scores = scratch, *p = scratch + MOIRA_CPU_ATTEND_KEYS * Q;
    float *q_t = p + MOIRA_CPU_ATTEND_KEYS * Q;
    transpose_queries(a, q_t);
    moira_cpu_attend_t with_t = *a;
    with_t.q_t = q_t;
    a = &with_t;
    for (int64_t block = key0; block < key0 + n_keys; block += MOIRA_CPU_ATTEND_KEYS) {
        int n = key0 + n_keys - block < MOIRA_CPU_ATTEND_KEYS ? (int)(key0 + n_keys - block)
                                                              : MOIRA_CPU_ATTEND_KEYS;
        kernels->scores(a, block, n, scores);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < Q; i++)
                if (i >= a->n_queries || (visible && !visible(visible_ctx, i, block + j)))
                    scores[j * Q + i] = -INFINITY;
        float rescale[MOIRA_CPU_ATTEND_QUERIES];
        for (int i = 0; i < Q; i++) {
            float block_max = -INFINITY;
            for (int j = 0; j < n; j++)
                block_max = scores[j * Q + i] > block_max ? scores[j * Q + i] : block_max;
            float new_max = block_max > state->max[i] ? block_max : state->max[i];
            rescale[i] = state->max[i] == -INFINITY ? 1.0f : expf(state->max[i] - new_max);
            state->max[i] = new_max;
            for (int j = 0; j < n; j++)
                p[j * Q + i] = new_max == -INFINITY ? -INFINITY : scores[j * Q + i] - new_max;
        }
        kernels->exp(p, (int64_t)n * Q);
        for (int i = 0; i < Q; i++) {
            double sum = 0;
            for (int j = 0; j < n; j++) {
                if (scores[j * Q + i] == -INFINITY) p[j * Q + i] = 0;
                sum += p[j * Q + i];
            }
            state->sum[i] = state->sum[i] * rescale[i] + sum;
        }
        kernels->accumulate(a, block, n, p, rescale, state->out);
    }
}
