/* What every instruction set's GEMM tiles share (gemm.h): the table lookup, sub-tiling, and the
 * scalar bf16 split and SwiGLU. */
#include "backends/cpu/gemm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/dtype.h"
#include "runtime/env.h"

const moira_cpu_gemm_kernels_t *moira_cpu_gemm_kernels(moira_cpu_isa_t isa) {
    switch (isa) {
    case MOIRA_CPU_ISA_AVX512_BF16:
        return &moira_cpu_gemm_avx512_bf16;
    case MOIRA_CPU_ISA_AVX512:
        return &moira_cpu_gemm_avx512;
    case MOIRA_CPU_ISA_AVX2:
        return &moira_cpu_gemm_avx2;
    default:
        return &moira_cpu_gemm_portable;
    }
}

/* Read per call, like MOIRA_CPU_ISA, so a test or a comparison can switch it in one process. */
bool moira_cpu_bf16_math_rounded(void) {
    static const char *const choices[] = {"f32", "bf16", NULL};
    return moira_env_choice("MOIRA_CPU_BF16_MATH", choices) == 1 &&
           moira_cpu_isa_best() == MOIRA_CPU_ISA_AVX512_BF16;
}

/* One place decides, so the kernels and the device's reported precision cannot disagree. */
const moira_cpu_gemm_kernels_t *moira_cpu_gemm_kernels_for_launch(void) {
    if (moira_cpu_bf16_math_rounded()) return &moira_cpu_gemm_avx512_bf16_rounded;
    return moira_cpu_gemm_kernels(moira_cpu_isa_best());
}

/* A sub-tile's outputs start 16 columns further per stream, or per gate/up pair for SWIGLU. */
void moira_cpu_tile_split(const moira_cpu_tile_t *tile, int max_rows, int max_streams,
                          moira_cpu_tile_fn fn) {
    int per_stream = tile->epilogue == MOIRA_CPU_EPILOGUE_SWIGLU ? 8 : 16;
    for (int r0 = 0; r0 < tile->rows; r0 += max_rows)
        for (int s0 = 0; s0 < tile->streams; s0 += max_streams) {
            moira_cpu_tile_t sub = *tile;
            sub.rows = tile->rows - r0 < max_rows ? tile->rows - r0 : max_rows;
            sub.streams = tile->streams - s0 < max_streams ? tile->streams - s0 : max_streams;
            for (int r = 0; r < sub.rows; r++) {
                sub.x[r] = tile->x[r0 + r];
                sub.x_lo[r] = tile->x_lo[r0 + r];
            }
            for (int s = 0; s < sub.streams; s++)
                sub.panels[s] = tile->panels[s0 + s];
            sub.out = tile->out + r0 * tile->out_stride + per_stream * s0;
            sub.out_cols = tile->out_cols - per_stream * s0;
            if (sub.out_cols > 0) fn(&sub);
        }
}

/* Inf and NaN keep a zero low part so that hi + lo is still x. */
void moira_cpu_split_bf16_portable(const float *x, int64_t n, uint16_t *hi, uint16_t *lo) {
    for (int64_t i = 0; i < n; i++) {
        hi[i] = moira_f32_to_bf16(x[i]);
        float high = moira_bf16_to_f32(hi[i]);
        lo[i] = isfinite(high) ? moira_f32_to_bf16(x[i] - high) : 0;
    }
}

/* exp(-g) overflowing to infinity for very negative g gives -0, the right limit. */
float moira_cpu_swiglu_scalar(float gate, float up) {
    return gate / (1.0f + expf(-gate)) * up;
}
