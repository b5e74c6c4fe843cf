/* Portable GEMM tiles (gemm.h): plain C over the same panels, for CPUs without AVX2 and as the
 * plainest statement of what every SIMD tile computes. The 16 lanes of a panel step are an inner
 * loop the compiler may vectorise with whatever the baseline target has. */
#include "backends/cpu/gemm.h"

#include <string.h>

#include "runtime/dtype.h"

/* acc[r][16 s + j] through the tile's epilogue. */
static void store(const moira_cpu_tile_t *tile, float acc[][MOIRA_CPU_TILE_STREAMS * 16]) {
    for (int r = 0; r < tile->rows; r++) {
        float *row = tile->out + r * tile->out_stride;
        if (tile->epilogue == MOIRA_CPU_EPILOGUE_SWIGLU) {
            for (int q = 0; q < tile->streams / 2; q++)
                for (int j = 0; j < 16 && 16 * q + j < tile->out_cols; j++)
                    row[16 * q + j] =
                        moira_cpu_swiglu_scalar(acc[r][32 * q + j], acc[r][32 * q + 16 + j]);
        } else if (tile->epilogue == MOIRA_CPU_EPILOGUE_ACCUMULATE) {
            for (int c = 0; c < 16 * tile->streams && c < tile->out_cols; c++)
                row[c] = tile->beta * row[c] + acc[r][c];
        } else {
            for (int c = 0; c < 16 * tile->streams && c < tile->out_cols; c++)
                row[c] = acc[r][c];
        }
    }
}

/* Plain loops accumulating in f32, in the same order as the SIMD tiles per output. */
static void f32_run(const moira_cpu_tile_t *tile) {
    float acc[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS * 16];
    memset(acc, 0, sizeof(acc));
    for (int r = 0; r < tile->rows; r++) {
        const float *x = tile->x[r];
        for (int s = 0; s < tile->streams; s++) {
            const float *w = tile->panels[s];
            float *a = acc[r] + 16 * s;
            for (int64_t k = 0; k < tile->depth; k++)
                for (int j = 0; j < 16; j++)
                    a[j] += x[k] * w[16 * k + j];
        }
    }
    store(tile, acc);
}

/* Pair p of output j is at w[32 p + 2 j] (even k) and w[32 p + 2 j + 1] (odd k). */
static void bf16_run(const moira_cpu_tile_t *tile) {
    float acc[MOIRA_CPU_TILE_ROWS][MOIRA_CPU_TILE_STREAMS * 16];
    memset(acc, 0, sizeof(acc));
    for (int r = 0; r < tile->rows; r++) {
        const float *x = tile->x[r];
        for (int s = 0; s < tile->streams; s++) {
            const uint16_t *w = tile->panels[s];
            float *a = acc[r] + 16 * s;
            for (int64_t p = 0; p < tile->depth; p++)
                for (int j = 0; j < 16; j++)
                    a[j] += x[2 * p] * moira_bf16_to_f32(w[32 * p + 2 * j]) +
                            x[2 * p + 1] * moira_bf16_to_f32(w[32 * p + 2 * j + 1]);
        }
    }
    store(tile, acc);
}

const moira_cpu_gemm_kernels_t moira_cpu_gemm_portable = {
    .isa = MOIRA_CPU_ISA_PORTABLE,
    .f32 = f32_run,
    .bf16 = bf16_run,
    .bf16_input = MOIRA_CPU_BF16_INPUT_F32,
    .split_bf16 = moira_cpu_split_bf16_portable,
};
