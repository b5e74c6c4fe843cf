/* AVX512-BF16 decode-attention micro-kernels over a bf16 cache (mla_decode.h): `vdpbf16ps` does
 * two bf16 multiply-adds per f32 lane, twice the f32 FMA's work per instruction. Compiled with
 * AVX-512 and AVX512_BF16 flags; called only where the CPU has them. A bf16 cache is held to
 * bf16's limit (DESIGN.md §4), so the queries and the softmax weights are rounded to bf16 too;
 * sums stay f32.
 *
 * Pairs run along the dot product: for the scores, pairs of latent (and rope) elements, which
 * lie side by side in a cache row, against the queries' same pairs, laid out [pairs][16 queries];
 * for the weighted sum, pairs of rows, interleaved column by column in registers, against each
 * query's pair of weights. The weighted sum's accumulators hold their columns in the interleave's
 * order and are put back in place when stored. Needs even latent and rope sizes. */
#include "backends/cpu/mla_decode.h"

#include <string.h>

#include "backends/cpu/mla_decode_avx512.h"
#include "backends/cpu/simd_avx512.h"

#define Q MOIRA_CPU_DECODE_QUERIES
#define SCORE_KEYS MOIRA_AVX512_DECODE_TILE

/* One 32-bit lane per query per pair of elements. */
static size_t layout_bytes(int64_t latent, int64_t rope) {
    return (size_t)((latent + rope) / 2 * Q) * sizeof(uint32_t);
}

/* A pair of scaled query elements as bf16, the first in the low half (as they lie in memory). */
static uint32_t pair(const float *q, int64_t d, float scale) {
    return (uint32_t)moira_f32_to_bf16(q[d] * scale) | (uint32_t)moira_f32_to_bf16(q[d + 1] * scale)
                                                           << 16;
}

static void prepare(const moira_cpu_decode_queries_t *queries, void *raw) {
    uint32_t *layout = raw;
    int64_t latent = queries->latent, rope = queries->rope;
    memset(layout, 0, layout_bytes(latent, rope));
    for (int i = 0; i < queries->n; i++) {
        for (int64_t d = 0; d < latent; d += 2)
            layout[d / 2 * Q + i] = pair(queries->q_lat[i], d, queries->scale);
        for (int64_t d = 0; d < rope; d += 2)
            layout[(latent + d) / 2 * Q + i] = pair(queries->q_pe[i], d, queries->scale);
    }
}

/* acc[j] (lane i) += sum over the pairs p < n_pairs of query i's pair p . key j's pair p, the
 * key's pair broadcast from memory as one 32-bit value. Prefetches `ahead` as the f32 kernel
 * does, one line per 32 elements. */
static inline __attribute__((always_inline)) void dots(const uint32_t *layout,
                                                       const void *const k[],
                                                       const void *const ahead[], int64_t n_pairs,
                                                       __m512 acc[SCORE_KEYS]) {
    for (int64_t p = 0; p < n_pairs; p++) {
        if ((p & 15) == 0)
#pragma GCC unroll 8
            for (int j = 0; j < SCORE_KEYS; j++)
                _mm_prefetch((const char *)((const uint16_t *)ahead[j] + 2 * p), _MM_HINT_T1);
        __m512bh qv = (__m512bh)_mm512_load_si512(layout + p * Q);
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++) {
            uint32_t key_pair;
            memcpy(&key_pair, (const uint16_t *)k[j] + 2 * p, sizeof(key_pair));
            acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_set1_epi32((int)key_pair));
        }
    }
}

/* scores[j] = the 16 queries' scores against row j, as the f32 kernel lays them out. */
static void scores(const uint32_t *layout, int64_t latent, int64_t rope,
                   const moira_cpu_decode_rows_t *rows, float *out) {
    for (int j0 = 0; j0 < rows->n; j0 += SCORE_KEYS) {
        const void *kc[SCORE_KEYS], *kp[SCORE_KEYS], *ac[SCORE_KEYS], *ap[SCORE_KEYS];
        int n = moira_avx512_decode_tile(rows, j0, sizeof(uint16_t), kc, kp, ac, ap);
        __m512 acc[SCORE_KEYS];
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            acc[j] = _mm512_setzero_ps();
        dots(layout, kc, ac, latent / 2, acc);
        dots(layout + latent / 2 * Q, kp, ap, rope / 2, acc);
        for (int j = 0; j < n; j++)
            _mm512_store_ps(out + (j0 + j) * Q, acc[j]);
    }
}

/* The weights of rows 2m and 2m+1 as one bf16 pair per query (lane), rounded once; the rounded
 * weights are what the normaliser then sums, so the outputs are weighted exactly as normalised.
 * A missing last row gets weight 0. Returns the sum of the rounded weights. */
