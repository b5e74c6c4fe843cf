/* The weight formats' table and the helpers that size and read weights (weight_format.h). */
#include "runtime/weight_format.h"

#include <string.h>

#include "runtime/int8_weights.h"
#include "runtime/mxfp4.h"
#include "runtime/tensor.h"

/* One row per weight dtype, so adding a format cannot leave a size or a scale rule behind. */
static const moira_weight_format_t formats[] = {
    {MOIRA_DTYPE_F32, "f32", 32, MOIRA_SCALE_NONE, MOIRA_DTYPE_F32, 0, 0},
    {MOIRA_DTYPE_F16, "f16", 16, MOIRA_SCALE_NONE, MOIRA_DTYPE_F32, 0, 0},
    {MOIRA_DTYPE_BF16, "bf16", 16, MOIRA_SCALE_NONE, MOIRA_DTYPE_F32, 0, 0},
    {MOIRA_DTYPE_F8_E4M3, "fp8_e4m3", 8, MOIRA_SCALE_BLOCK_F32, MOIRA_DTYPE_F32, MOIRA_FP8_BLOCK,
     MOIRA_FP8_BLOCK},
    {MOIRA_DTYPE_MXFP4, "mxfp4", 4, MOIRA_SCALE_BLOCK_E8M0, MOIRA_DTYPE_E8M0, 1, MOIRA_MXFP4_BLOCK},
    {MOIRA_DTYPE_INT8, "int8", 8, MOIRA_SCALE_ROW_F32, MOIRA_DTYPE_F32, 1, 0},
};

const moira_weight_format_t *moira_weight_format(moira_dtype_t dtype) {
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
        if (formats[i].dtype == dtype) return &formats[i];
    return NULL;
}

const moira_weight_format_t *moira_weight_format_named(const char *name) {
    for (size_t i = 0; name && i < sizeof(formats) / sizeof(formats[0]); i++)
        if (!strcmp(formats[i].name, name)) return &formats[i];
    return NULL;
}

/* Bits times elements over 8: whole bytes for every format as long as an MXFP4 row is even. */
size_t moira_weight_row_bytes(moira_dtype_t dtype, int64_t cols) {
    const moira_weight_format_t *f = moira_weight_format(dtype);
    if (!f || cols < 0 || (f->bits == 4 && (cols & 1))) return 0;
    return (size_t)cols * (size_t)f->bits / 8;
}

static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

size_t moira_weight_scale_bytes(moira_dtype_t dtype, int64_t rows, int64_t cols) {
    const moira_weight_format_t *f = moira_weight_format(dtype);
    if (!f || rows < 0 || cols < 0) return 0;
    switch (f->scale) {
    case MOIRA_SCALE_BLOCK_F32:
        return (size_t)(ceil_div(rows, f->block_rows) * ceil_div(cols, f->block_cols)) *
               sizeof(float);
    case MOIRA_SCALE_BLOCK_E8M0:
        return (size_t)(rows * (cols / f->block_cols));
    case MOIRA_SCALE_ROW_F32:
        return (size_t)rows * sizeof(float);
    case MOIRA_SCALE_NONE:
        break;
    }
    return 0;
}

bool moira_weight_shape_fits(moira_dtype_t dtype, int64_t rows, int64_t cols) {
    const moira_weight_format_t *f = moira_weight_format(dtype);
    if (!f || rows < 0 || cols < 0) return false;
    return f->scale != MOIRA_SCALE_BLOCK_E8M0 || cols % f->block_cols == 0;
}

/* Float types convert; fp8 multiplies by its block's scale in f32 (the product the kernels form);
 * the quantised formats decode through their own codecs. */
void moira_weight_row_to_f32(moira_dtype_t dtype, const void *data, const void *scales,
                             int64_t rows, int64_t cols, int64_t row, float *dst) {
    const unsigned char *src =
        (const unsigned char *)data + (size_t)row * moira_weight_row_bytes(dtype, cols);
    (void)rows;
    if (dtype == MOIRA_DTYPE_MXFP4) {
        const uint8_t *s =
            scales ? (const uint8_t *)scales + row * (cols / MOIRA_MXFP4_BLOCK) : NULL;
        moira_mxfp4_dequantize_row(src, s, cols, dst);
        return;
    }
    if (dtype == MOIRA_DTYPE_INT8) {
        float scale = scales ? ((const float *)scales)[row] : 1.0f;
        moira_int8_dequantize_row((const int8_t *)src, scale, cols, dst);
        return;
    }
    moira_convert_to_f32(dtype, src, dst, (size_t)cols);
    if (dtype == MOIRA_DTYPE_F8_E4M3 && scales) {
        int64_t scale_cols = ceil_div(cols, MOIRA_FP8_BLOCK);
        const float *s = (const float *)scales + (row / MOIRA_FP8_BLOCK) * scale_cols;
        for (int64_t c = 0; c < cols; c++)
            dst[c] *= s[c / MOIRA_FP8_BLOCK];
    }
}
