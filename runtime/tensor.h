/* Host tensors: a typed, shaped view of host memory.
 *
 * Row-major and contiguous. A tensor either borrows its data (a view into a mapped file or a
 * caller's array) or owns it (made by moira_tensor_alloc); moira_tensor_release frees only what
 * it owns. Weights with scales carry them as a borrowed pointer (`scale`): fp8 block scales F32
 * [ceil(rows/128), ceil(cols/128)] (DeepSeek-V3's weight_scale_inv), MXFP4 E8M0 [rows, cols/32],
 * INT8 F32 [rows] (runtime/weight_format.h). An MXFP4 tensor's shape counts elements, two per
 * byte. */
#ifndef MOIRA_RUNTIME_TENSOR_H
#define MOIRA_RUNTIME_TENSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/status.h"

#define MOIRA_MAX_RANK 4
#define MOIRA_FP8_BLOCK 128

typedef struct moira_tensor {
    moira_dtype_t dtype;
    int rank;
    int64_t shape[MOIRA_MAX_RANK];
    void *data; /* borrowed unless owns_data */
    bool owns_data;
    const struct moira_tensor *scale; /* borrowed; fp8/MXFP4/INT8 scales or NULL */
} moira_tensor_t;

/* Number of elements (1 for rank 0). */
int64_t moira_tensor_numel(const moira_tensor_t *tensor);

/* Bytes of data. */
size_t moira_tensor_nbytes(const moira_tensor_t *tensor);

/* Allocates a zeroed, 64-byte aligned tensor that owns its data. `shape` has `rank` entries.
 * Caller releases `out_tensor` with moira_tensor_release. */
moira_status_t moira_tensor_alloc(moira_dtype_t dtype, int rank, const int64_t *shape,
                                  moira_tensor_t *out_tensor);

/* Shorthand for a 1-D or 2-D f32 tensor. */
moira_status_t moira_tensor_alloc_f32(int64_t rows, int64_t cols, moira_tensor_t *out_tensor);

/* A borrowed view of `data` with the given type and shape. */
moira_tensor_t moira_tensor_view(moira_dtype_t dtype, int rank, const int64_t *shape, void *data);

/* Frees owned data and clears the struct. Accepts a zeroed or borrowed tensor. */
void moira_tensor_release(moira_tensor_t *tensor);

/* Whether shapes are equal. */
bool moira_tensor_same_shape(const moira_tensor_t *a, const moira_tensor_t *b);

/* Writes "[24, 64]" into `buf`. Returns `buf`. */
const char *moira_tensor_shape_str(const moira_tensor_t *tensor, char *buf, size_t buf_size);

/* Row-major index of the first element of a float tensor that is NaN or infinite, or -1 when
 * every element is finite (always -1 for integer tensors). Activations read from files are
 * checked with it: a NaN has no place in a top-k and turns every output it reaches into NaN, so
 * it is refused as bad input rather than computed into garbage that exits 0. */
int64_t moira_tensor_first_nonfinite(const moira_tensor_t *tensor);

/* Converts row `row` of a 2-D float tensor (any float dtype, fp8 with its block scales applied)
 * into `dst` (cols floats). The weight-reading primitive the reference kernels share. */
void moira_tensor_row_to_f32(const moira_tensor_t *tensor, int64_t row, float *dst);

/* Converts a whole float tensor to a new owned F32 tensor of the same shape (fp8 scales applied).
 * Caller releases `out_tensor`. */
moira_status_t moira_tensor_to_f32(const moira_tensor_t *tensor, moira_tensor_t *out_tensor);

/* Converts a 2-D weight tensor to `dtype` (any weight format) as new owned tensors. fp8 gets one
 * scale per 128x128 block (the block's largest magnitude maps to 448, as DeepSeek-V3 ships) in
 * `out_scale`, F32 [ceil(rows/128), ceil(cols/128)]; MXFP4 gets E8M0 [rows, cols/32] by the OCP
 * rule (runtime/mxfp4.h), an input error unless cols is a multiple of 32; INT8 gets F32 [rows]
 * (runtime/int8_weights.h). out_tensor->scale points at `out_scale`, so it must not move while
 * `out_tensor` is used. Caller releases both (out_scale is zeroed for unscaled dtypes). */
moira_status_t moira_tensor_convert(const moira_tensor_t *src, moira_dtype_t dtype,
                                    moira_tensor_t *out_tensor, moira_tensor_t *out_scale);

#endif
