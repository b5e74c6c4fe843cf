/* FRACTAL_NZ, the Cube's matrix layout: a [rows, cols] matrix padded to multiples of 16 and cut
 * into 16x16 fractals; fractals are stored column-block major ("N": all row blocks of column
 * block 0, then of column block 1, ...), each fractal row-major ("Z"). Element (r, c) of a matrix
 * with R = round_up(rows, 16) padded rows lives at ((c / 16) * R + r) * 16 + c % 16. Padding is
 * zero, so partial tiles multiply as if the matrix were exactly its size. */
#ifndef MOIRA_BACKENDS_NPU_FRACTAL_NZ_H
#define MOIRA_BACKENDS_NPU_FRACTAL_NZ_H

#include <stddef.h>
#include <stdint.h>

#define MOIRA_NPU_FRACTAL 16

static inline int64_t moira_npu_round16(int64_t n) {
    return (n + MOIRA_NPU_FRACTAL - 1) / MOIRA_NPU_FRACTAL * MOIRA_NPU_FRACTAL;
}

/* Element index of (row, col) in the NZ layout of a matrix with `rows` rows. */
static inline int64_t moira_npu_nz_index(int64_t rows, int64_t row, int64_t col) {
    return ((col / MOIRA_NPU_FRACTAL) * moira_npu_round16(rows) + row) * MOIRA_NPU_FRACTAL +
           col % MOIRA_NPU_FRACTAL;
}

/* Elements the NZ layout of a [rows, cols] matrix occupies (padding included). */
static inline int64_t moira_npu_nz_elements(int64_t rows, int64_t cols) {
    return moira_npu_round16(rows) * moira_npu_round16(cols);
}

/* Packs a row-major [rows, cols] matrix of 16-bit elements (`src_stride` elements between rows)
 * into NZ at `dst` (moira_npu_nz_elements long), zero padding. */
void moira_npu_nz_pack16(const uint16_t *src, int64_t src_stride, int64_t rows, int64_t cols,
                         uint16_t *dst);

/* The inverse: NZ back to a row-major [rows, cols] matrix with `dst_stride`. */
void moira_npu_nz_unpack16(const uint16_t *src, int64_t rows, int64_t cols, uint16_t *dst,
                           int64_t dst_stride);

#endif
