/* Portable attention micro-kernels (attend.h): plain loops, the reference every SIMD version
 * must match. */
#include "backends/cpu/attend.h"

#include <math.h>

static float dot(const float *x, const float *y, int64_t n) {
    float sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += x[i] * y[i];
    return sum;
}

/* One key at a time against every query: the plain form that the SIMD scores must match. */
static void scores(const moira_cpu_attend_t *a, int64_t key0, int n_keys, float *out) {
    for (int j = 0; j < n_keys; j++) {
        const float *k_a = a->k_a + (key0 + j) * a->k_a_stride;
        const float *k_b = a->k_b + (key0 + j) * a->k_b_stride;
        for (int i = 0; i < a->n_queries; i++)
            out[j * MOIRA_CPU_ATTEND_QUERIES + i] =
                a->scale * (dot(a->q_a[i], k_a, a->dim_a) + dot(a->q_b[i], k_b, a->dim_b));
    }
}

/* Rescale then add each weighted value row: the plain form of the SIMD accumulate. */
static void accumulate(const moira_cpu_attend_t *a, int64_t key0, int n_keys, const float *p,
                       const float *rescale, float *out) {
    for (int i = 0; i < a->n_queries; i++) {
        float *o = out + i * a->dim_v;
        for (int64_t c = 0; c < a->dim_v; c++)
            o[c] *= rescale[i];
        for (int j = 0; j < n_keys; j++) {
            float weight = p[j * MOIRA_CPU_ATTEND_QUERIES + i];
            const float *v = a->v + (key0 + j) * a->v_stride;
            for (int64_t c = 0; c < a->dim_v; c++)
                o[c] += weight * v[c];
        }
    }
}

/* libm exp, the accuracy the vector exp is held to. */
static void exp_all(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = expf(x[i]);
}

const moira_cpu_attend_kernels_t moira_cpu_attend_portable = {
    .isa = MOIRA_CPU_ISA_PORTABLE,
    .scores = scores,
    .accumulate = accumulate,
    .exp = exp_all,
};
