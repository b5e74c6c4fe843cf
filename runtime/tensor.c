#include "runtime/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/int8_weights.h"
#include "runtime/mxfp4.h"
#include "runtime/weight_format.h"

int64_t moira_tensor_numel(const moira_tensor_t *tensor) {
    int64_t n = 1;
    for (int i = 0; i < tensor->rank; i++)
        n *= tensor->shape[i];
    return n;
}

/* Quantised weights size by rows (an MXFP4 element is half a byte); scales are not counted. */
size_t moira_tensor_nbytes(const moira_tensor_t *tensor) {
    if (!moira_dtype_is_quantized(tensor->dtype))
        return (size_t)moira_tensor_numel(tensor) * moira_dtype_size(tensor->dtype);
    int64_t cols = tensor->rank ? tensor->shape[tensor->rank - 1] : 1;
    int64_t rows = cols ? moira_tensor_numel(tensor) / cols : 0;
    return (size_t)rows * moira_weight_row_bytes(tensor->dtype, cols);
}

moira_status_t moira_tensor_alloc(moira_dtype_t dtype, int rank, const int64_t *shape,
                                  moira_tensor_t *out_tensor) {
    memset(out_tensor, 0, sizeof(*out_tensor));
    if (rank < 0 || rank > MOIRA_MAX_RANK)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "tensor rank %d out of range", rank);
    moira_tensor_t t = {.dtype = dtype, .rank = rank};
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "negative tensor dimension");
        t.shape[i] = shape[i];
    }
    size_t bytes = moira_tensor_nbytes(&t);
    size_t rounded = (bytes + 63) / 64 * 64;
    t.data = aligned_alloc(64, rounded ? rounded : 64);
    if (!t.data)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate %zu bytes", bytes);
    memset(t.data, 0, rounded ? rounded : 64);
    t.owns_data = true;
    *out_tensor = t;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tensor_alloc_f32(int64_t rows, int64_t cols, moira_tensor_t *out_tensor) {
    int64_t shape[2] = {rows, cols};
    return moira_tensor_alloc(MOIRA_DTYPE_F32, 2, shape, out_tensor);
}

moira_tensor_t moira_tensor_view(moira_dtype_t dtype, int rank, const int64_t *shape, void *data) {
    moira_tensor_t t = {.dtype = dtype, .rank = rank, .data = data};
    for (int i = 0; i < rank && i < MOIRA_MAX_RANK; i++)
        t.shape[i] = shape[i];
    return t;
}

void moira_tensor_release(moira_tensor_t *tensor) {
    if (tensor->owns_data) free(tensor->data);
    memset(tensor, 0, sizeof(*tensor));
}

bool moira_tensor_same_shape(const moira_tensor_t *a, const moira_tensor_t *b) {
    if (a->rank != b->rank) return false;
    for (int i = 0; i < a->rank; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *moira_tensor_shape_str(const moira_tensor_t *tensor, char *buf, size_t buf_size) {
    size_t used = (size_t)snprintf(buf, buf_size, "[");
    for (int i = 0; i < tensor->rank && used < buf_size; i++)
        used += (size_t)snprintf(buf + used, buf_size - used, "%s%lld", i ? ", " : "",
                                 (long long)tensor->shape[i]);
    if (used < buf_size) snprintf(buf + used, buf_size - used, "]");
    return buf;
}

void moira_tensor_row_to_f32(const moira_tensor_t *tensor, int64_t row, float *dst) {
    int64_t cols = tensor->rank >= 2 ? tensor->shape[tensor->rank - 1] : tensor->shape[0];
    int64_t rows = cols ? moira_tensor_numel(tensor) / cols : 0;
    moira_weight_row_to_f32(tensor->dtype, tensor->data, tensor->scale ? tensor->scale->data : NULL,
                            rows, cols, row, dst);
}

moira_status_t moira_tensor_to_f32(const moira_tensor_t *tensor, moira_tensor_t *out_tensor) {
    MOIRA_RETURN_IF_ERROR(
        moira_tensor_alloc(MOIRA_DTYPE_F32, tensor->rank, tensor->shape, out_tensor));
    if (tensor->rank < 2) {
        moira_convert_to_f32(tensor->dtype, tensor->data, out_tensor->data,
                             (size_t)moira_tensor_numel(tensor));
        return MOIRA_OK_STATUS;
    }
    int64_t cols = tensor->shape[tensor->rank - 1];
    int64_t rows = moira_tensor_numel(tensor) / (cols ? cols : 1);
    for (int64_t r = 0; r < rows && cols; r++)
        moira_tensor_row_to_f32(tensor, r, (float *)out_tensor->data + r * cols);
    return MOIRA_OK_STATUS;
}

static int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

/* One scale per 128x128 block so a single outlier costs precision only in its own block. */
static void quantize_fp8_blocks(const float *src, int64_t rows, int64_t cols, uint8_t *dst,
                                float *scales) {
    int64_t block_cols = ceil_div(cols, MOIRA_FP8_BLOCK);
    for (int64_t br = 0; br < ceil_div(rows, MOIRA_FP8_BLOCK); br++) {
        int64_t r0 = br * MOIRA_FP8_BLOCK;
        int64_t r1 = r0 + MOIRA_FP8_BLOCK < rows ? r0 + MOIRA_FP8_BLOCK : rows;
        for (int64_t bc = 0; bc < block_cols; bc++) {
            int64_t c0 = bc * MOIRA_FP8_BLOCK;
            int64_t c1 = c0 + MOIRA_FP8_BLOCK < cols ? c0 + MOIRA_FP8_BLOCK : cols;
            float amax = 0;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++)
                    amax = fmaxf(amax, fabsf(src[r * cols + c]));
            float scale = amax > 0 ? amax / 448.0f : 1.0f;
            scales[br * block_cols + bc] = scale;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++)
                    dst[r * cols + c] = moira_f32_to_fp8_e4m3(src[r * cols + c] / scale);
        }
    }
}

