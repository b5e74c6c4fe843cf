/* The int8 tiles of quant_panels.h on AVX-512 VNNI: vpdpbusd multiplies the panels' offset bytes
 * (u8) with the activations' int8 four at a time, each 16-output row of a panel against one
 * broadcast dword of activations. MXFP4 nibbles become bytes through one vpermb per 64 (VBMI: its
 * 16-entry table repeated four times, so the index's bits 4-5, the other nibble's, do not
 * matter and no mask is needed). A block's integer sums start at -corr (the weights' offset taken
 * out) and go to f32 once, times the block's scales. Compiled with -mavx512vnni -mavx512vbmi. */
#include <immintrin.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/quant_panels.h"
#include "backends/cpu/simd_avx512.h"

/* A dword of int8 activations broadcast to every lane. */
static inline __m512i broadcast4(const int8_t *x) {
    int32_t v;
    memcpy(&v, x, sizeof(v));
    return _mm512_set1_epi32(v);
}

/* Stores a tile's sums: silu(gate) * up for a SwiGLU pair, else each stream's 16 columns. */
static inline __attribute__((always_inline)) void
store(const moira_cpu_qtile_t *t, __m512 acc[][MOIRA_CPU_QTILE_STREAMS], int rows, int streams) {
    for (int r = 0; r < rows; r++) {
        float *out = t->out + r * t->out_stride;
        if (streams >= 2 && t->swiglu) { /* (gate, up) pairs, 16 columns each */
            for (int q = 0; q < streams / 2; q++)
                _mm512_mask_storeu_ps(out + 16 * q, moira_avx512_cols_mask(16 * q, t->out_cols),
                                      moira_avx512_swiglu(acc[r][2 * q], acc[r][2 * q + 1]));
            continue;
        }
        for (int s = 0; s < streams; s++)
            _mm512_mask_storeu_ps(out + 16 * s, moira_avx512_cols_mask(16 * s, t->out_cols),
                                  acc[r][s]);
    }
}

/* Starts a block's integer sums at -corr, which takes the weights' offset back out. */
static inline __attribute__((always_inline)) void
start_block(const moira_cpu_qtile_t *t, int64_t b, __m512i sums[][MOIRA_CPU_QTILE_STREAMS],
            int rows, int streams) {
    for (int r = 0; r < rows; r++) {
        __m512i corr = _mm512_set1_epi32(-t->xc[r][b]);
        for (int s = 0; s < streams; s++)
            sums[r][s] = corr;
    }
}

/* Block sums to f32: acc += sum * activation scale (* weight scales, MXFP4). */
static inline __attribute__((always_inline)) void
fold_block(const moira_cpu_qtile_t *t, int64_t b, __m512i sums[][MOIRA_CPU_QTILE_STREAMS],
           __m512 acc[][MOIRA_CPU_QTILE_STREAMS], const __m512 *weight_scale, int rows,
           int streams) {
    for (int r = 0; r < rows; r++) {
        __m512 xs = _mm512_set1_ps(t->xs[r][b]);
        for (int s = 0; s < streams; s++) {
            __m512 f = _mm512_cvtepi32_ps(sums[r][s]);
            __m512 scale = weight_scale ? _mm512_mul_ps(xs, weight_scale[s]) : xs;
            acc[r][s] = _mm512_fmadd_ps(f, scale, acc[r][s]);
        }
    }
}

/* E8M0 scale bytes (as 16 dwords) to f32 as OCP MX defines them: 2^(e - 127), the exponent
 * field itself for 1..254; 0 is 2^-127 (a subnormal, 0x00400000) and 255 NaN, which a shift
 * alone would make 0 and inf. */
static inline __m512 e8m0_to_ps(__m512i e) {
    __m512i bits = _mm512_slli_epi32(e, 23);
    bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()),
                                 _mm512_set1_epi32(0x00400000));
    bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)),
                                 _mm512_set1_epi32(0x7FC00000));
    return _mm512_castsi512_ps(bits);
}

/* `exact`: decode scale bytes 0 and 255 as OCP MX says (e8m0_to_ps), for panels that hold one;
 * every other byte is exact with the bare shift, which costs four instructions less per block
 * and panel (8-10% of a decode step). */
static inline __attribute__((always_inline)) void
mxfp4_tile_scales(const moira_cpu_qtile_t *t, int rows, int streams, bool exact) {
    const __m512i table = _mm512_broadcast_i32x4(
        _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    __m512 acc[MOIRA_CPU_QTILE_ROWS][MOIRA_CPU_QTILE_STREAMS];
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < streams; s++)
            acc[r][s] = _mm512_setzero_ps();
    int64_t blocks = t->blocks;
    for (int64_t b = 0; b < blocks; b++) {
        __m512i sums[MOIRA_CPU_QTILE_ROWS][MOIRA_CPU_QTILE_STREAMS];
        start_block(t, b, sums, rows, streams);
        for (int c = 0; c < 4; c++) {
            __m512i even[MOIRA_CPU_QTILE_STREAMS], odd[MOIRA_CPU_QTILE_STREAMS];
            for (int s = 0; s < streams; s++) {
                __m512i v = _mm512_loadu_si512(t->panels[s] + b * 256 + c * 64);
                even[s] = _mm512_permutexvar_epi8(v, table);
                odd[s] = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), table);
            }
            for (int r = 0; r < rows; r++) {
                const int8_t *x = t->xq[r] + b * 32 + c * 8;
                __m512i x0 = broadcast4(x), x1 = broadcast4(x + 4);
                for (int s = 0; s < streams; s++) {
                    sums[r][s] = _mm512_dpbusd_epi32(sums[r][s], even[s], x0);
                    sums[r][s] = _mm512_dpbusd_epi32(sums[r][s], odd[s], x1);
                }
            }
        }
        __m512 weight_scale[MOIRA_CPU_QTILE_STREAMS];
        for (int s = 0; s < streams; s++) {
            __m128i e = _mm_loadu_si128((const __m128i *)(t->panels[s] + blocks * 256 + b * 16));
            __m512i e32 = _mm512_cvtepu8_epi32(e);
            weight_scale[s] =
                exact ? e8m0_to_ps(e32) : _mm512_castsi512_ps(_mm512_slli_epi32(e32, 23));
        }
        fold_block(t, b, sums, acc, weight_scale, rows, streams);
    }
    store(t, acc, rows, streams);
}

