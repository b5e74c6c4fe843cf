/* The cpu backend's GEMM engine: weights packed into panels, register-tiled micro-kernels per
 * instruction set. Private to backends/cpu/.
 *
 * A packed weight matrix [N, K] is a row of panels, each 16 outputs wide (N padded with zero
 * rows to a multiple of 16) and the whole depth K long, so a micro-kernel streams every panel
 * from start to end with one aligned 64-byte load per step:
 *   f32 panels:  step k holds W[n0 + j][k] for j < 16                     (16 floats)
 *   bf16 panels: step p holds the pairs W[n0 + j][2p], W[n0 + j][2p + 1]   (32 bf16)
 * (bf16 K is padded with zeros to even; the pair layout is the one vdpbf16ps and AMX read).
 *
 * A tile is up to MOIRA_CPU_TILE_ROWS activation rows against up to MOIRA_CPU_TILE_STREAMS
 * panels (one register accumulator block), reduced over the whole depth. Its epilogue stores the
 * sums, adds them to what the output holds (scaled by beta: accumulating a linear's y, or the
 * partial sums of a depth split), or for the fused gate/up projection of SwiGLU (panels alternate
 * gate, up) stores silu(gate) * up. Every instruction set fills the same
 * moira_cpu_gemm_kernels_t. */
#ifndef MOIRA_BACKENDS_CPU_GEMM_H
#define MOIRA_BACKENDS_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "backends/cpu/cpu_isa.h"

#define MOIRA_CPU_PANEL 16
#define MOIRA_CPU_TILE_ROWS 6
#define MOIRA_CPU_TILE_STREAMS 4

typedef enum moira_cpu_epilogue {
    MOIRA_CPU_EPILOGUE_STORE = 0,  /* out[r][16 s + j] = sum */
    MOIRA_CPU_EPILOGUE_SWIGLU,     /* streams (gate, up) pairs: out[r][16 (s/2) + j] = silu(g) u */
    MOIRA_CPU_EPILOGUE_ACCUMULATE, /* out[r][16 s + j] = beta * out[r][16 s + j] + sum */
} moira_cpu_epilogue_t;

/* One register tile. Pointers are borrowed for the call. */
typedef struct moira_cpu_tile {
    int rows;                              /* 1 .. MOIRA_CPU_TILE_ROWS */
    const void *x[MOIRA_CPU_TILE_ROWS];    /* activation rows: f32, or bf16 high parts */
    const void *x_lo[MOIRA_CPU_TILE_ROWS]; /* bf16 low parts (split activations only) */
    int streams;                           /* 1 .. MOIRA_CPU_TILE_STREAMS; even for SWIGLU */
    const void *panels[MOIRA_CPU_TILE_STREAMS];
    int64_t depth;      /* steps: K for f32 panels, K/2 (rounded up) for bf16 panels */
    float *out;         /* row r at out + r * out_stride */
    int64_t out_stride; /* floats */
    int out_cols;       /* outputs to store from the tile's first column (the rest is padding) */
    moira_cpu_epilogue_t epilogue;
    float beta; /* MOIRA_CPU_EPILOGUE_ACCUMULATE only */
} moira_cpu_tile_t;

typedef void (*moira_cpu_tile_fn)(const moira_cpu_tile_t *tile);

/* The activation format a bf16 kernel reads. */
typedef enum moira_cpu_bf16_input {
    MOIRA_CPU_BF16_INPUT_F32 = 0, /* f32 rows, padded with a zero to even length */
    MOIRA_CPU_BF16_INPUT_SPLIT,   /* bf16 high + low parts (x = hi + lo to 2^-16 relative) */
    MOIRA_CPU_BF16_INPUT_ROUNDED, /* the same planes, of which only the high part (x rounded to
                                     bf16) is read: bf16 math, twice the rate of the split */
} moira_cpu_bf16_input_t;

typedef struct moira_cpu_gemm_kernels {
    moira_cpu_isa_t isa;
    moira_cpu_tile_fn f32;  /* f32 panels */
    moira_cpu_tile_fn bf16; /* bf16 pair panels */
    moira_cpu_bf16_input_t bf16_input;
    /* Splits n f32 values into bf16 high and low parts (n even; rounding to nearest even). */
    void (*split_bf16)(const float *x, int64_t n, uint16_t *hi, uint16_t *lo);
} moira_cpu_gemm_kernels_t;

