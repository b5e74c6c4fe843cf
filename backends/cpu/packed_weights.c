/* Packed weight panels kept beside the buffers they came from (packed_weights.h). */
#include "backends/cpu/packed_weights.h"

#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/quant_panels.h"
#include "ops/op.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"

bool moira_cpu_packable(moira_dtype_t dtype) {
    return dtype == MOIRA_DTYPE_F32 || dtype == MOIRA_DTYPE_BF16 ||
           (moira_dtype_is_quantized(dtype) && moira_cpu_qtile_kernel(dtype));
}

typedef struct pack_ctx {
    const moira_cpu_packed_t *packed;
    const unsigned char *src; /* the window's first byte */
    const float *scales;      /* fp8: the block scales, [matrices][ceil(rows/128)][ceil(cols/128)];
                                 MXFP4, INT8: every matrix's scales (runtime/weight_format.h) */
} pack_ctx_t;

/* Element k of a narrow source row as f32: f16 exactly, fp8 times its block's scale in f32
 * (the product moira_cpu_weight_row computes, so both paths see the same weights). */
static float widened(const pack_ctx_t *ctx, int64_t matrix, int64_t row, size_t first, int64_t k) {
    const moira_cpu_packed_t *packed = ctx->packed;
    if (packed->dtype == MOIRA_DTYPE_F16)
        return moira_f16_to_f32(((const uint16_t *)ctx->src)[first + (size_t)k]);
    int64_t scale_cols = (packed->cols + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
    int64_t scale_rows = (packed->rows + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
    float scale = ctx->scales[(matrix * scale_rows + row / MOIRA_FP8_BLOCK) * scale_cols +
                              k / MOIRA_FP8_BLOCK];
    return moira_fp8_e4m3_to_f32(ctx->src[first + (size_t)k]) * scale;
}

/* One item is one panel: 16 source rows written column by column into the panel's steps, after
 * zeroing it so rows past the end and bf16's odd padding column read as zero weights. */
static void pack_panels(void *raw, int64_t begin, int64_t end, int thread) {
    const pack_ctx_t *ctx = raw;
    const moira_cpu_packed_t *packed = ctx->packed;
    int64_t cols = packed->cols;
    (void)thread;
    for (int64_t item = begin; item < end; item++) {
        int64_t matrix = item / packed->panels, panel = item % packed->panels;
        void *dst = (void *)moira_cpu_packed_panel(packed, matrix, panel);
        if (moira_dtype_is_quantized(packed->dtype)) {
            size_t per_matrix = packed->bytes / (size_t)packed->matrices;
            size_t scales = packed->scale_bytes / (size_t)packed->matrices;
            moira_cpu_quant_pack_panel(packed->dtype, ctx->src + (size_t)matrix * per_matrix,
                                       (const unsigned char *)ctx->scales + (size_t)matrix * scales,
                                       packed->rows, cols, panel, dst);
            continue;
        }
        memset(dst, 0, packed->panel_bytes);
        for (int j = 0; j < MOIRA_CPU_PANEL; j++) {
            int64_t row = panel * MOIRA_CPU_PANEL + j;
            if (row >= packed->rows) break;
            size_t first = (size_t)(matrix * packed->rows + row) * (size_t)cols;
            if (packed->dtype == MOIRA_DTYPE_F32) {
                const float *src = (const float *)ctx->src + first;
                float *out = dst;
                for (int64_t k = 0; k < cols; k++)
                    out[MOIRA_CPU_PANEL * k + j] = src[k];
            } else if (packed->dtype == MOIRA_DTYPE_BF16) {
                const uint16_t *src = (const uint16_t *)ctx->src + first;
                uint16_t *out = dst;
                for (int64_t k = 0; k < cols; k++)
                    out[2 * MOIRA_CPU_PANEL * (k / 2) + 2 * j + (k & 1)] = src[k];
            } else {
                float *out = dst;
                for (int64_t k = 0; k < cols; k++)
                    out[MOIRA_CPU_PANEL * k + j] = widened(ctx, matrix, row, first, k);
            }
        }
    }
}

/* Frees the copy once its last holder (the buffer's list, a kernel) lets go. */
void moira_cpu_packed_release(moira_cpu_packed_t *packed) {
    if (!packed || atomic_fetch_sub(&packed->refs, 1) != 1) return;
    moira_cpu_host_free(&packed->memory);
    free(packed);
}

/* The copy's layout from the weight's shape, before any memory is touched. */
static void describe(const moira_dtensor_t *weight, moira_cpu_packed_t *packed) {
    packed->offset = weight->offset;
    packed->dtype = weight->dtype;
    packed->panel_dtype = weight->dtype == MOIRA_DTYPE_BF16 ? MOIRA_DTYPE_BF16 : MOIRA_DTYPE_F32;
    packed->matrices = weight->rank == 3 ? weight->shape[0] : 1;
    packed->rows = weight->shape[weight->rank - 2];
    packed->cols = weight->shape[weight->rank - 1];
    packed->bytes =
        (size_t)(packed->matrices * packed->rows * packed->cols) * moira_dtype_size(weight->dtype);
    if (weight->dtype == MOIRA_DTYPE_F8_E4M3) {
        packed->scale_offset = weight->scale_offset;
        packed->scale_bytes =
            (size_t)(packed->matrices * ((packed->rows + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK) *
                     ((packed->cols + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK)) *
            sizeof(float);
    }
    packed->panels = (packed->rows + MOIRA_CPU_PANEL - 1) / MOIRA_CPU_PANEL;
    packed->depth = packed->panel_dtype == MOIRA_DTYPE_F32 ? packed->cols : (packed->cols + 1) / 2;
    packed->panel_bytes = (size_t)packed->depth * 64;
    if (moira_dtype_is_quantized(weight->dtype)) { /* quant_panels.h */
        packed->panel_dtype = weight->dtype;
        packed->bytes = (size_t)(packed->matrices * packed->rows) *
                        moira_weight_row_bytes(weight->dtype, packed->cols);
        packed->scale_offset = weight->scale_offset;
        packed->scale_bytes = (size_t)packed->matrices *
                              moira_weight_scale_bytes(weight->dtype, packed->rows, packed->cols);
        packed->depth = moira_cpu_quant_blocks(packed->cols);
        packed->panel_bytes = moira_cpu_quant_panel_bytes(weight->dtype, packed->cols);
    }
}

/* Two requests share a packed copy only when they describe the same bytes the same way. */
static bool same_window(const moira_cpu_packed_t *a, const moira_cpu_packed_t *b) {
    return a->offset == b->offset && a->dtype == b->dtype && a->matrices == b->matrices &&
           a->rows == b->rows && a->cols == b->cols && a->scale_offset == b->scale_offset;
}

/* Whether bytes [offset, offset + bytes) touch the copy's weights or, for fp8, its scales. */
static bool overlaps(const moira_cpu_packed_t *p, size_t offset, size_t bytes) {
    bool data = p->offset < offset + bytes && offset < p->offset + p->bytes;
    bool scales = p->scale_bytes && p->scale_offset < offset + bytes &&
                  offset < p->scale_offset + p->scale_bytes;
    return data || scales;
}

/* Looks up and builds under the buffer's lock, so two queues asking at once pack once. The lock
 * is held across the parallel pack; nothing that runs inside a parallel loop takes it. */
static moira_status_t acquire(moira_threadpool_t *pool, const moira_dtensor_t *weight, bool widen,
                              moira_cpu_packed_t **out_packed) {
    *out_packed = NULL;
    bool packable =
        moira_cpu_packable(weight->dtype) ||
        (widen && (weight->dtype == MOIRA_DTYPE_F16 || weight->dtype == MOIRA_DTYPE_F8_E4M3));
    if (!packable || weight->rank < 2 || weight->rank > 3 || !weight->buffer)
        return MOIRA_OK_STATUS;
    moira_cpu_packed_t wanted;
    memset(&wanted, 0, sizeof(wanted));
    describe(weight, &wanted);
    if (wanted.bytes == 0) return MOIRA_OK_STATUS;
    moira_cpu_buffer_t *buffer = (moira_cpu_buffer_t *)weight->buffer;
    moira_status_t status = MOIRA_OK_STATUS;
    pthread_mutex_lock(&buffer->packed_mutex);
    moira_cpu_packed_t *found = atomic_load(&buffer->packed);
    while (found && !same_window(found, &wanted))
        found = found->next;
    if (!found) {
        found = calloc(1, sizeof(*found));
        size_t total = (size_t)wanted.matrices * (size_t)wanted.panels * wanted.panel_bytes;
        if (found) *found = wanted;
        if (!found || !moira_cpu_host_alloc(total, buffer->numa_node, &found->memory)) {
            free(found);
            found = NULL;
            status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                                       "cpu: cannot allocate %zu bytes of packed weights", total);
        } else {
            const unsigned char *base = buffer->memory.data;
            pack_ctx_t ctx = {found, base + weight->offset,
                              (const float *)(base + found->scale_offset)};
            moira_threadpool_parallel_for(pool, found->matrices * found->panels, 4, pack_panels,
                                          &ctx);
            found->extreme_scales = moira_cpu_quant_extreme(
                found->dtype, base + found->scale_offset, found->scale_bytes);
            atomic_store(&found->refs, 1); /* the list's */
            found->next = atomic_load(&buffer->packed);
            atomic_store(&buffer->packed, found);
        }
    }
    if (found) atomic_fetch_add(&found->refs, 1);
    pthread_mutex_unlock(&buffer->packed_mutex);
    *out_packed = found;
    return status;
}

moira_status_t moira_cpu_packed_acquire(moira_threadpool_t *pool, const moira_dtensor_t *weight,
                                        moira_cpu_packed_t **out_packed) {
    return acquire(pool, weight, false, out_packed);
}

moira_status_t moira_cpu_packed_acquire_widened(moira_threadpool_t *pool,
                                                const moira_dtensor_t *weight,
                                                moira_cpu_packed_t **out_packed) {
    return acquire(pool, weight, true, out_packed);
}

/* Any write may change weights a packed copy was made from; dropping is cheap, repacking happens
 * on the next use. */
void moira_cpu_buffer_written(moira_cpu_buffer_t *buffer, size_t offset, size_t bytes) {
    if (!atomic_load(&buffer->packed) || !bytes) return;
    pthread_mutex_lock(&buffer->packed_mutex);
    moira_cpu_packed_t *kept = NULL, *next = NULL;
    for (moira_cpu_packed_t *p = atomic_load(&buffer->packed); p; p = next) {
        next = p->next;
        if (overlaps(p, offset, bytes)) {
            moira_cpu_packed_release(p);
        } else {
            p->next = kept;
            kept = p;
        }
    }
    atomic_store(&buffer->packed, kept);
    pthread_mutex_unlock(&buffer->packed_mutex);
}

/* A buffer being freed takes its packed copies with it (kernels holding one keep it alive). */
void moira_cpu_buffer_drop_packed(moira_cpu_buffer_t *buffer) {
    moira_cpu_buffer_written(buffer, 0, SIZE_MAX);
}

/* Packing at upload keeps the cost out of the first timed launch. The dense ops' weights are
 * widened as their kernels will ask for them; the experts' are not (packed_weights.h). A dense
 * weight that cannot be packed for lack of memory is not an error: its kernels widen its rows one
 * at a time instead (linear_panels.h). */
moira_status_t moira_cpu_prepare_weights(moira_threadpool_t *pool, int op,
                                         const moira_dtensor_t *weights, int n_weights) {
    bool dense = op == MOIRA_OP_LINEAR || op == MOIRA_OP_SWIGLU || op == MOIRA_OP_MLA_ABSORB_OUT;
    if (op != MOIRA_OP_MOE_FFN && !dense) return MOIRA_OK_STATUS;
    for (int i = 0; i < n_weights; i++) {
        moira_cpu_packed_t *packed = NULL;
        moira_status_t status = acquire(pool, &weights[i], dense, &packed);
        moira_cpu_packed_release(packed);
        if (status && !dense) return status;
        moira_status_free(status);
    }
    return MOIRA_OK_STATUS;
}