static inline __attribute__((always_inline)) void mxfp4_tile(const moira_cpu_qtile_t *t, int rows,
                                                             int streams) {
    mxfp4_tile_scales(t, rows, streams, false);
}

static inline __attribute__((always_inline)) void mxfp4_exact_tile(const moira_cpu_qtile_t *t,
                                                                   int rows, int streams) {
    mxfp4_tile_scales(t, rows, streams, true);
}

static inline __attribute__((always_inline)) void int8_tile(const moira_cpu_qtile_t *t, int rows,
                                                            int streams) {
    __m512 acc[MOIRA_CPU_QTILE_ROWS][MOIRA_CPU_QTILE_STREAMS];
    for (int r = 0; r < rows; r++)
        for (int s = 0; s < streams; s++)
            acc[r][s] = _mm512_setzero_ps();
    int64_t blocks = t->blocks;
    for (int64_t b = 0; b < blocks; b++) {
        __m512i sums[MOIRA_CPU_QTILE_ROWS][MOIRA_CPU_QTILE_STREAMS];
        start_block(t, b, sums, rows, streams);
        for (int q = 0; q < 8; q++) {
            __m512i w[MOIRA_CPU_QTILE_STREAMS];
            for (int s = 0; s < streams; s++)
                w[s] = _mm512_loadu_si512(t->panels[s] + b * 512 + q * 64);
            for (int r = 0; r < rows; r++) {
                __m512i x = broadcast4(t->xq[r] + b * 32 + q * 4);
                for (int s = 0; s < streams; s++)
                    sums[r][s] = _mm512_dpbusd_epi32(sums[r][s], w[s], x);
            }
        }
        fold_block(t, b, sums, acc, NULL, rows, streams);
    }
    for (int s = 0; s < streams; s++) {
        __m512 row_scale = _mm512_loadu_ps(t->panels[s] + blocks * 512);
        for (int r = 0; r < rows; r++)
            acc[r][s] = _mm512_mul_ps(acc[r][s], row_scale);
    }
    store(t, acc, rows, streams);
}

/* One instance per (rows, streams), so the accumulators of each stay in registers: 1-4 rows of
 * 1 or 2 panels, 1-2 rows of 4 and one row of 6 (32 accumulators would not fit). */
#define QTILE_INSTANCE(kind, m, s)                                                                 \
    static void kind##_##m##x##s(const moira_cpu_qtile_t *t) {                                     \
        kind(t, m, s);                                                                             \
    }
#define QTILE_TABLE(kind)                                                                          \
    QTILE_INSTANCE(kind, 1, 1)                                                                     \
    QTILE_INSTANCE(kind, 1, 2)                                                                     \
    QTILE_INSTANCE(kind, 1, 4)                                                                     \
    QTILE_INSTANCE(kind, 1, 6)                                                                     \
    QTILE_INSTANCE(kind, 2, 1)                                                                     \
    QTILE_INSTANCE(kind, 2, 2)                                                                     \
    QTILE_INSTANCE(kind, 2, 4)                                                                     \
    QTILE_INSTANCE(kind, 3, 1)                                                                     \
    QTILE_INSTANCE(kind, 3, 2)                                                                     \
    QTILE_INSTANCE(kind, 4, 1)                                                                     \
    QTILE_INSTANCE(kind, 4, 2)                                                                     \
    static void kind##_any(const moira_cpu_qtile_t *t) {                                           \
        static const moira_cpu_qtile_fn table[4][6] = {                                            \
            {kind##_1x1, kind##_1x2, NULL, kind##_1x4, NULL, kind##_1x6},                          \
            {kind##_2x1, kind##_2x2, NULL, kind##_2x4, NULL, NULL},                                \
            {kind##_3x1, kind##_3x2, NULL, NULL, NULL, NULL},                                      \
            {kind##_4x1, kind##_4x2, NULL, NULL, NULL, NULL}};                                     \
        table[t->rows - 1][t->streams - 1](t);                                                     \
    }

QTILE_TABLE(mxfp4_tile)
QTILE_TABLE(mxfp4_exact_tile)
QTILE_TABLE(int8_tile)

/* Panels with a scale byte of 0 or 255 (t->exact_scales) take the exact decoding. */
static void mxfp4_any(const moira_cpu_qtile_t *t) {
    (t->exact_scales ? mxfp4_exact_tile_any : mxfp4_tile_any)(t);
}

const moira_cpu_qtile_fn moira_cpu_qtile_avx512_vnni_mxfp4 = mxfp4_any;
const moira_cpu_qtile_fn moira_cpu_qtile_avx512_vnni_int8 = int8_tile_any;