/* The kernels of one instruction set (it must be supported: see moira_cpu_isa_supported). */
const moira_cpu_gemm_kernels_t *moira_cpu_gemm_kernels(moira_cpu_isa_t isa);

/* Whether bf16-weight GEMMs may round their activations to bf16 (MOIRA_CPU_BF16_MATH=bf16 on a
 * CPU with AVX512_BF16). Off by default: the cpu device then computes in f32 (DESIGN.md §4's
 * 1e-6 limit). On, the device reports bf16 compute precision (limit 2e-3) and bf16 weights run
 * at the vdpbf16ps rate, as AMX or oneDNN bf16 GEMMs do. */
bool moira_cpu_bf16_math_rounded(void);

/* The kernels a launch uses: the best instruction set (moira_cpu_isa_best), with the rounded
 * bf16 tile when moira_cpu_bf16_math_rounded(). */
const moira_cpu_gemm_kernels_t *moira_cpu_gemm_kernels_for_launch(void);

/* Per instruction set; each lives in its own file compiled with that set's flags. */
extern const moira_cpu_gemm_kernels_t moira_cpu_gemm_portable;
extern const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx2;
extern const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512;
extern const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512_bf16;
extern const moira_cpu_gemm_kernels_t moira_cpu_gemm_avx512_bf16_rounded;

/* The AVX-512 f32 tile, which the AVX512_BF16 table shares. */
void moira_cpu_avx512_f32_tile(const moira_cpu_tile_t *tile);

/* The portable split, shared by kernels whose instruction set has no bf16 conversion. */
void moira_cpu_split_bf16_portable(const float *x, int64_t n, uint16_t *hi, uint16_t *lo);

/* silu(g) * u for the SWIGLU epilogue of the scalar paths. */
float moira_cpu_swiglu_scalar(float gate, float up);

/* Runs `tile` as sub-tiles of at most `max_rows` rows and `max_streams` streams (even, so gate/up
 * pairs stay together), for instruction sets with fewer registers than a whole tile needs. */
void moira_cpu_tile_split(const moira_cpu_tile_t *tile, int max_rows, int max_streams,
                          moira_cpu_tile_fn fn);

/* MOIRA_CPU_TILE_TABLE(kind, name) defines `static void name(const moira_cpu_tile_t *)`, which
 * calls the always-inline kind(tile, rows, streams) with both counts as compile-time constants
 * (one instance per shape up to 6 x 4), so each instance keeps its accumulators in registers. */
#define MOIRA_CPU_TILE_INSTANCE(kind, m, s)                                                        \
    static void kind##_##m##x##s(const moira_cpu_tile_t *tile) {                                   \
        kind(tile, m, s);                                                                          \
    }
#define MOIRA_CPU_TILE_ROW(kind, m)                                                                \
    MOIRA_CPU_TILE_INSTANCE(kind, m, 1)                                                            \
    MOIRA_CPU_TILE_INSTANCE(kind, m, 2)                                                            \
    MOIRA_CPU_TILE_INSTANCE(kind, m, 3)                                                            \
    MOIRA_CPU_TILE_INSTANCE(kind, m, 4)
#define MOIRA_CPU_TILE_ENTRY(kind, m)                                                              \
    { kind##_##m##x1, kind##_##m##x2, kind##_##m##x3, kind##_##m##x4 }
#define MOIRA_CPU_TILE_TABLE(kind, name)                                                           \
    MOIRA_CPU_TILE_ROW(kind, 1)                                                                    \
    MOIRA_CPU_TILE_ROW(kind, 2)                                                                    \
    MOIRA_CPU_TILE_ROW(kind, 3)                                                                    \
    MOIRA_CPU_TILE_ROW(kind, 4)                                                                    \
    MOIRA_CPU_TILE_ROW(kind, 5)                                                                    \
    MOIRA_CPU_TILE_ROW(kind, 6)                                                                    \
    static void name(const moira_cpu_tile_t *tile) {                                               \
        static const moira_cpu_tile_fn table[6][4] = {                                             \
            MOIRA_CPU_TILE_ENTRY(kind, 1), MOIRA_CPU_TILE_ENTRY(kind, 2),                          \
            MOIRA_CPU_TILE_ENTRY(kind, 3), MOIRA_CPU_TILE_ENTRY(kind, 4),                          \
            MOIRA_CPU_TILE_ENTRY(kind, 5), MOIRA_CPU_TILE_ENTRY(kind, 6)};                         \
        table[tile->rows - 1][tile->streams - 1](tile);                                            \
    }

#endif
