/* AVX-512 attention micro-kernels (attend.h). Scores are 4 queries x 4 keys of 16-lane partial
 * dot products (8 loads per 16 FMAs), reduced together by one transposing add tree; values are
 * accumulated 4 queries x 64 columns at a time in registers. Tails of the dimensions use masked
 * loads; missing queries and keys of a 4 x 4 block repeat a valid row and are not stored. Compiled
 * with AVX-512 flags; used only where the CPU has them. */
#include "backends/cpu/attend.h"

#include "backends/cpu/simd_avx512.h"

/* The 16 lane-sums of v[0..15] in one vector: lane 4m + n holds sum(v[4n + m]). Four levels of
 * shuffles and adds (combine 256-bit halves, then 128-bit quarters, then pairs, then lanes). */
static inline __attribute__((always_inline)) __m512 reduce16(const __m512 v[16]) {
    __m512 p[8], q[4], r[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        p[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        r[i] = _mm512_add_ps(_mm512_unpacklo_ps(q[2 * i], q[2 * i + 1]),
                             _mm512_unpackhi_ps(q[2 * i], q[2 * i + 1]));
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(r[0]), _mm512_castps_pd(r[1]));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(r[0]), _mm512_castps_pd(r[1]));
    return _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
}

/* acc[4 i + j] += q[i] . k[j] over n elements. */
static inline __attribute__((always_inline)) void
dots4x4(const float *const q[4], const float *const k[4], int64_t n, __m512 acc[16]) {
    int64_t d = 0;
    for (; d + 16 <= n; d += 16) {
        __m512 kv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            kv[j] = _mm512_loadu_ps(k[j] + d);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m512 qv = _mm512_loadu_ps(q[i] + d);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                acc[4 * i + j] = _mm512_fmadd_ps(qv, kv[j], acc[4 * i + j]);
        }
    }
    if (d < n) {
        __mmask16 mask = (__mmask16)((1u << (n - d)) - 1);
        __m512 kv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            kv[j] = _mm512_maskz_loadu_ps(mask, k[j] + d);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m512 qv = _mm512_maskz_loadu_ps(mask, q[i] + d);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                acc[4 * i + j] = _mm512_fmadd_ps(qv, kv[j], acc[4 * i + j]);
        }
    }
}

/* Key groups outer, query groups inner: a group's 4 key rows stay in L1 for all 16 queries. */
static void scores(const moira_cpu_attend_t *a, int64_t key0, int n_keys, float *out) {
    const __m512 scale = _mm512_set1_ps(a->scale);
    for (int j0 = 0; j0 < n_keys; j0 += 4) {
        int nj = n_keys - j0 < 4 ? n_keys - j0 : 4;
        const float *ka[4], *kb[4];
        for (int j = 0; j < 4; j++) {
            int64_t key = key0 + j0 + (j < nj ? j : nj - 1);
            ka[j] = a->k_a + key * a->k_a_stride;
            kb[j] = a->k_b + key * a->k_b_stride;
        }
        for (int i0 = 0; i0 < a->n_queries; i0 += 4) {
            int ni = a->n_queries - i0 < 4 ? a->n_queries - i0 : 4;
            const float *qa[4], *qb[4];
            for (int i = 0; i < 4; i++) {
                qa[i] = a->q_a[i0 + (i < ni ? i : ni - 1)];
                qb[i] = a->q_b[i0 + (i < ni ? i : ni - 1)];
            }
            __m512 acc[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_setzero_ps();
            dots4x4(qa, ka, a->dim_a, acc);
            dots4x4(qb, kb, a->dim_b, acc);
            /* lane 4 j + i: query i against key j */
            __m512 sums = _mm512_mul_ps(reduce16(acc), scale);
            __mmask8 rows = (__mmask8)((1u << ni) - 1);
            for (int j = 0; j < nj; j++) {
                __m128 four = j == 0   ? _mm512_extractf32x4_ps(sums, 0)
                              : j == 1 ? _mm512_extractf32x4_ps(sums, 1)
                              : j == 2 ? _mm512_extractf32x4_ps(sums, 2)
                                       : _mm512_extractf32x4_ps(sums, 3);
                _mm_mask_storeu_ps(out + (j0 + j) * MOIRA_CPU_ATTEND_QUERIES + i0, rows, four);
            }
        }
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
