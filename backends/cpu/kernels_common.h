/* What the cpu kernels share: weight rows dequantised on the fly, the inner micro-kernels, per-
 * thread scratch, work splitting, and the batched linear driver that several ops reuse. Private
 * to backends/cpu/.
 *
 * The micro-kernels (moira_cpu_dot, moira_cpu_dot_rows, moira_cpu_axpy) are the only places
 * that touch many floats in a loop; a SIMD version (AVX-512, AMX) replaces their bodies without
 * changing any kernel. */
#ifndef MOIRA_BACKENDS_CPU_KERNELS_COMMON_H
#define MOIRA_BACKENDS_CPU_KERNELS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "backends/cpu/cpu_kernels.h"

/* ---- Operand access ---- */

static inline float *moira_cpu_f32(const moira_dtensor_t *tensor) {
    return (float *)moira_cpu_tensor_ptr(tensor);
}

static inline int32_t *moira_cpu_i32(const moira_dtensor_t *tensor) {
    return (int32_t *)moira_cpu_tensor_ptr(tensor);
}

/* Rows of a tensor seen as a matrix (every dimension but the last). */
static inline int64_t moira_cpu_rows(const moira_dtensor_t *tensor) {
    int64_t cols = tensor->rank ? tensor->shape[tensor->rank - 1] : 1;
    return cols ? moira_dtensor_numel(tensor) / cols : 0;
}

/* ---- Weights ---- */

/* A weight operand of one matrix [rows, cols] or packed matrices [E, rows, cols], any weight
 * format. Rows are scaled as they are read (runtime/weight_format.h). */
typedef struct moira_cpu_weight {
    const unsigned char *data;
    moira_dtype_t dtype;
    size_t row_bytes;
    int64_t rows, cols;          /* of one matrix */
    const unsigned char *scales; /* scaled formats: every matrix's, one after another */
    size_t scale_bytes;          /* per matrix */
} moira_cpu_weight_t;

moira_cpu_weight_t moira_cpu_weight_view(const moira_dtensor_t *tensor);

/* Row `row` of matrix `matrix` as f32: the weight's own memory when it is f32, else converted
 * into `scratch` (cols floats). */
const float *moira_cpu_weight_row(const moira_cpu_weight_t *weight, int64_t matrix, int64_t row,
                                  float *scratch);

/* ---- Micro-kernels ---- */

/* Dot product of two f32 rows with several partial sums. */
float moira_cpu_dot(const float *a, const float *b, int64_t n);

/* out[r * out_stride] = dot(rows[r], w) for r < n_rows: one weight row against a block of
 * activation rows, so the weight row is read once per block. */
void moira_cpu_dot_rows(const float *const *rows, int n_rows, const float *w, int64_t n, float *out,
                        int64_t out_stride);

/* y += alpha * x */
void moira_cpu_axpy(float alpha, const float *x, float *y, int64_t n);

/* silu(z) = z / (1 + exp(-z)) */
float moira_cpu_silu(float z);

/* ---- Scratch and work splitting ---- */

#define MOIRA_CPU_ALIGN(bytes) (((size_t)(bytes) + 63) & ~(size_t)63)

/* One private region per pool thread, taken from the arena of the queue running the kernel
 * (scratch_arena.h): two queues may share a pool, never an arena. Regions are reused from launch
 * to launch, so a steady state allocates nothing. */
typedef struct moira_cpu_scratch {
    unsigned char *base; /* owned by the arena until moira_cpu_scratch_free */
    size_t bytes_per_thread;
} moira_cpu_scratch_t;

/* Fails with OUT_OF_MEMORY. Free in the reverse order of taking (scratch and temporaries alike):
 * freeing one gives back everything taken after it. */
moira_status_t moira_cpu_scratch_alloc(moira_threadpool_t *pool, size_t bytes_per_thread,
                                       moira_cpu_scratch_t *out_scratch);
void moira_cpu_scratch_free(moira_cpu_scratch_t *scratch);

/* One shared temporary of `bytes` (64-byte aligned) from the same arena, for whatever a kernel
 * needs besides per-thread regions; `what` names the op in the OUT_OF_MEMORY message. Given
 * back with moira_cpu_temp_free, in the same stack order as scratch. */
moira_status_t moira_cpu_temp_alloc(size_t bytes, const char *what, void **out_temp);
void moira_cpu_temp_free(void *temp);

/* Thread `thread`'s region; carve it with moira_cpu_take. */
static inline unsigned char *moira_cpu_scratch_at(const moira_cpu_scratch_t *scratch, int thread) {
    return scratch->base + (size_t)thread * scratch->bytes_per_thread;
}

/* Takes `bytes` (64-byte aligned) from a region cursor. Size regions with MOIRA_CPU_ALIGN. */
static inline void *moira_cpu_take(unsigned char **cursor, size_t bytes) {
    void *taken = *cursor;
    *cursor += MOIRA_CPU_ALIGN(bytes);
    return taken;
}

/* Iterations per chunk so that one chunk is worth waking a thread for, given roughly how many
 * multiply-adds one iteration costs. */
int64_t moira_cpu_grain(int64_t work_per_item);

/* ---- Batched linear: y[b] = beta * y[b] + x[b] W[b]^T ---- */

/* A linear over `batch` independent slices that share a weight matrix's row space: slice b
 * reads x at x + b * x_batch_step, weight rows weight_row0 + b * weight_batch_rows onwards, and
 * writes y at y + b * y_batch_step. Plain linear is batch 1; kv_b_proj's per-head V part is one
 * slice per head.
 *
 * With `packed` (the weight's packed panels, packed_weights.h; weight_row0 and weight_batch_rows
 * then multiples of 16) the GEMM tiles run it (linear_panels.c); without, weight rows are widened
 * one at a time. With `packed_up` too (SWIGLU's fused gate/up projection: `packed` is W1, and
 * both have the same panel dtype) y = silu(x W1^T) * (x W3^T) and beta is ignored. */
typedef struct moira_cpu_linear_job {
    const float *x;
    int64_t x_stride, x_batch_step;
    const moira_cpu_weight_t *weight;
    int64_t matrix, weight_row0, weight_batch_rows;
    float *y;
    int64_t y_stride, y_batch_step;
    int64_t batch, tokens, out_features, in_features;
    float beta;                               /* 0: y is only written, never read */
    const struct moira_cpu_packed *packed;    /* borrowed, or NULL */
    const struct moira_cpu_packed *packed_up; /* borrowed, or NULL */
} moira_cpu_linear_job_t;

moira_status_t moira_cpu_linear_run(moira_threadpool_t *pool, const moira_cpu_linear_job_t *job);

/* ---- Kernels, one per op (launch already validated) ---- */

typedef moira_status_t (*moira_cpu_kernel_fn)(const moira_op_launch_t *launch,
                                              moira_threadpool_t *pool);

moira_status_t moira_cpu_rmsnorm(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_rope(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_linear(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_gate(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_moe_dispatch(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_moe_ffn(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_moe_combine(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_swiglu(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_mla_attention(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_mla_absorb_q(const moira_op_launch_t *launch, moira_threadpool_t *pool);
moira_status_t moira_cpu_mla_decode_attention(const moira_op_launch_t *launch,
                                              moira_threadpool_t *pool);
moira_status_t moira_cpu_mla_absorb_out(const moira_op_launch_t *launch, moira_threadpool_t *pool);

#endif
