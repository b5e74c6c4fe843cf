/* AVX-512 helpers shared by the files compiled with AVX-512 flags (never include this from a file
 * compiled without them). Private to backends/cpu/. */
#ifndef MOIRA_BACKENDS_CPU_SIMD_AVX512_H
#define MOIRA_BACKENDS_CPU_SIMD_AVX512_H

#include <immintrin.h>

#include "backends/cpu/gemm.h"

/* exp to about 1 ulp: 2^n * p(r) with r = x - n ln2 in [-ln2/2, ln2/2] and Cephes' degree-6
 * polynomial. Inputs are clamped so that n stays small (exp(-104) is already 0 in f32, exp(89)
 * already inf); min/max keep NaN because x is their second operand. */
static inline __m512 moira_avx512_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* silu(g) * u = g u / (1 + exp(-g)). */
static inline __m512 moira_avx512_swiglu(__m512 gate, __m512 up) {
    __m512 denominator = _mm512_add_ps(_mm512_set1_ps(1.0f),
                                       moira_avx512_exp(_mm512_sub_ps(_mm512_setzero_ps(), gate)));
    return _mm512_div_ps(_mm512_mul_ps(gate, up), denominator);
}

/* Zeroes a tile's accumulators (always inlined, like the tiles). */
static inline __attribute__((always_inline)) void
moira_avx512_tile_zero(__m512 acc[][MOIRA_CPU_TILE_STREAMS], int rows, int streams) {
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
            acc[r][s] = _mm512_setzero_ps();
}

/* The lanes of a 16-wide output block at column `col` that lie inside `cols`. */
static inline __mmask16 moira_avx512_cols_mask(int col, int cols) {
    int n = cols - col;
    if (n >= 16) return 0xFFFF;
    return n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Stores a tile's accumulators acc[r][s] through its epilogue. Always inlined into a tile whose
 * row and stream counts are constants, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void
moira_avx512_tile_store(const moira_cpu_tile_t *tile, __m512 acc[][MOIRA_CPU_TILE_STREAMS],
                        int rows, int streams) {
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++) {
        float *row = tile->out + r * tile->out_stride;
        if (tile->epilogue == MOIRA_CPU_EPILOGUE_SWIGLU) {
            /* No unroll pragma: with one stream this loop is empty, and a Debug build (-O0)
             * warns that it ignores the annotation, which -Werror turns into an error. At -O2
             * the constant trip count (0 to 2) is unrolled anyway. */
            for (int q = 0; q < streams / 2; q++)
                _mm512_mask_storeu_ps(row + 16 * q, moira_avx512_cols_mask(16 * q, tile->out_cols),
                                      moira_avx512_swiglu(acc[r][2 * q], acc[r][2 * q + 1]));
        } else if (tile->epilogue == MOIRA_CPU_EPILOGUE_ACCUMULATE) {
            /* Lanes outside out_cols are neither read nor written (masked, so no fault). */
            __m512 beta = _mm512_set1_ps(tile->beta);
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++) {
                __mmask16 mask = moira_avx512_cols_mask(16 * s, tile->out_cols);
                __m512 old = _mm512_maskz_loadu_ps(mask, row + 16 * s);
                _mm512_mask_storeu_ps(row + 16 * s, mask, _mm512_fmadd_ps(beta, old, acc[r][s]));
            }
        } else {
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
                _mm512_mask_storeu_ps(row + 16 * s, moira_avx512_cols_mask(16 * s, tile->out_cols),
                                      acc[r][s]);
        }
    }
}

#endif
