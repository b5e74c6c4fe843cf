/* AVX-512 GEMM tiles (gemm.h): f32 panels with one FMA per weight vector and token, and bf16
 * panels widened to f32 in registers for CPUs without AVX512_BF16. Compiled with AVX-512 flags;
 * used only where moira_cpu_isa_supported(MOIRA_CPU_ISA_AVX512). */
#include "backends/cpu/simd_avx512.h"

/* rows x streams accumulators (at most 24 of the 32 zmm registers), the weight vectors loaded
 * once per step and shared by every row, the activation broadcast once per row and step. */
static inline __attribute__((always_inline)) void f32_tile(const moira_cpu_tile_t *tile,
                                                           const int rows, const int streams) {
    __m512 acc[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS];
    const float *const *x = (const float *const *)tile->x;
    const float *const *w = (const float *const *)tile->panels;
    moira_avx512_tile_zero(acc, rows, streams);
    for (int64_t k = 0; k < tile->depth; k++) {
        __m512 wv[MOIRA_CPU_TILE_STREAMS];
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
            wv[s] = _mm512_loadu_ps(w[s] + 16 * k);
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            __m512 xb = _mm512_set1_ps(x[r][k]);
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
                acc[r][s] = _mm512_fmadd_ps(xb, wv[s], acc[r][s]);
        }
    }
    moira_avx512_tile_store(tile, acc, rows, streams);
}

/* A bf16 pair (W[n][2p], W[n][2p+1]) is one 32-bit lane: shifting it left by 16 gives the even
 * element as f32, masking the low half gives the odd one, so each step is two f32 FMAs. */
static inline __attribute__((always_inline)) void bf16_tile(const moira_cpu_tile_t *tile,
                                                            const int rows, const int streams) {
    __m512 acc[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS];
    const float *const *x = (const float *const *)tile->x;
    const uint16_t *const *w = (const uint16_t *const *)tile->panels;
    const __m512i high_half = _mm512_set1_epi32((int)0xFFFF0000u);
    moira_avx512_tile_zero(acc, rows, streams);
    for (int64_t p = 0; p < tile->depth; p++) {
        __m512 even[MOIRA_CPU_TILE_STREAMS], odd[MOIRA_CPU_TILE_STREAMS];
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++) {
            __m512i pairs = _mm512_loadu_si512(w[s] + 32 * p);
            even[s] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
            odd[s] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_half));
        }
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            __m512 x0 = _mm512_set1_ps(x[r][2 * p]), x1 = _mm512_set1_ps(x[r][2 * p + 1]);
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
                acc[r][s] = _mm512_fmadd_ps(x1, odd[s], _mm512_fmadd_ps(x0, even[s], acc[r][s]));
        }
    }
    moira_avx512_tile_store(tile, acc, rows, streams);
}

MOIRA_CPU_TILE_TABLE(f32_tile, f32_run)
MOIRA_CPU_TILE_TABLE(bf16_tile, bf16_run)

/* Shared with the AVX512_BF16 table, whose f32 panels are these. */
void moira_cpu_avx512_f32_tile(const moira_cpu_tile_t *tile) {
    f32_run(tile);
}

const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512 = {
    .isa = MOIRA_CPU_ISA_AVX512,
    .f32 = moira_cpu_avx512_f32_tile,
    .bf16 = bf16_run,
    .bf16_input = MOIRA_CPU_BF16_INPUT_F32,
    .split_bf16 = moira_cpu_split_bf16_portable,
};
