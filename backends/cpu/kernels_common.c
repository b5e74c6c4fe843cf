/* Weight access, micro-kernels and scratch shared by the cpu kernels (kernels_common.h). */
#include "backends/cpu/kernels_common.h"

#include <math.h>

#include "backends/cpu/scratch_arena.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"

/* Resolving a weight's layout once per launch keeps the per-row path to two multiplies. */
moira_cpu_weight_t moira_cpu_weight_view(const moira_dtensor_t *tensor) {
    moira_cpu_weight_t weight = {
        .data = moira_cpu_tensor_ptr(tensor),
        .dtype = tensor->dtype,
        .rows = tensor->shape[tensor->rank - 2],
        .cols = tensor->shape[tensor->rank - 1],
    };
    weight.row_bytes = moira_weight_row_bytes(weight.dtype, weight.cols);
    weight.scale_bytes = moira_weight_scale_bytes(weight.dtype, weight.rows, weight.cols);
    if (weight.scale_bytes) {
        const unsigned char *base = moira_buffer_host_ptr(tensor->buffer);
        weight.scales = base + tensor->scale_offset;
    }
    return weight;
}

/* f32 weights are used in place; narrower ones are widened one row at a time so the working set
 * stays in cache and no dequantised copy of the model is ever made. */
const float *moira_cpu_weight_row(const moira_cpu_weight_t *weight, int64_t matrix, int64_t row,
                                  float *scratch) {
    const unsigned char *data = weight->data + (size_t)(matrix * weight->rows) * weight->row_bytes;
    if (weight->dtype == MOIRA_DTYPE_F32)
        return (const float *)(data + (size_t)row * weight->row_bytes);
    const unsigned char *scales =
        weight->scales ? weight->scales + (size_t)matrix * weight->scale_bytes : NULL;
    moira_weight_row_to_f32(weight->dtype, data, scales, weight->rows, weight->cols, row, scratch);
    return scratch;
}

/* Eight independent partial sums let the compiler vectorise and keep the rounding error of long
 * rows well inside the f32 tolerance (DESIGN.md §4), without reassociating behind our back. */
float moira_cpu_dot(const float *a, const float *b, int64_t n) {
    float partial[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int lane = 0; lane < 8; lane++)
            partial[lane] += a[i + lane] * b[i + lane];
    float tail = 0;
    for (; i < n; i++)
        tail += a[i] * b[i];
    return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
           ((partial[2] + partial[6]) + (partial[3] + partial[7])) + tail;
}

/* The portable version is a loop of dots; a SIMD version shares each weight load across rows. */
void moira_cpu_dot_rows(const float *const *rows, int n_rows, const float *w, int64_t n, float *out,
                        int64_t out_stride) {
    for (int r = 0; r < n_rows; r++)
        out[r * out_stride] = moira_cpu_dot(rows[r], w, n);
}

/* The accumulate-a-scaled-row primitive of the absorbed MLA and combine paths. */
void moira_cpu_axpy(float alpha, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

/* exp(-z) overflowing to infinity for very negative z gives -0, the right limit. */
float moira_cpu_silu(float z) {
    return z / (1.0f + expf(-z));
}

/* Regions are cache-line multiples so threads never share a line. */
moira_status_t moira_cpu_scratch_alloc(moira_threadpool_t *pool, size_t bytes_per_thread,
                                       moira_cpu_scratch_t *out_scratch) {
    size_t per_thread = MOIRA_CPU_ALIGN(bytes_per_thread ? bytes_per_thread : 1);
    size_t threads = (size_t)moira_threadpool_size(pool);
    out_scratch->bytes_per_thread = per_thread;
    out_scratch->base = moira_cpu_arena_take(moira_cpu_arena_bound(), per_thread * threads);
    if (!out_scratch->base)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                                 "cpu kernels: cannot allocate %zu bytes of scratch",
                                 per_thread * threads);
    return MOIRA_OK_STATUS;
}

/* Clears the pointer so a second free is harmless. */
void moira_cpu_scratch_free(moira_cpu_scratch_t *scratch) {
    moira_cpu_arena_give(moira_cpu_arena_bound(), scratch->base);
    scratch->base = NULL;
}

/* The message names the op, as the allocations these replaced did. */
moira_status_t moira_cpu_temp_alloc(size_t bytes, const char *what, void **out_temp) {
    *out_temp = moira_cpu_arena_take(moira_cpu_arena_bound(), bytes);
    if (!*out_temp)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory (%zu bytes)", what,
                                 bytes);
    return MOIRA_OK_STATUS;
}

/* NULL is ignored, like free(). */
void moira_cpu_temp_free(void *temp) {
    moira_cpu_arena_give(moira_cpu_arena_bound(), temp);
}

/* About 32K multiply-adds (some microseconds) per chunk: below that, waking a thread costs more
 * than it saves, and the pool runs loops smaller than one grain on the caller's thread. */
int64_t moira_cpu_grain(int64_t work_per_item) {
    const int64_t min_work = 1 << 15;
    if (work_per_item <= 0) return min_work;
    int64_t grain = min_work / work_per_item;
    return grain > 1 ? grain : 1;
}
