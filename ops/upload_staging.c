/* Staging host weights into one device buffer (ops/upload_staging.h). */
#include "ops/upload_staging.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/weight_format.h"

#define STAGING_ALIGN 256

/* Windows start 256-byte aligned, enough for every backend's vector loads. */
static size_t staging_reserve(moira_staging_t *s, size_t bytes) {
    size_t offset = (s->used + STAGING_ALIGN - 1) / STAGING_ALIGN * STAGING_ALIGN;
    s->used = offset + bytes;
    return offset;
}

/* Scales a host weight lacks (an fp8 checkpoint without weight_scale_inv) are all one. */
static void fill_unit_scales(moira_dtype_t dtype, void *scales, size_t bytes) {
    const moira_weight_format_t *f = moira_weight_format(dtype);
    if (f->scale_dtype == MOIRA_DTYPE_E8M0) {
        memset(scales, 127, bytes);
        return;
    }
    for (size_t i = 0; i < bytes / sizeof(float); i++)
        ((float *)scales)[i] = 1.0f;
}

/* Writes one host matrix as `dtype` at `dst` (and its scales, if the format has any, at
 * `scales`): a plain copy when the dtypes agree, else a rounding conversion (fp8 and the
 * quantised formats get fresh scales). */
static moira_status_t fill_matrix(const moira_tensor_t *src, moira_dtype_t dtype, void *dst,
                                  void *scales) {
    size_t scale_bytes = moira_weight_scale_bytes(dtype, src->shape[0], src->shape[1]);
    if (src->dtype == dtype) {
        memcpy(dst, src->data, moira_tensor_nbytes(src));
        if (scale_bytes && src->scale)
            memcpy(scales, src->scale->data, scale_bytes);
        else if (scale_bytes)
            fill_unit_scales(dtype, scales, scale_bytes);
        return MOIRA_OK_STATUS;
    }
    moira_tensor_t converted, scale;
    MOIRA_RETURN_IF_ERROR(moira_tensor_convert(src, dtype, &converted, &scale));
    memcpy(dst, converted.data, moira_tensor_nbytes(&converted));
    if (scale_bytes) memcpy(scales, scale.data, scale_bytes);
    moira_tensor_release(&converted);
    moira_tensor_release(&scale);
    return MOIRA_OK_STATUS;
}

/* The dtype matrices stored as they are share on the device: their own when they agree, else
 * f32, which holds every f16, bf16 and fp8 value exactly. A checkpoint may mix expert dtypes
 * (DESIGN.md §5); converting the rest to the first one's dtype rounded them. */
static moira_dtype_t stored_dtype(const moira_tensor_t *const *mats, int64_t count) {
    for (int64_t e = 1; e < count; e++)
        if (mats[e]->dtype != mats[0]->dtype) return MOIRA_DTYPE_F32;
    return mats[0]->dtype;
}

/* Stacking experts [n, rows, cols] is what lets the grouped FFN run them in one launch. */
moira_status_t moira_staging_place_matrices(moira_staging_t *s, const moira_tensor_t *const *mats,
                                            int64_t count, bool stack, moira_dtensor_t *out) {
    const moira_tensor_t *first = mats[0];
    moira_dtype_t dtype =
        s->weight_dtype < 0 ? stored_dtype(mats, count) : (moira_dtype_t)s->weight_dtype;
    if (!moira_dtype_is_weight(dtype) || first->rank != 2)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "weights must be 2-D float matrices");
    int64_t rows = first->shape[0], cols = first->shape[1];
    if (!moira_weight_shape_fits(dtype, rows, cols))
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "a [%lld, %lld] weight cannot be stored as %s (rows of a multiple "
                                 "of 32 inputs)",
                                 (long long)rows, (long long)cols, moira_dtype_name(dtype));
    size_t matrix_bytes = (size_t)rows * moira_weight_row_bytes(dtype, cols);
    size_t scales_per = moira_weight_scale_bytes(dtype, rows, cols);
    memset(out, 0, sizeof(*out));
    out->dtype = dtype;
    out->offset = staging_reserve(s, matrix_bytes * (size_t)count);
    if (scales_per) out->scale_offset = staging_reserve(s, scales_per * (size_t)count);
    out->rank = stack ? 3 : 2;
    int64_t shape3[3] = {count, rows, cols};
    memcpy(out->shape, stack ? shape3 : shape3 + 1, sizeof(int64_t) * (size_t)out->rank);
    if (!s->image) return MOIRA_OK_STATUS;
    for (int64_t e = 0; e < count; e++) {
        if (mats[e]->rank != 2 || mats[e]->shape[0] != rows || mats[e]->shape[1] != cols)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "stacked expert matrices differ in shape");
        void *scales = scales_per ? s->image + out->scale_offset + (size_t)e * scales_per : NULL;
        MOIRA_RETURN_IF_ERROR(
            fill_matrix(mats[e], dtype, s->image + out->offset + (size_t)e * matrix_bytes, scales));
    }
    return MOIRA_OK_STATUS;
}

/* Absent optional weights (q_proj with q_lora) stay zeroed operands. */
moira_status_t moira_staging_place_matrix(moira_staging_t *s, const moira_tensor_t *mat,
                                          moira_dtensor_t *out) {
    if (!mat) {
        memset(out, 0, sizeof(*out));
        return MOIRA_OK_STATUS;
    }
    return moira_staging_place_matrices(s, &mat, 1, false, out);
}

/* Kernels read norm weights and biases as f32 whatever the checkpoint stores. */
moira_status_t moira_staging_place_vector(moira_staging_t *s, const moira_tensor_t *vec,
                                          moira_dtensor_t *out) {
    memset(out, 0, sizeof(*out));
    if (!vec) return MOIRA_OK_STATUS;
    int64_t n = moira_tensor_numel(vec);
    out->dtype = MOIRA_DTYPE_F32;
    out->rank = 1;
    out->shape[0] = n;
    out->offset = staging_reserve(s, (size_t)n * sizeof(float));
    if (s->image)
        moira_convert_to_f32(vec->dtype, vec->data, (float *)(s->image + out->offset), (size_t)n);
    return MOIRA_OK_STATUS;
}

/* Measure, fill, allocate, copy: one device buffer and one host-to-device copy per upload. */
moira_status_t moira_staging_upload(moira_device_t *device, moira_queue_t *queue, int numa_node,
                                    int weight_dtype, moira_staging_place_fn place, void *context,
                                    moira_buffer_t **out_buffer) {
    *out_buffer = NULL;
    moira_staging_t measure = {.weight_dtype = weight_dtype};
    MOIRA_RETURN_IF_ERROR(place(&measure, context));
    moira_staging_t fill = {.weight_dtype = weight_dtype};
    fill.image = calloc(1, measure.used ? measure.used : 1);
    if (!fill.image)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot stage %zu bytes of weights",
                                 measure.used);
    moira_buffer_t *buffer = NULL;
    moira_status_t status = place(&fill, context);
    if (!status) status = moira_buffer_alloc(device, measure.used, numa_node, &buffer);
    if (!status) status = moira_queue_write(queue, buffer, 0, fill.image, measure.used);
    if (!status) status = moira_queue_finish(queue);
    free(fill.image);
    if (status) {
        moira_buffer_free(buffer);
        return status;
    }
    *out_buffer = buffer;
    return MOIRA_OK_STATUS;
}
