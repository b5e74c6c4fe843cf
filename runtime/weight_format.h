/* Weight formats (DESIGN.md §4, "Weight formats"): what a weight's bytes mean, for every dtype a
 * weight matrix may have. A format is an element type and its bits, a scale type and the block of
 * elements one scale covers. Sizes of weights come from here, not from moira_dtype_size, since an
 * MXFP4 element is half a byte and quantised weights carry scales beside their data.
 *
 * Scales live next to the data in the same order as the rows: for a weight [rows, cols] (or
 * [matrices, rows, cols], each matrix's scales one after another):
 *   F8_E4M3  f32 [ceil(rows/128), ceil(cols/128)]   (DeepSeek-V3's weight_scale_inv)
 *   MXFP4    E8M0 bytes [rows, cols/32]              (X.scale; cols a multiple of 32)
 *   INT8     f32 [rows]                              (X.weight_scale)
 * Other float types have none. */
#ifndef MOIRA_RUNTIME_WEIGHT_FORMAT_H
#define MOIRA_RUNTIME_WEIGHT_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"

typedef enum moira_scale_kind {
    MOIRA_SCALE_NONE = 0,
    MOIRA_SCALE_BLOCK_F32,  /* f32 per block_rows x block_cols block */
    MOIRA_SCALE_BLOCK_E8M0, /* one E8M0 byte per block_cols consecutive inputs of a row */
    MOIRA_SCALE_ROW_F32,    /* one f32 per output row */
} moira_scale_kind_t;

typedef struct moira_weight_format {
    moira_dtype_t dtype;       /* the dtype a tensor of this format carries */
    const char *name;          /* "f32", "bf16", "fp8_e4m3", "mxfp4", "int8": Static storage */
    int bits;                  /* per element */
    moira_scale_kind_t scale;  /* how the stored values are scaled */
    moira_dtype_t scale_dtype; /* F32 or E8M0 (when there is a scale) */
    int block_rows;            /* rows one scale covers (1 for per-row and E8M0 scales) */
    int block_cols;            /* inputs one scale covers (0: the whole row) */
} moira_weight_format_t;

/* The format of a weight dtype; NULL when the dtype is not one a weight may have. Static storage.
 */
const moira_weight_format_t *moira_weight_format(moira_dtype_t dtype);

/* The format named by Moira's spelling ("f32", "f16", "bf16", "fp8_e4m3", "mxfp4", "int8"); NULL
 * when unknown. Static storage. */
const moira_weight_format_t *moira_weight_format_named(const char *name);

/* Bytes of one row of `cols` elements (MXFP4: cols / 2, which needs cols even; 0 for a dtype
 * without a format, or an odd MXFP4 row). Never reads memory. */
size_t moira_weight_row_bytes(moira_dtype_t dtype, int64_t cols);

/* Bytes of one [rows, cols] matrix's scales, 0 when the format has none. */
size_t moira_weight_scale_bytes(moira_dtype_t dtype, int64_t rows, int64_t cols);

/* Whether a [rows, cols] matrix can be stored in `dtype`: MXFP4 needs cols a multiple of 32. */
bool moira_weight_shape_fits(moira_dtype_t dtype, int64_t rows, int64_t cols);

/* Row `row` of a [rows, cols] matrix stored at `data` with scales `scales` (NULL: scale 1), as
 * f32 in `dst` (cols floats): exactly the values the format encodes. Any weight dtype. */
void moira_weight_row_to_f32(moira_dtype_t dtype, const void *data, const void *scales,
                             int64_t rows, int64_t cols, int64_t row, float *dst);

#endif
