/* AVX2 + FMA GEMM tiles (gemm.h). A panel step is two ymm vectors; with 16 registers a sub-tile
 * is at most 2 rows x 2 streams (8 accumulators, 4 weight vectors, 2 broadcasts), and larger
 * tiles are run as sub-tiles. Compiled with AVX2 flags; used only where the CPU has them. */
#include <immintrin.h>

#include "backends/cpu/gemm.h"

#define SUB_ROWS 2
#define SUB_STREAMS 2

/* exp for the SwiGLU epilogue: 2^n p(r) as in simd_avx512.h, with 2^n built in the exponent
 * field. x is clamped to [-87.3, 88.3] so n fits a normal f32; for silu that changes nothing
 * visible (1 + 1e-38 is 1, and g / (1 + 2e38) is 0 to f32 precision). */
static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), _mm256_min_ps(_mm256_set1_ps(88.3f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* silu(g) * u for the SWIGLU epilogue, 8 lanes at a time. */
static inline __m256 swiglu_avx2(__m256 gate, __m256 up) {
    __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), gate));
    return _mm256_div_ps(_mm256_mul_ps(gate, up), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* Stores 8 lanes at `col`, only those below `cols`. */
static inline void store8(float *row, int col, int cols, __m256 v) {
    int n = cols - col;
    if (n >= 8) {
        _mm256_storeu_ps(row + col, v);
    } else if (n > 0) {
        float lanes[8];
        _mm256_storeu_ps(lanes, v);
        for (int j = 0; j < n; j++)
            row[col + j] = lanes[j];
    }
}

/* row[col + j] = beta * row[col + j] + v[j] for the lanes below `cols`; the others are not read. */
static inline void accumulate8(float *row, int col, int cols, float beta, __m256 v) {
    int n = cols - col;
    if (n >= 8) {
        _mm256_storeu_ps(row + col,
                         _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(row + col), v));
    } else if (n > 0) {
        float lanes[8];
        _mm256_storeu_ps(lanes, v);
        for (int j = 0; j < n; j++)
            row[col + j] = beta * row[col + j] + lanes[j];
    }
}

/* Stores a sub-tile through its epilogue; always inlined with constant counts like the tiles. */
static inline __attribute__((always_inline)) void store_tile(const moira_cpu_tile_t *tile,
                                                             __m256 acc[SUB_ROWS][SUB_STREAMS][2],
                                                             int rows, int streams) {
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++) {
        float *row = tile->out + r * tile->out_stride;
        if (tile->epilogue == MOIRA_CPU_EPILOGUE_SWIGLU) {
            if (streams == 2) /* always, for SWIGLU: one gate/up pair */
#pragma GCC unroll 8
                for (int h = 0; h < 2; h++)
                    store8(row, 8 * h, tile->out_cols, swiglu_avx2(acc[r][0][h], acc[r][1][h]));
        } else if (tile->epilogue == MOIRA_CPU_EPILOGUE_ACCUMULATE) {
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
#pragma GCC unroll 8
                for (int h = 0; h < 2; h++)
                    accumulate8(row, 16 * s + 8 * h, tile->out_cols, tile->beta, acc[r][s][h]);
        } else {
#pragma GCC unroll 8
            for (int s = 0; s < streams; s++)
#pragma GCC unroll 8
                for (int h = 0; h < 2; h++)
                    store8(row, 16 * s + 8 * h, tile->out_cols, acc[r][s][h]);
        }
    }
}

/* Zeroes a sub-tile's accumulators (always inlined, so they stay in registers). */
static inline __attribute__((always_inline)) void zero_tile(__m256 acc[SUB_ROWS][SUB_STREAMS][2],
                                                            const int rows, const int streams) {
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
            acc[r][s][0] = acc[r][s][1] = _mm256_setzero_ps();
}

/* Up to 2 rows x 2 streams of f32 panels: each step broadcasts one activation per row and loads
 * each stream's 16 weights as two ymm halves. */
