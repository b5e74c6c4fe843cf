/* What the AVX-512 decode-attention kernels (mla_decode_avx512.c, mla_decode_avx512_bf16.c)
 * share: the rows of a score tile, and the online softmax of a block, whose scores are one
 * register of 16 queries per row whatever the cache dtype. Include only from files compiled with
 * AVX-512 flags. Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_MLA_DECODE_AVX512_H
#define MOIRA_BACKENDS_CPU_MLA_DECODE_AVX512_H

#include "backends/cpu/mla_decode.h"
#include "backends/cpu/simd_avx512.h"

/* Rows per score tile: 8 accumulators of 16 queries cover the FMA latency twice over. */
#define MOIRA_AVX512_DECODE_TILE 8

/* The rows of the score tile at block row j0, as addresses of elements `element` bytes wide:
 * c[j] and pe[j] (a short last tile repeats its last row, whose scores are then not stored), and
 * ahead_c[j], ahead_pe[j], the same position in the rows folded next (this block's own when there
 * are none), for the tile to prefetch. Returns the real rows. */
static inline int moira_avx512_decode_tile(const moira_cpu_decode_rows_t *rows, int j0,
                                           size_t element, const void *c[MOIRA_AVX512_DECODE_TILE],
                                           const void *pe[MOIRA_AVX512_DECODE_TILE],
                                           const void *ahead_c[MOIRA_AVX512_DECODE_TILE],
                                           const void *ahead_pe[MOIRA_AVX512_DECODE_TILE]) {
    int n = rows->n - j0 < MOIRA_AVX512_DECODE_TILE ? rows->n - j0 : MOIRA_AVX512_DECODE_TILE;
    bool ahead = rows->ahead_c != NULL;
    int ahead_last = (ahead ? rows->ahead_n : rows->n) - 1;
    const unsigned char *next_c = ahead ? rows->ahead_c : rows->c;
    const unsigned char *next_pe = ahead ? rows->ahead_pe : rows->k_pe;
    size_t c_pitch = (size_t)rows->c_stride * element, pe_pitch = (size_t)rows->pe_stride * element;
    for (int j = 0; j < MOIRA_AVX512_DECODE_TILE; j++) {
        size_t key = (size_t)(j0 + (j < n ? j : n - 1));
        size_t next = (size_t)(j0 + j < ahead_last ? j0 + j : ahead_last);
        c[j] = (const unsigned char *)rows->c + key * c_pitch;
        pe[j] = (const unsigned char *)rows->k_pe + key * pe_pitch;
        ahead_c[j] = next_c + next * c_pitch;
        ahead_pe[j] = next_pe + next * pe_pitch;
    }
    return n;
}

/* The block's max per query (a vertical max over its n rows), the new running max, and the
 * weights exp(score - max) in place of the scores; rescale[i] = exp(old max - new max), by which
 * the caller scales the outputs and the normaliser (0 when the state is fresh: nothing to keep).
 * Returns the weights' sum per query. */
static inline __m512 moira_avx512_decode_softmax(int n, float *p, moira_cpu_decode_state_t *state,
                                                 float *rescale) {
    const int q = MOIRA_CPU_DECODE_QUERIES;
    __m512 block_max = _mm512_load_ps(p);
    for (int j = 1; j < n; j++)
        block_max = _mm512_max_ps(block_max, _mm512_load_ps(p + j * q));
    __m512 old_max = state->fresh ? block_max : _mm512_loadu_ps(state->max);
    __m512 new_max = _mm512_max_ps(old_max, block_max);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
        __m512 w = moira_avx512_exp(_mm512_sub_ps(_mm512_load_ps(p + j * q), new_max));
        _mm512_store_ps(p + j * q, w);
        sum = _mm512_add_ps(sum, w);
    }
    _mm512_storeu_ps(state->max, new_max);
    _mm512_storeu_ps(rescale, state->fresh ? _mm512_setzero_ps()
                                           : moira_avx512_exp(_mm512_sub_ps(old_max, new_max)));
    return sum;
}

/* normaliser = normaliser * rescale + the block's weights (just the block's when fresh). */
static inline void moira_avx512_decode_sum(moira_cpu_decode_state_t *state, const float *rescale,
                                           __m512 block_sum) {
    __m512 old = state->fresh ? _mm512_setzero_ps() : _mm512_loadu_ps(state->sum);
    _mm512_storeu_ps(state->sum, _mm512_fmadd_ps(old, _mm512_loadu_ps(rescale), block_sum));
}

#endif
