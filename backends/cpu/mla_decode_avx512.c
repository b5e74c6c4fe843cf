/* AVX-512 decode-attention micro-kernels over an f32 cache (mla_decode.h). Compiled with AVX-512
 * flags; called only where the CPU has them.
 *
 * The 16 queries of a group are the 16 lanes of a register throughout: the queries are stored
 * transposed, [latent + rope][16], so a score tile is 8 keys x 16 queries in 8 accumulators, one
 * load of the queries' element d serving 8 FMAs whose other operand is a key element broadcast
 * from memory; the scores come out as one register per key, which is what the softmax reads (a
 * per-query max or sum is a vertical max or add, no reduction across lanes); and the weighted
 * sum (the blocked attention's, attend.h) reads the weights of a row for 4 queries as broadcasts
 * against 4 registers of the row. */
#include "backends/cpu/mla_decode.h"

#include <string.h>

#include "backends/cpu/attend.h"
#include "backends/cpu/mla_decode_avx512.h"
#include "backends/cpu/simd_avx512.h"

#define Q MOIRA_CPU_DECODE_QUERIES
#define SCORE_KEYS MOIRA_AVX512_DECODE_TILE

static size_t layout_bytes(int64_t latent, int64_t rope) {
    return (size_t)((latent + rope) * Q) * sizeof(float);
}

/* q_t[d][i] = scale * (query i's q_lat then q_pe)[d]; lanes past the last query are zero, so
 * their scores are 0 and their outputs, never stored, stay finite. */
static void prepare(const moira_cpu_decode_queries_t *queries, void *raw) {
    float *q_t = raw;
    int64_t latent = queries->latent, rope = queries->rope;
    memset(q_t, 0, layout_bytes(latent, rope));
    for (int i = 0; i < queries->n; i++) {
        for (int64_t d = 0; d < latent; d++)
            q_t[d * Q + i] = queries->q_lat[i][d] * queries->scale;
        for (int64_t d = 0; d < rope; d++)
            q_t[(latent + d) * Q + i] = queries->q_pe[i][d] * queries->scale;
    }
}

/* acc[j] (lane i) += sum over d < n of q_t[d][i] * k[j][d]. Once per cache line of the keys it
 * prefetches the same line of the rows `ahead` (the block folded next), so they arrive in L2
 * while this block computes. */
static inline __attribute__((always_inline)) void dots(const float *q_t, const void *const k[],
                                                       const void *const ahead[], int64_t n,
                                                       __m512 acc[SCORE_KEYS]) {
    for (int64_t d = 0; d < n; d++) {
        if ((d & 15) == 0)
#pragma GCC unroll 8
            for (int j = 0; j < SCORE_KEYS; j++)
                _mm_prefetch((const char *)((const float *)ahead[j] + d), _MM_HINT_T1);
        __m512 qv = _mm512_load_ps(q_t + d * Q);
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            acc[j] = _mm512_fmadd_ps(qv, _mm512_set1_ps(((const float *)k[j])[d]), acc[j]);
    }
}

/* scores[j] = the 16 queries' scores against row j, for j < rows->n. */
static void scores(const float *q_t, int64_t latent, int64_t rope,
                   const moira_cpu_decode_rows_t *rows, float *out) {
    for (int j0 = 0; j0 < rows->n; j0 += SCORE_KEYS) {
        const void *kc[SCORE_KEYS], *kp[SCORE_KEYS], *ac[SCORE_KEYS], *ap[SCORE_KEYS];
        int n = moira_avx512_decode_tile(rows, j0, sizeof(float), kc, kp, ac, ap);
        __m512 acc[SCORE_KEYS];
#pragma GCC unroll 8
        for (int j = 0; j < SCORE_KEYS; j++)
            acc[j] = _mm512_setzero_ps();
        dots(q_t, kc, ac, latent, acc);
        dots(q_t + latent * Q, kp, ap, rope, acc);
        for (int j = 0; j < n; j++)
            _mm512_store_ps(out + (j0 + j) * Q, acc[j]);
    }
}

/* Scores, the online softmax, then the weighted rows through the blocked attention's own
 * accumulate (attend.h: a row is the value as well as the key), over outputs zeroed when fresh. */
static void fold(const void *layout, const moira_cpu_decode_queries_t *queries,
                 const moira_cpu_decode_rows_t *rows, moira_cpu_decode_state_t *state,
                 float *scratch) {
    float *p = scratch, *rescale = scratch + MOIRA_CPU_DECODE_KEYS * Q;
    scores(layout, queries->latent, queries->rope, rows, p);
    moira_avx512_decode_sum(state, rescale,
                            moira_avx512_decode_softmax(rows->n, p, state, rescale));
    if (state->fresh) memset(state->out, 0, (size_t)(queries->n * queries->latent) * sizeof(float));
    moira_cpu_attend_t values = {.n_queries = queries->n,
                                 .v = rows->c,
                                 .v_stride = rows->c_stride,
                                 .dim_v = queries->latent};
    moira_cpu_attend_avx512.accumulate(&values, 0, rows->n, p, rescale, state->out);
    state->fresh = false;
}

const moira_cpu_decode_kernels_t moira_cpu_decode_avx512 = {
    .isa = MOIRA_CPU_ISA_AVX512,
    .dtype = MOIRA_DTYPE_F32,
    .layout_bytes = layout_bytes,
    .prepare = prepare,
    .fold = fold,
};

/* bf16 is the top half of an f32: zero-extend each to 32 bits and shift it up. */
void moira_cpu_decode_widen_avx512(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
    if (i < n) {
        __mmask16 mask = (__mmask16)((1u << (n - i)) - 1);
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src + i));
        _mm512_mask_storeu_ps(dst + i, mask, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
}
