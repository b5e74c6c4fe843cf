/* FRACTAL_NZ pack and unpack (fractal_nz.h). */
#include "backends/npu/fractal_nz.h"

#include <string.h>

/* Zeroing first makes the padding of partial fractals well defined. */
void moira_npu_nz_pack16(const uint16_t *src, int64_t src_stride, int64_t rows, int64_t cols,
                         uint16_t *dst) {
    memset(dst, 0, (size_t)moira_npu_nz_elements(rows, cols) * sizeof(*dst));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[moira_npu_nz_index(rows, r, c)] = src[r * src_stride + c];
}

/* Reading a Cube result or a packed weight back in row-major order. */
void moira_npu_nz_unpack16(const uint16_t *src, int64_t rows, int64_t cols, uint16_t *dst,
                           int64_t dst_stride) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * dst_stride + c] = src[moira_npu_nz_index(rows, r, c)];
}
