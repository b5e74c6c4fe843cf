/* AVX512_BF16 GEMM tile (gemm.h): bf16 pair panels through vdpbf16ps, which multiplies bf16
 * pairs exactly and accumulates in f32. The cpu device computes in f32 (DESIGN.md §4's 1e-6
 * limit), so activations are not rounded to bf16: each is split into a bf16 high part and a
 * bf16 low part (x - hi), and every weight pair meets both, which leaves an activation error
 * below 2^-16 relative. That is two vdpbf16ps per 32 weights: the f32 FMA rate, on half the
 * weight bytes. Compiled with AVX512_BF16 flags; used only where the CPU has them. */
#include "backends/cpu/simd_avx512.h"

#include <stdbool.h>
#include <string.h>

/* Broadcasts the activation pair p (two bf16 in one 32-bit word) of a row. */
static inline __m512bh pair_broadcast(const uint16_t *row, int64_t p) {
    uint32_t word;
    memcpy(&word, row + 2 * p, sizeof(word));
    return (__m512bh)_mm512_set1_epi32((int)word);
}

/* Tiles of at most this many accumulators sum the low parts in accumulators of their own. */
#define LOW_ACC_MAX 12

/* Every weight pair meets the activation's high part and, when `split`, its low part too: two
 * vdpbf16ps per 32 weights, f32-accurate; without the low part it is bf16 math (activations
 * rounded to bf16, chosen with MOIRA_CPU_BF16_MATH=bf16, see gemm.h), one vdpbf16ps per 32
 * weights. `split` is a constant in each instance, so the unused branch disappears.
 *
 * A small tile (decode: one row, four panels) would chain both vdpbf16ps of a step on the same
 * accumulator, so each step waits twice the instruction's latency and the core issues its panel
 * loads no faster than that chain: it then streams below the memory's rate. Such tiles keep the
 * low parts' sums in accumulators of their own (registers are free there), added at the end. */
static inline __attribute__((always_inline)) void
pair_tile(const moira_cpu_tile_t *tile, const int rows, const int streams, const bool split) {
    const bool low_acc = split && rows * streams <= LOW_ACC_MAX;
    __m512 acc[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS];
    __m512 acc_lo[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS];
    const uint16_t *const *hi = (const uint16_t *const *)tile->x;
    const uint16_t *const *lo = (const uint16_t *const *)tile->x_lo;
    const uint16_t *const *w = (const uint16_t *const *)tile->panels;
    moira_avx512_tile_zero(acc, rows, streams);
    moira_avx512_tile_zero(acc_lo, low_acc ? rows : 0, streams);
    for (int64_t p = 0; p < tile->depth; p++) {
        __m512bh wv[MOIRA_CPU_TILE_STREAMS];
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
            wv[s] = (__m512bh)_mm512_loadu_si512(w[s] + 32 * p);
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            __m512bh xh = pair_broadcast(hi[r], p);
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
                acc[r][s] = _mm512_dpbf16_ps(acc[r][s], xh, wv[s]);
            if (split) {
                __m512bh xl = pair_broadcast(lo[r], p);
#pragma GCC unroll 8
                for (int s = 0; s < streams; s++) {
                    if (low_acc)
                        acc_lo[r][s] = _mm512_dpbf16_ps(acc_lo[r][s], xl, wv[s]);
                    else
                        acc[r][s] = _mm512_dpbf16_ps(acc[r][s], xl, wv[s]);
                }
            }
        }
    }
    /* No unroll pragma: the trip count is 0 where there are no low accumulators, and GCC warns
     * that it ignores the annotation there; at -O2 the constant counts are unrolled anyway. */
    for (int r = 0; r < (low_acc ? rows : 0); r++)
        for (int s = 0; s < streams; s++)
            acc[r][s] = _mm512_add_ps(acc[r][s], acc_lo[r][s]);
    moira_avx512_tile_store(tile, acc, rows, streams);
}

/* The two instances the tile tables are made of. */
static inline __attribute__((always_inline)) void split_tile(const moira_cpu_tile_t *tile,
                                                             const int rows, const int streams) {
    pair_tile(tile, rows, streams, true);
}

static inline __attribute__((always_inline)) void rounded_tile(const moira_cpu_tile_t *tile,
                                                               const int rows, const int streams) {
    pair_tile(tile, rows, streams, false);
}

/* hi = bf16(x) and lo = bf16(x - hi), both rounded to nearest even by vcvtneps2bf16; where hi is
 * not finite lo is 0, so inf stays inf instead of becoming inf + NaN. */
static void split_bf16(const float *x, int64_t n, uint16_t *hi, uint16_t *lo) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m256bh h = _mm512_cvtneps_pbh(v);
        __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
        __mmask16 finite =
            _mm512_cmp_ps_mask(_mm512_sub_ps(hf, hf), _mm512_setzero_ps(), _CMP_EQ_OQ);
        __m256bh l = _mm512_cvtneps_pbh(_mm512_maskz_sub_ps(finite, v, hf));
        _mm256_storeu_si256((__m256i *)(hi + i), (__m256i)h);
        _mm256_storeu_si256((__m256i *)(lo + i), (__m256i)l);
    }
    if (i < n) moira_cpu_split_bf16_portable(x + i, n - i, hi + i, lo + i);
}

MOIRA_CPU_TILE_TABLE(split_tile, split_run)
MOIRA_CPU_TILE_TABLE(rounded_tile, rounded_run)

const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512_bf16 = {
    .isa = MOIRA_CPU_ISA_AVX512_BF16,
    .f32 = moira_cpu_avx512_f32_tile,
    .bf16 = split_run,
    .bf16_input = MOIRA_CPU_BF16_INPUT_SPLIT,
    .split_bf16 = split_bf16,
};

const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512_bf16_rounded = {
    .isa = MOIRA_CPU_ISA_AVX512_BF16,
    .f32 = moira_cpu_avx512_f32_tile,
    .bf16 = rounded_run,
    .bf16_input = MOIRA_CPU_BF16_INPUT_ROUNDED,
    .split_bf16 = split_bf16,
};