/* Each row quantised on its own: MXFP4 blocks and int8 scales never span rows. */
static moira_status_t quantize_rows(const float *src, int64_t rows, int64_t cols,
                                    moira_tensor_t *out_tensor, moira_tensor_t *out_scale) {
    bool mx = out_tensor->dtype == MOIRA_DTYPE_MXFP4;
    int64_t scale_shape[2] = {rows, cols / MOIRA_MXFP4_BLOCK};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(mx ? MOIRA_DTYPE_E8M0 : MOIRA_DTYPE_F32, mx ? 2 : 1,
                                             scale_shape, out_scale));
    size_t row_bytes = moira_weight_row_bytes(out_tensor->dtype, cols);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *dst = (uint8_t *)out_tensor->data + (size_t)r * row_bytes;
        if (mx)
            moira_mxfp4_quantize_row(src + r * cols, cols, dst,
                                     (uint8_t *)out_scale->data + r * scale_shape[1]);
        else
            ((float *)out_scale->data)[r] =
                moira_int8_quantize_row(src + r * cols, cols, (int8_t *)dst);
    }
    out_tensor->scale = out_scale;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_tensor_convert(const moira_tensor_t *src, moira_dtype_t dtype,
                                    moira_tensor_t *out_tensor, moira_tensor_t *out_scale) {
    memset(out_tensor, 0, sizeof(*out_tensor));
    memset(out_scale, 0, sizeof(*out_scale));
    if (src->rank != 2 || !moira_dtype_is_weight(dtype) || !moira_dtype_is_weight(src->dtype))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "only 2-D weight tensors convert between weight formats");
    if (!moira_weight_shape_fits(dtype, src->shape[0], src->shape[1]))
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "a row of %lld inputs cannot be %s: it must be a multiple of %d",
                                 (long long)src->shape[1], moira_weight_format(dtype)->name,
                                 MOIRA_MXFP4_BLOCK);
    moira_tensor_t f32;
    MOIRA_RETURN_IF_ERROR(moira_tensor_to_f32(src, &f32));
    moira_status_t status = moira_tensor_alloc(dtype, 2, src->shape, out_tensor);
    if (!status && moira_dtype_is_quantized(dtype)) {
        status = quantize_rows(f32.data, src->shape[0], src->shape[1], out_tensor, out_scale);
    } else if (!status && dtype == MOIRA_DTYPE_F8_E4M3) {
        int64_t scale_shape[2] = {ceil_div(src->shape[0], MOIRA_FP8_BLOCK),
                                  ceil_div(src->shape[1], MOIRA_FP8_BLOCK)};
        status = moira_tensor_alloc(MOIRA_DTYPE_F32, 2, scale_shape, out_scale);
        if (!status) {
            quantize_fp8_blocks(f32.data, src->shape[0], src->shape[1], out_tensor->data,
                                out_scale->data);
            out_tensor->scale = out_scale;
        }
    } else if (!status) {
        moira_convert_from_f32(dtype, f32.data, out_tensor->data, (size_t)moira_tensor_numel(src));
    }
    moira_tensor_release(&f32);
    if (status) {
        moira_tensor_release(out_tensor);
        moira_tensor_release(out_scale);
    }
    return status;
}

int64_t moira_tensor_first_nonfinite(const moira_tensor_t *tensor) {
    if (!moira_dtype_is_float(tensor->dtype)) return -1;
    int64_t n = moira_tensor_numel(tensor);
    size_t elem = moira_dtype_size(tensor->dtype);
    float chunk[256];
    for (int64_t start = 0; start < n; start += 256) {
        size_t count = (size_t)(n - start < 256 ? n - start : 256);
        moira_convert_to_f32(tensor->dtype, (const char *)tensor->data + (size_t)start * elem,
                             chunk, count);
        for (size_t i = 0; i < count; i++)
            if (!isfinite(chunk[i])) return start + (int64_t)i;
    }
    return -1;
}