static __m512 pair_weights(int n, const float *p, uint32_t *pairs) {
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 2) {
        __m512 first = _mm512_load_ps(p + j * Q);
        __m512 second = j + 1 < n ? _mm512_load_ps(p + (j + 1) * Q) : _mm512_setzero_ps();
        __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(first));
        __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(second));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(lo, 16)));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(hi, 16)));
        _mm512_store_si512(pairs + j / 2 * Q, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    return sum;
}

/* Where the interleave of two rows puts columns: unpacklo of 32 bf16 columns holds columns
 * 0-3, 8-11, 16-19, 24-27 of its 128-bit lanes, unpackhi the others. These indices gather a
 * natural-order pair of registers (columns 0-15, 16-31) into that order and back. */
static const int to_lo[16] = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
static const int to_hi[16] = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
static const int from_0[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
static const int from_1[16] = {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

/* Columns [col, col + 32) of 8 queries' outputs: loaded (rescaled, or zero when fresh) into the
 * interleave's order, every pair of rows added with each query's pair of weights, stored back
 * in natural order. Lanes past `latent` are masked on every load and store. */
static void accumulate_tile(int n_queries, int64_t latent, int64_t col, int i0,
                            const moira_cpu_decode_rows_t *rows, int n_rows, const uint32_t *pairs,
                            const float *rescale, bool fresh, float *out) {
    __m512i lo_idx = _mm512_loadu_si512(to_lo), hi_idx = _mm512_loadu_si512(to_hi);
    __m512i idx_0 = _mm512_loadu_si512(from_0), idx_1 = _mm512_loadu_si512(from_1);
    __mmask16 mask_0 = moira_avx512_cols_mask((int)col, (int)latent);
    __mmask16 mask_1 = moira_avx512_cols_mask((int)col + 16, (int)latent);
    int64_t left = latent - col;
    __mmask32 row_mask = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1ull << left) - 1);
    int ni = n_queries - i0 < 8 ? n_queries - i0 : 8, query[8];
    for (int i = 0; i < 8; i++)
        query[i] = i0 + (i < ni ? i : ni - 1);
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        const float *o = out + query[i] * latent + col;
        __m512 r = _mm512_set1_ps(rescale[query[i]]);
        __m512 o0 = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask_0, o);
        __m512 o1 = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask_1, o + 16);
        acc[i][0] = _mm512_mul_ps(r, _mm512_permutex2var_ps(o0, lo_idx, o1));
        acc[i][1] = _mm512_mul_ps(r, _mm512_permutex2var_ps(o0, hi_idx, o1));
    }
    const uint16_t *c = rows->c;
    for (int j = 0; j < n_rows; j += 2) {
        __m512i first = _mm512_maskz_loadu_epi16(row_mask, c + j * rows->c_stride + col);
        __m512i second =
            j + 1 < n_rows ? _mm512_maskz_loadu_epi16(row_mask, c + (j + 1) * rows->c_stride + col)
                           : _mm512_setzero_si512();
        __m512bh v_lo = (__m512bh)_mm512_unpacklo_epi16(first, second);
        __m512bh v_hi = (__m512bh)_mm512_unpackhi_epi16(first, second);
        const uint32_t *w = pairs + j / 2 * Q;
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512bh weight = (__m512bh)_mm512_set1_epi32((int)w[query[i]]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], v_lo, weight);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], v_hi, weight);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        if (i >= ni) continue;
        float *o = out + query[i] * latent + col;
        _mm512_mask_storeu_ps(o, mask_0, _mm512_permutex2var_ps(acc[i][0], idx_0, acc[i][1]));
        _mm512_mask_storeu_ps(o + 16, mask_1, _mm512_permutex2var_ps(acc[i][0], idx_1, acc[i][1]));
    }
}

static void fold(const void *layout, const moira_cpu_decode_queries_t *queries,
                 const moira_cpu_decode_rows_t *rows, moira_cpu_decode_state_t *state,
                 float *scratch) {
    float *p = scratch, *rescale = scratch + MOIRA_CPU_DECODE_KEYS * Q;
    uint32_t *pairs = (uint32_t *)(rescale + Q);
    scores(layout, queries->latent, queries->rope, rows, p);
    moira_avx512_decode_softmax(rows->n, p, state, rescale);
    moira_avx512_decode_sum(state, rescale, pair_weights(rows->n, p, pairs));
    for (int64_t col = 0; col < queries->latent; col += 32)
        for (int i0 = 0; i0 < queries->n; i0 += 8)
            accumulate_tile(queries->n, queries->latent, col, i0, rows, rows->n, pairs, rescale,
                            state->fresh, state->out);
    state->fresh = false;
}

const moira_cpu_decode_kernels_t moira_cpu_decode_avx512_bf16 = {
    .isa = MOIRA_CPU_ISA_AVX512_BF16,
    .dtype = MOIRA_DTYPE_BF16,
    .pairs = true,
    .layout_bytes = layout_bytes,
    .prepare = prepare,
    .fold = fold,
};
