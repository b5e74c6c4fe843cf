/* Quantised expert weights (MXFP4, INT8) packed for int8 dot products, the activations they meet
 * and the register tile that multiplies them. Private to backends/cpu/.
 *
 * A panel is 16 output rows over the whole depth, cut into blocks of 32 inputs (the depth padded
 * with zero weights to a multiple of 32), stored as unsigned bytes with an offset so that
 * vpdpbusd (u8 x s8) can take them as they are:
 *   MXFP4: block b is 4 chunks of 64 bytes; byte 4j + i of chunk c holds the E2M1 codes of
 *          w[j][32b + 8c + i] (low nibble) and w[j][32b + 8c + 4 + i] (high nibble). A nibble
 *          becomes 2 * e2m1 + 12 (0 .. 24) through a byte permutation. After the nb blocks
 *          come nb x 16 E8M0 scale bytes (block b, output j), padded to a cache line.
 *   INT8:  block b is 8 quads of 64 bytes; byte 4j + i of quad q is w[j][32b + 4q + i] ^ 0x80
 *          (w + 128). After the blocks come the 16 rows' f32 scales.
 * Activations are quantised per row and per block of 32 to int8 (W4A8, W8A8): x = q * scale,
 * scale = amax / 127; `corr` = offset * sum(q) per block takes the weights' offset back out. A
 * block's integer sum times its two scales (for MXFP4 also the 1/2 of 2 * e2m1) is accumulated in
 * f32, so the only error beyond the weights' own is the activations' rounding to int8. */
#ifndef MOIRA_BACKENDS_CPU_QUANT_PANELS_H
#define MOIRA_BACKENDS_CPU_QUANT_PANELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"

#define MOIRA_CPU_QBLOCK 32
#define MOIRA_CPU_QTILE_ROWS 4
#define MOIRA_CPU_QTILE_STREAMS 6

/* Blocks of a depth of `cols` inputs. */
static inline int64_t moira_cpu_quant_blocks(int64_t cols) {
    return (cols + MOIRA_CPU_QBLOCK - 1) / MOIRA_CPU_QBLOCK;
}

/* Bytes of one panel of a quantised matrix with rows of `cols` inputs. */
size_t moira_cpu_quant_panel_bytes(moira_dtype_t dtype, int64_t cols);

/* Packs panel `panel` (rows 16 panel ..) of one [rows, cols] matrix whose stored bytes start at
 * `data` and scales at `scales` (runtime/weight_format.h) into `dst` (panel bytes). */
void moira_cpu_quant_pack_panel(moira_dtype_t dtype, const unsigned char *data,
                                const unsigned char *scales, int64_t rows, int64_t cols,
                                int64_t panel, unsigned char *dst);

/* Whether `bytes` E8M0 scale bytes hold a 0 (2^-127) or 255 (NaN): the tile then decodes scales
 * exactly (moira_cpu_qtile_t.exact_scales), slower; a bare shift is exact for every other byte.
 * False for INT8. */
bool moira_cpu_quant_extreme(moira_dtype_t dtype, const unsigned char *scales, size_t bytes);

/* The weights' offset the activations' `corr` removes: 12 (MXFP4), 128 (INT8). */
int32_t moira_cpu_quant_offset(moira_dtype_t dtype);

/* Quantises one row of n floats into blocks: q gets blocks * 32 int8 (zero past n), scale[b] the
 * block's scale times `scale_factor` (1/2 for MXFP4), corr[b] offset * sum of its q. */
void moira_cpu_quantize_row(const float *x, int64_t n, int64_t blocks, int32_t offset,
                            float scale_factor, int8_t *q, float *scale, int32_t *corr);

/* One tile: up to 4 activation rows against 1 or 2 panels, up to 2 rows against 4, or one row
 * (a decode token) against 6, over every block (moira_cpu_qtile_streams). With `swiglu` the
 * panels are (gate, up) pairs and out gets silu(gate) * up, 16 columns per pair; else each
 * panel's 16 sums go to out + 16 s. Only the first out_cols columns are written. Pointers
 * borrowed. */
typedef struct moira_cpu_qtile {
    int rows, streams;
    const int8_t *xq[MOIRA_CPU_QTILE_ROWS];
    const float *xs[MOIRA_CPU_QTILE_ROWS];
    const int32_t *xc[MOIRA_CPU_QTILE_ROWS];
    const unsigned char *panels[MOIRA_CPU_QTILE_STREAMS];
    int64_t blocks;
    float *out;
    int64_t out_stride;
    int out_cols;
    bool swiglu;
    bool exact_scales; /* MXFP4: some panel holds a scale byte 0 or 255 (moira_cpu_quant_extreme) */
} moira_cpu_qtile_t;

typedef void (*moira_cpu_qtile_fn)(const moira_cpu_qtile_t *tile);

/* The most panels one tile of `rows` rows takes: 6 for one row (a decode token: more panels in
 * flight measured 5-10% faster at 1 token than 4), 4 for 2 rows, else 2. */
static inline int moira_cpu_qtile_streams(int rows) {
    return rows == 1 ? 6 : rows <= 2 ? 4 : 2;
}

/* The tile for MXFP4 or INT8 panels on this CPU (AVX-512 VNNI and VBMI, within MOIRA_CPU_ISA's
 * cap), or
 * NULL: the expert FFN then widens rows one at a time (kernels_moe.c) in f32. */
moira_cpu_qtile_fn moira_cpu_qtile_kernel(moira_dtype_t dtype);

/* Per instruction set, in its own file. */
extern const moira_cpu_qtile_fn moira_cpu_qtile_avx512_vnni_mxfp4;
extern const moira_cpu_qtile_fn moira_cpu_qtile_avx512_vnni_int8;

#endif