static inline __attribute__((always_inline)) void f32_sub(const moira_cpu_tile_t *tile,
                                                          const int rows, const int streams) {
    __m256 acc[SUB_ROWS][SUB_STREAMS][2];
    zero_tile(acc, rows, streams);
    const float *x0 = tile->x[0], *x1 = tile->x[rows > 1];
    const float *w[SUB_STREAMS] = {tile->panels[0], tile->panels[streams > 1]};
    for (int64_t k = 0; k < tile->depth; k++) {
        __m256 xb[SUB_ROWS] = {_mm256_broadcast_ss(x0 + k), _mm256_broadcast_ss(x1 + k)};
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
#pragma GCC unroll 8
            for (int h = 0; h < 2; h++) {
                __m256 wv = _mm256_loadu_ps(w[s] + 16 * k + 8 * h);
#pragma GCC unroll 8
                for (int r = 0; r < rows; r++)
                    acc[r][s][h] = _mm256_fmadd_ps(xb[r], wv, acc[r][s][h]);
            }
    }
    store_tile(tile, acc, rows, streams);
}

/* bf16 pairs widened in registers, as in gemm_avx512.c. */
static inline __attribute__((always_inline)) void bf16_sub(const moira_cpu_tile_t *tile,
                                                           const int rows, const int streams) {
    __m256 acc[SUB_ROWS][SUB_STREAMS][2];
    zero_tile(acc, rows, streams);
    const float *x[SUB_ROWS] = {tile->x[0], tile->x[rows > 1]};
    const uint16_t *w[SUB_STREAMS] = {tile->panels[0], tile->panels[streams > 1]};
    const __m256i high_half = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int64_t p = 0; p < tile->depth; p++)
#pragma GCC unroll 8
        for (int s = 0; s < streams; s++)
#pragma GCC unroll 8
            for (int h = 0; h < 2; h++) {
                __m256i pairs = _mm256_loadu_si256((const __m256i *)(w[s] + 32 * p + 16 * h));
                __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
                __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, high_half));
#pragma GCC unroll 8
                for (int r = 0; r < rows; r++)
                    acc[r][s][h] = _mm256_fmadd_ps(
                        _mm256_broadcast_ss(x[r] + 2 * p + 1), odd,
                        _mm256_fmadd_ps(_mm256_broadcast_ss(x[r] + 2 * p), even, acc[r][s][h]));
            }
    store_tile(tile, acc, rows, streams);
}

/* The 2 x 2 shapes as constant-count instances (gemm.h's macros), chosen per sub-tile. */
MOIRA_CPU_TILE_INSTANCE(f32_sub, 1, 1)
MOIRA_CPU_TILE_INSTANCE(f32_sub, 1, 2)
MOIRA_CPU_TILE_INSTANCE(f32_sub, 2, 1)
MOIRA_CPU_TILE_INSTANCE(f32_sub, 2, 2)
MOIRA_CPU_TILE_INSTANCE(bf16_sub, 1, 1)
MOIRA_CPU_TILE_INSTANCE(bf16_sub, 1, 2)
MOIRA_CPU_TILE_INSTANCE(bf16_sub, 2, 1)
MOIRA_CPU_TILE_INSTANCE(bf16_sub, 2, 2)

/* One sub-tile of at most 2 x 2, picked by shape so every instance has constant counts. */
static void f32_one(const moira_cpu_tile_t *tile) {
    static const moira_cpu_tile_fn shapes[2][2] = {{f32_sub_1x1, f32_sub_1x2},
                                                   {f32_sub_2x1, f32_sub_2x2}};
    shapes[tile->rows - 1][tile->streams - 1](tile);
}

/* The bf16 sub-tile of the same shape. */
static void bf16_one(const moira_cpu_tile_t *tile) {
    static const moira_cpu_tile_fn shapes[2][2] = {{bf16_sub_1x1, bf16_sub_1x2},
                                                   {bf16_sub_2x1, bf16_sub_2x2}};
    shapes[tile->rows - 1][tile->streams - 1](tile);
}

/* 16 ymm registers hold at most a 2 x 2 sub-tile, so whole tiles run as sub-tiles. */
static void f32_run(const moira_cpu_tile_t *tile) {
    moira_cpu_tile_split(tile, SUB_ROWS, SUB_STREAMS, f32_one);
}
/* The same split for bf16 panels. */
static void bf16_run(const moira_cpu_tile_t *tile) {
    moira_cpu_tile_split(tile, SUB_ROWS, SUB_STREAMS, bf16_one);
}

const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx2 = {
    .isa = MOIRA_CPU_ISA_AVX2,
    .f32 = f32_run,
    .bf16 = bf16_run,
    .bf16_input = MOIRA_CPU_BF16_INPUT_F32,
    .split_bf16 = moira_cpu_split_bf16_portable,
};
