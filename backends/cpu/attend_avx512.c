/* AVX-512 attention micro-kernels (attend.h). Scores are 16 queries (one vector, from the
 * transposed queries) x 8 keys per register block, one load per 8 FMAs; values are accumulated
 * 4 queries x 64 columns at a time in registers, tails of the value width by masked loads.
 * Compiled with AVX-512 flags; used only where the CPU has them. */
#include "backends/cpu/attend.h"

#include "backends/cpu/simd_avx512.h"

/* Keys per score group: 8 accumulators of 16 queries each, enough independent FMAs to hide
 * their latency. */
#define SCORE_KEYS 8
/* acc[j] (lane i) += sum over d < n of q_t[d][i] * k[j][d]: one load of the 16 queries' element
 * d serves all the keys, each key element is a broadcast operand of its FMA. Every 16 elements
 * (a cache line) it prefetches the same line of the key SCORE_KEYS rows on (`stride` floats
 * apart), so the next group's rows are on their way while this one computes: decode streams a
 * cache far larger than L2. */
static inline __attribute__((always_inline)) void
dots(const float *q_t, const float *const k[], int64_t n, int64_t stride, __m512 acc[SCORE_KEYS]) {
    for (int64_t d = 0; d < n; d++) {
        if ((d & 15) == 0)
#pragma GCC unroll 8
            for (int j = 0; j < SCORE_KEYS; j++)
                _mm_prefetch((const char *)(k[j] + d + SCORE_KEYS * stride), _MM_HINT_T0);
        __m512 qv = _mm512_loadu_ps(q_t + d * MOIRA_CPU_ATTEND_QUERIES);
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            acc[j] = _mm512_fmadd_ps(qv, _mm512_set1_ps(k[j][d]), acc[j]);
    }
}

/* Scores come out as rows of 16 queries per key, exactly the layout the softmax reads, so no
 * reduction or transposition is needed: groups of 8 keys against the transposed queries (a->q_t,
 * missing queries zero). A short last group repeats its last key and stores only the real ones. */
static void scores(const moira_cpu_attend_t *a, int64_t key0, int n_keys, float *out) {
    const __m512 scale = _mm512_set1_ps(a->scale);
    const float *q_tb = a->q_t + a->dim_a * MOIRA_CPU_ATTEND_QUERIES;
    for (int j0 = 0; j0 < n_keys; j0 += SCORE_KEYS) {
        int nj = n_keys - j0 < SCORE_KEYS ? n_keys - j0 : SCORE_KEYS;
        const float *ka[SCORE_KEYS], *kb[SCORE_KEYS];
        for (int j = 0; j < SCORE_KEYS; j++) {
            int64_t key = key0 + j0 + (j < nj ? j : nj - 1);
            ka[j] = a->k_a + key * a->k_a_stride;
            kb[j] = a->k_b + key * a->k_b_stride;
        }
        __m512 acc[SCORE_KEYS];
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            acc[j] = _mm512_setzero_ps();
        dots(a->q_t, ka, a->dim_a, a->k_a_stride, acc);
        dots(q_tb, kb, a->dim_b, a->k_b_stride, acc);
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            if (j < nj)
                _mm512_storeu_ps(out + (j0 + j) * MOIRA_CPU_ATTEND_QUERIES,
                                 _mm512_mul_ps(acc[j], scale));
    }
}

/* Columns [c, c + 64) of 4 queries' outputs: rescaled, then every key's weighted value row.
 * Column blocks outer, query groups inner: the block's value slices stay in L1 for all 16
 * queries. */
static void accumulate(const moira_cpu_attend_t *a, int64_t key0, int n_keys, const float *p,
                       const float *rescale, float *out) {
    for (int64_t c = 0; c < a->dim_v; c += 64) {
        __mmask16 mask[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            mask[u] = moira_avx512_cols_mask((int)(c + 16 * u), (int)a->dim_v);
        for (int i0 = 0; i0 < a->n_queries; i0 += 4) {
            int ni = a->n_queries - i0 < 4 ? a->n_queries - i0 : 4;
            int query[4];
            for (int i = 0; i < 4; i++)
                query[i] = i0 + (i < ni ? i : ni - 1);
            __m512 acc[4][4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                __m512 r = _mm512_set1_ps(rescale[query[i]]);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    acc[i][u] = _mm512_mul_ps(
                        r, _mm512_maskz_loadu_ps(mask[u], out + query[i] * a->dim_v + c + 16 * u));
            }
            for (int j = 0; j < n_keys; j++) {
                const float *v = a->v + (key0 + j) * a->v_stride + c;
                const float *weights = p + j * MOIRA_CPU_ATTEND_QUERIES;
                __m512 vv[4];
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    vv[u] = _mm512_maskz_loadu_ps(mask[u], v + 16 * u);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    __m512 w = _mm512_set1_ps(weights[query[i]]);
#pragma GCC unroll 4
                    for (int u = 0; u < 4; u++)
                        acc[i][u] = _mm512_fmadd_ps(w, vv[u], acc[i][u]);
                }
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    if (i < ni)
                        _mm512_mask_storeu_ps(out + query[i] * a->dim_v + c + 16 * u, mask[u],
                                              acc[i][u]);
        }
    }
}

/* The softmax weights of a whole block at once, so the exp is vectorised like the dot products. */
static void exp_all(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, moira_avx512_exp(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, mask, moira_avx512_exp(_mm512_maskz_loadu_ps(mask, x + i)));
    }
}

const moira_cpu_attend_kernels_t moira_cpu_attend_avx512 = {
    .isa = MOIRA_CPU_ISA_AVX512,
    .scores = scores,
    .accumulate = accumulate,
    .exp = exp_all,
};
