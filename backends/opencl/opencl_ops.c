/* The OpenCL launchers: one function per op kind (ops/op.h) that sets a kernel's arguments and
 * enqueues it, plus the temporary buffers some ops need (released at once; CL frees them when the
 * kernels using them are done). Launches arrive validated by moira_op_validate. */
#include <clblast_c.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/opencl/opencl_internal.h"
#include "runtime/env.h"
#include "runtime/log.h"

#define TILE 16 /* kernels/linear.cl and moe.cl */
#define BLOCK 4 /* kernels/linear.cl: outputs per work-item per dimension */
#define WIDE (TILE * BLOCK)
#define NARROW 4 /* kernels/linear.cl: tokens per work-item of moira_linear_narrow */
/* Up to this many tokens the narrow kernel wins over WIDE x WIDE tiles (measured on PoCL). */
#define NARROW_MAX_TOKENS 32
#define ROWS_TILE 8      /* kernels/linear.cl: tokens per work-group of moira_linear_rows */
#define ROWS_COLUMNS 128 /* kernels/linear.cl: output columns per work-group of it */
#define NORM_GROUP 64    /* kernels/norm_rope.cl */
#define MOE_TILE 8       /* kernels/moe.cl: rows per tile */
#define MOE_COLUMNS 128  /* kernels/moe.cl: output columns per work-group */
#define ATTEND_GROUP 64  /* kernels/mla.cl */
#define ATTEND_MAX_QUERY 2048
#define ATTEND_MAX_VALUE (ATTEND_GROUP * 16)
#define GATE_MAX_GROUPS 64

/* ---- Kernel arguments ---- */

/* Arguments are set in order; the first CL error sticks and is reported once at enqueue. */
typedef struct args {
    cl_kernel kernel;
    cl_uint next;
    cl_int error;
} args_t;

/* Starts argument setting for one of the device's kernels. */
static args_t args_for(opencl_device_t *device, opencl_kernel_id_t id) {
    return (args_t){.kernel = device->kernels[id]};
}

/* Sets the next argument unless an earlier one already failed. */
static void arg(args_t *a, size_t size, const void *value) {
    if (a->error == CL_SUCCESS) a->error = clSetKernelArg(a->kernel, a->next, size, value);
    a->next++;
}

/* A buffer argument; NULL stands for an absent optional operand. */
static void arg_mem(args_t *a, cl_mem mem) {
    arg(a, sizeof(cl_mem), mem ? &mem : NULL);
}

/* The fixed-width CL types keep host and kernel argument sizes equal on every platform. */
static void arg_long(args_t *a, int64_t value) {
    cl_long v = value;
    arg(a, sizeof(v), &v);
}

static void arg_ulong(args_t *a, uint64_t value) {
    cl_ulong v = value;
    arg(a, sizeof(v), &v);
}

static void arg_int(args_t *a, int64_t value) {
    cl_int v = (cl_int)value;
    arg(a, sizeof(v), &v);
}

static void arg_float(args_t *a, float value) {
    arg(a, sizeof(value), &value);
}

/* An f32 or i32 tensor: its buffer and its offset in elements (a NULL buffer for an absent
 * optional operand). */
static void arg_tensor(args_t *a, const moira_dtensor_t *tensor) {
    arg_mem(a, tensor->buffer ? moira_opencl_mem(tensor->buffer) : NULL);
    arg_long(a, tensor->buffer ? (int64_t)(tensor->offset / moira_dtype_size(tensor->dtype)) : 0);
}

/* kernels/common.cl's dtype codes. */
static int weight_dtype_code(moira_dtype_t dtype) {
    switch (dtype) {
    case MOIRA_DTYPE_F16:
        return 1;
    case MOIRA_DTYPE_BF16:
        return 2;
    case MOIRA_DTYPE_F8_E4M3:
        return 3;
    case MOIRA_DTYPE_MXFP4:
        return 4;
    case MOIRA_DTYPE_INT8:
        return 5;
    default:
        return 0;
    }
}

/* WEIGHT_PARAMS in kernels/common.cl: buffer, byte offset, dtype, scale offset, rows, cols. */
static void arg_weight(args_t *a, const moira_dtensor_t *weight) {
    arg_mem(a, moira_opencl_mem(weight->buffer));
    arg_ulong(a, weight->offset);
    arg_int(a, weight_dtype_code(weight->dtype));
    bool scaled = weight->dtype == MOIRA_DTYPE_F8_E4M3 || moira_dtype_is_quantized(weight->dtype);
    arg_ulong(a, scaled ? weight->scale_offset : 0);
    arg_long(a, weight->shape[weight->rank - 2]);
    arg_long(a, weight->shape[weight->rank - 1]);
}

/* Global sizes must be multiples of the work-group size. */
static size_t round_up(int64_t value, size_t multiple) {
    return ((size_t)value + multiple - 1) / multiple * multiple;
}

/* The work-group size of the simple one-dimensional kernels. Every launch names its work-group
 * size: a driver that compiles per work-group size (PoCL) then builds one variant per kernel
 * rather than one per problem shape, which keeps first runs short and its cache small. Global
 * sizes are rounded up to it; the kernels check their bounds. */
#define GROUP_1D 64

/* Enqueues a launch; empty ranges are skipped (CL refuses them). */
static moira_status_t enqueue(opencl_queue_t *queue, args_t *a, const char *name, cl_uint dims,
                              const size_t *global, const size_t *local) {
    if (a->error != CL_SUCCESS)
        return moira_status_annotate(moira_opencl_error(a->error, "clSetKernelArg"),
                                     "kernel %s argument %u", name, a->next);
    for (cl_uint d = 0; d < dims; d++)
        if (global[d] == 0) return MOIRA_OK_STATUS;
    cl_int code =
        clEnqueueNDRangeKernel(queue->queue, a->kernel, dims, NULL, global, local, 0, NULL, NULL);
    if (code != CL_SUCCESS)
        return moira_status_annotate(moira_opencl_error(code, "clEnqueueNDRangeKernel"),
                                     "kernel %s", name);
    return MOIRA_OK_STATUS;
}

/* A scratch buffer for one launch; the caller releases it right after enqueueing. */
static moira_status_t temp_buffer(opencl_device_t *device, size_t bytes, const void *init,
                                  cl_mem *out_mem) {
    cl_int code = CL_SUCCESS;
    cl_mem_flags flags = CL_MEM_READ_WRITE | (init ? CL_MEM_COPY_HOST_PTR : 0);
    *out_mem = clCreateBuffer(device->context, flags, bytes ? bytes : 4, (void *)init, &code);
    if (code != CL_SUCCESS) return moira_opencl_error(code, "clCreateBuffer (scratch)");
    return MOIRA_OK_STATUS;
}

/* ---- Linear ---- */

/* y[b] = beta * y[b] + x[b] W[b]^T; see moira_linear in kernels/linear.cl. */
typedef struct linear_job {
    cl_mem x;
    int64_t x_off, x_stride, x_batch_step;
    const moira_dtensor_t *weight;
    int64_t matrix, w_row0, w_batch_rows;
    bool w_transposed; /* weight stored [in_features, out_features]: y = x W */
    cl_mem y;
    int64_t y_off, y_stride, y_batch_step;
    int64_t batch, tokens, out_features, in_features;
    float beta;
} linear_job_t;

/* Small token counts take the narrow kernel, larger ones the register-blocked tiles. */
static moira_status_t run_moira_linear(opencl_device_t *device, opencl_queue_t *queue,
                                       const linear_job_t *job) {
    bool narrow = job->tokens <= NARROW_MAX_TOKENS;
    if (!narrow && !job->w_transposed) {
        /* Many tokens, weight rows streamed per work-item (kernels/linear.cl). */
        args_t a = args_for(device, KERNEL_moira_linear_rows);
        arg_mem(&a, job->x);
        arg_long(&a, job->x_off);
        arg_long(&a, job->x_stride);
        arg_long(&a, job->x_batch_step);
        arg_weight(&a, job->weight);
        arg_long(&a, job->matrix);
        arg_long(&a, job->w_row0);
        arg_long(&a, job->w_batch_rows);
        arg_mem(&a, job->y);
        arg_long(&a, job->y_off);
        arg_long(&a, job->y_stride);
        arg_long(&a, job->y_batch_step);
        arg_int(&a, job->tokens);
        arg_int(&a, job->out_features);
        arg_int(&a, job->in_features);
        arg_float(&a, job->beta);
        size_t global[3] = {round_up(job->out_features, ROWS_COLUMNS),
                            round_up(job->tokens, ROWS_TILE) / ROWS_TILE, (size_t)job->batch};
        size_t local[3] = {ROWS_COLUMNS, 1, 1};
        return enqueue(queue, &a, "moira_linear_rows", 3, global, local);
    }
    args_t a = args_for(device, narrow ? KERNEL_moira_linear_narrow : KERNEL_moira_linear);
    arg_mem(&a, job->x);
    arg_long(&a, job->x_off);
    arg_long(&a, job->x_stride);
    arg_long(&a, job->x_batch_step);
    arg_weight(&a, job->weight);
    arg_long(&a, job->matrix);
    arg_long(&a, job->w_row0);
    arg_long(&a, job->w_batch_rows);
    arg_int(&a, job->w_transposed);
    arg_mem(&a, job->y);
    arg_long(&a, job->y_off);
    arg_long(&a, job->y_stride);
    arg_long(&a, job->y_batch_step);
    arg_int(&a, job->tokens);
    arg_int(&a, job->out_features);
    arg_int(&a, job->in_features);
    arg_float(&a, job->beta);
    if (narrow) {
        size_t global[3] = {round_up(job->out_features, GROUP_1D),
                            round_up(job->tokens, NARROW) / NARROW, (size_t)job->batch};
        size_t local[3] = {GROUP_1D, 1, 1};
        return enqueue(queue, &a, "moira_linear_narrow", 3, global, local);
    }
    size_t global[3] = {round_up(job->out_features, WIDE) / BLOCK,
                        round_up(job->tokens, WIDE) / BLOCK, (size_t)job->batch};
    size_t local[3] = {TILE, TILE, 1};
    return enqueue(queue, &a, "moira_linear", 3, global, local);
}

/* ---- CLBlast for dense projections ---- */

/* Below this many multiply-adds a launch is too small for CLBlast to win and not worth the
 * seconds its kernels take to compile on a CPU driver; the projections of real models are far
 * above it. */
#define CLBLAST_MIN_WORK ((int64_t)1 << 24)

/* CLBlast takes plain row-major f32 matrices: one slice, f32 weights from row 0, and (because
 * CLBlast may read C even when beta is 0) a contiguous y that can be zeroed first. */
static bool clblast_eligible(const linear_job_t *job) {
    if (job->batch != 1 || job->weight->dtype != MOIRA_DTYPE_F32 || job->matrix != 0 ||
        job->w_row0 != 0 || job->w_transposed)
        return false;
    if (job->beta == 0.0f && job->y_stride != job->out_features) return false;
    return job->tokens * job->out_features * job->in_features >= CLBLAST_MIN_WORK;
}

/* y = beta * y + x W^T as one row-major SGEMM (W transposed in place by CLBlast's flag). */
static moira_status_t run_clblast_linear(opencl_queue_t *queue, const linear_job_t *job) {
    if (job->beta == 0.0f) {
        float zero = 0.0f;
        cl_int code = clEnqueueFillBuffer(
            queue->queue, job->y, &zero, sizeof(zero), (size_t)job->y_off * sizeof(float),
            (size_t)(job->tokens * job->out_features) * sizeof(float), 0, NULL, NULL);
        if (code != CL_SUCCESS) return moira_opencl_error(code, "clEnqueueFillBuffer");
    }
    const moira_dtensor_t *w = job->weight;
    CLBlastStatusCode code =
        CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes,
                     (size_t)job->tokens, (size_t)job->out_features, (size_t)job->in_features, 1.0f,
                     job->x, (size_t)job->x_off, (size_t)job->x_stride, moira_opencl_mem(w->buffer),
                     w->offset / sizeof(float), (size_t)job->in_features, job->beta, job->y,
                     (size_t)job->y_off, (size_t)job->y_stride, &queue->queue, NULL);
    if (code != CLBlastSuccess)
        return moira_status_make(
            MOIRA_CODE_DEVICE, "opencl: CLBlastSgemm %lldx%lldx%lld: %s (%d)",
            (long long)job->tokens, (long long)job->out_features, (long long)job->in_features,
            code < 0 && code > -100 ? moira_opencl_error_name(code) : "CLBlast error", (int)code);
    return MOIRA_OK_STATUS;
}

/* A monotonic clock for the CLBlast-or-not measurement. */
static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

/* Best of three runs after a warm-up (which for CLBlast includes compiling its kernels). */
static moira_status_t time_linear(opencl_device_t *device, opencl_queue_t *queue,
                                  const linear_job_t *job, bool clblast, double *out_seconds) {
    double best = INFINITY;
    for (int run = 0; run < 4; run++) {
        double start = seconds_now();
        MOIRA_RETURN_IF_ERROR(clblast ? run_clblast_linear(queue, job)
                                      : run_moira_linear(device, queue, job));
        cl_int code = clFinish(queue->queue);
        if (code != CL_SUCCESS) return moira_opencl_error(code, "clFinish");
        if (run > 0 && seconds_now() - start < best) best = seconds_now() - start;
    }
    *out_seconds = best;
    return MOIRA_OK_STATUS;
}

/* MOIRA_OPENCL_GEMM=clblast|moira forces a side (benchmarks); otherwise each new shape is timed
 * both ways once per process, into a scratch output so y is untouched, and the winner kept. */
static moira_status_t choose_clblast(opencl_device_t *device, opencl_queue_t *queue,
                                     const linear_job_t *job, bool *out_use_clblast) {
    static const char *const choices[] = {"clblast", "moira", NULL};
    int forced = moira_env_choice("MOIRA_OPENCL_GEMM", choices);
    if (forced >= 0) {
        *out_use_clblast = forced == 0;
        return MOIRA_OK_STATUS;
    }
    for (int i = 0; i < device->n_gemm_choices; i++)
        if (device->gemm_choices[i].tokens == job->tokens &&
            device->gemm_choices[i].out_features == job->out_features &&
            device->gemm_choices[i].in_features == job->in_features) {
            *out_use_clblast = device->gemm_choices[i].use_clblast;
            return MOIRA_OK_STATUS;
        }
    *out_use_clblast = false;
    if (device->n_gemm_choices == MOIRA_OPENCL_MAX_GEMM_CHOICES) return MOIRA_OK_STATUS;
    cl_int code = CL_SUCCESS;
    size_t y_bytes = (size_t)(job->tokens * job->out_features) * sizeof(float);
    cl_mem scratch = clCreateBuffer(device->context, CL_MEM_READ_WRITE, y_bytes, NULL, &code);
    if (code != CL_SUCCESS) return moira_opencl_error(code, "clCreateBuffer (gemm trial)");
    linear_job_t trial = *job;
    trial.y = scratch;
    trial.y_off = 0;
    trial.y_stride = job->out_features;
    trial.beta = 0.0f;
    double own = 0, peer = 0;
    moira_status_t status = time_linear(device, queue, &trial, false, &own);
    if (!status) status = time_linear(device, queue, &trial, true, &peer);
    clReleaseMemObject(scratch);
    if (status) {
        /* CLBlast cannot run here (unsupported device, build failure): use our kernel. */
        MOIRA_LOG_I("%s: CLBlast unavailable for linear: %s", device->base.info.name,
                    moira_status_message(status));
        moira_status_free(status);
        peer = INFINITY;
    }
    bool use_clblast = peer < own;
    MOIRA_LOG_I("%s: linear %lldx%lldx%lld: moira %.3f ms, CLBlast %.3f ms -> %s",
                device->base.info.name, (long long)job->tokens, (long long)job->out_features,
                (long long)job->in_features, own * 1e3, peer * 1e3,
                use_clblast ? "CLBlast" : "moira");
    int slot = device->n_gemm_choices++;
    device->gemm_choices[slot].tokens = job->tokens;
    device->gemm_choices[slot].out_features = job->out_features;
    device->gemm_choices[slot].in_features = job->in_features;
    device->gemm_choices[slot].use_clblast = use_clblast;
    *out_use_clblast = use_clblast;
    return MOIRA_OK_STATUS;
}

/* Large f32 projections go to whichever of CLBlast and moira_linear measured faster. */
static moira_status_t run_linear(opencl_device_t *device, opencl_queue_t *queue,
                                 const linear_job_t *job) {
    bool use_clblast = false;
    if (clblast_eligible(job))
        MOIRA_RETURN_IF_ERROR(choose_clblast(device, queue, job, &use_clblast));
    return use_clblast ? run_clblast_linear(queue, job) : run_moira_linear(device, queue, job);
}

/* Kernels index f32/i32 buffers by element, not byte. */
static int64_t element_offset(const moira_dtensor_t *tensor) {
    return (int64_t)(tensor->offset / moira_dtype_size(tensor->dtype));
}

/* LINEAR: plain or strided x and y, any float weight dtype. */
static moira_status_t op_linear(opencl_device_t *device, opencl_queue_t *queue,
                                const moira_op_launch_t *launch) {
    const moira_linear_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *w = &launch->operands[1];
    const moira_dtensor_t *y = &launch->operands[2];
    linear_job_t job = {
        .x = moira_opencl_mem(x->buffer),
        .x_off = element_offset(x),
        .x_stride = moira_dtensor_row_stride(x),
        .weight = w,
        .y = moira_opencl_mem(y->buffer),
        .y_off = element_offset(y),
        .y_stride = moira_dtensor_row_stride(y),
        .batch = 1,
        .tokens = x->shape[0],
        .out_features = w->shape[0],
        .in_features = w->shape[1],
        .beta = params->beta,
    };
    return run_linear(device, queue, &job);
}

/* ---- Norm and rope ---- */

/* RMSNORM: one work-group per row; y may be x. */
static moira_status_t op_rmsnorm(opencl_device_t *device, opencl_queue_t *queue,
                                 const moira_op_launch_t *launch) {
    const moira_rmsnorm_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *y = &launch->operands[2];
    args_t a = args_for(device, KERNEL_moira_rmsnorm);
    arg_tensor(&a, x);
    arg_long(&a, moira_dtensor_row_stride(x));
    arg_tensor(&a, &launch->operands[1]);
    arg_tensor(&a, y);
    arg_long(&a, moira_dtensor_row_stride(y));
    arg_int(&a, x->shape[1]);
    arg_float(&a, params->eps);
    size_t global[2] = {NORM_GROUP, (size_t)(x->shape[1] ? x->shape[0] : 0)};
    size_t local[2] = {NORM_GROUP, 1};
    return enqueue(queue, &a, "moira_rmsnorm", 2, global, local);
}

/* Whether rope writes in place (then no copy of unrotated columns is needed). */
static bool same_view(const moira_dtensor_t *a, const moira_dtensor_t *b) {
    return a->buffer == b->buffer && a->offset == b->offset &&
           moira_dtensor_row_stride(a) == moira_dtensor_row_stride(b);
}

/* Copies x to y when they differ, then rotates y in place; inv_freq goes to the kernel as
 * (hi, lo) f32 pairs that together carry its double value. */
static moira_status_t op_rope(opencl_device_t *device, opencl_queue_t *queue,
                              const moira_op_launch_t *launch) {
    const moira_rope_params_t *params = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *positions = &launch->operands[1];
    const moira_dtensor_t *y = &launch->operands[2];
    int64_t tokens = x->shape[0], cols = x->shape[1];
    if (!same_view(x, y)) {
        args_t a = args_for(device, KERNEL_moira_copy_rows);
        arg_tensor(&a, x);
        arg_long(&a, moira_dtensor_row_stride(x));
        arg_tensor(&a, y);
        arg_long(&a, moira_dtensor_row_stride(y));
        arg_int(&a, cols);
        size_t global[2] = {round_up(cols, GROUP_1D), (size_t)tokens};
        size_t local[2] = {GROUP_1D, 1};
        MOIRA_RETURN_IF_ERROR(enqueue(queue, &a, "moira_copy_rows", 2, global, local));
    }
    int pairs = params->rope_dim / 2;
    float freqs[2 * MOIRA_ROPE_MAX_PAIRS];
    for (int i = 0; i < pairs; i++) {
        freqs[2 * i] = (float)params->inv_freq[i];
        freqs[2 * i + 1] = (float)(params->inv_freq[i] - (double)freqs[2 * i]);
    }
    cl_mem freq_mem = NULL;
    MOIRA_RETURN_IF_ERROR(temp_buffer(device, sizeof(float) * 2 * (size_t)pairs, freqs, &freq_mem));
    args_t a = args_for(device, KERNEL_moira_rope);
    arg_tensor(&a, y);
    arg_long(&a, moira_dtensor_row_stride(y));
    arg_tensor(&a, positions);
    arg_mem(&a, freq_mem);
    arg_int(&a, params->n_heads);
    arg_int(&a, params->head_stride);
    arg_int(&a, params->rope_offset);
    arg_int(&a, pairs);
    arg_float(&a, params->cos_sin_scale);
    size_t global[3] = {round_up(pairs, GROUP_1D), (size_t)params->n_heads, (size_t)tokens};
    size_t local[3] = {GROUP_1D, 1, 1};
    moira_status_t status = enqueue(queue, &a, "moira_rope", 3, global, local);
    clReleaseMemObject(freq_mem);
    return status;
}

/* ---- Gate ---- */

/* Logits by moira_linear into scratch, routing per token, then the capacity pass if any. */
static moira_status_t op_gate(opencl_device_t *device, opencl_queue_t *queue,
                              const moira_op_launch_t *launch) {
    const moira_gate_params_t *p = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *w = &launch->operands[1];
    const moira_dtensor_t *bias = &launch->operands[2], *idx = &launch->operands[3];
    const moira_dtensor_t *weight = &launch->operands[4], *selection = &launch->operands[5];
    int64_t tokens = x->shape[0], experts = p->n_experts;
    if (p->n_group > GATE_MAX_GROUPS)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "%s: gate with %d groups (at most %d)",
                                 device->base.info.name, p->n_group, GATE_MAX_GROUPS);
    if (tokens == 0) return MOIRA_OK_STATUS;
    size_t score_bytes = (size_t)(tokens * experts) * sizeof(float);
    cl_mem scores = NULL, chosen_scratch = NULL, taken = NULL;
    moira_status_t status = temp_buffer(device, score_bytes, NULL, &scores);
    if (!status && !selection->buffer)
        status = temp_buffer(device, score_bytes, NULL, &chosen_scratch);
    if (!status) {
        linear_job_t job = {
            .x = moira_opencl_mem(x->buffer),
            .x_off = element_offset(x),
            .x_stride = x->shape[1],
            .weight = w,
            .y = scores,
            .y_stride = experts,
            .batch = 1,
            .tokens = tokens,
            .out_features = experts,
            .in_features = x->shape[1],
        };
        status = run_linear(device, queue, &job);
    }
    if (!status) {
        args_t a = args_for(device, KERNEL_moira_gate_route);
        arg_mem(&a, scores);
        if (selection->buffer) {
            arg_tensor(&a, selection);
        } else {
            arg_mem(&a, chosen_scratch);
            arg_long(&a, 0);
        }
        arg_tensor(&a, bias);
        arg_int(&a, bias->buffer != NULL);
        arg_tensor(&a, idx);
        arg_tensor(&a, weight);
        arg_int(&a, experts);
        arg_int(&a, p->top_k);
        arg_int(&a, p->n_group);
        arg_int(&a, p->topk_group);
        arg_int(&a, p->scoring);
        arg_int(&a, p->norm_topk_prob);
        arg_float(&a, p->routed_scaling_factor);
        arg_int(&a, tokens);
        size_t global[1] = {round_up(tokens, GROUP_1D)};
        size_t local[1] = {GROUP_1D};
        status = enqueue(queue, &a, "moira_gate_route", 1, global, local);
    }
    int32_t capacity = moira_gate_capacity(p, tokens);
    if (!status && capacity != INT32_MAX) {
        status = temp_buffer(device, (size_t)experts * sizeof(int32_t), NULL, &taken);
        if (!status) {
            args_t a = args_for(device, KERNEL_moira_gate_capacity);
            arg_tensor(&a, idx);
            arg_tensor(&a, weight);
            arg_mem(&a, taken);
            arg_int(&a, experts);
            arg_int(&a, tokens * p->top_k);
            arg_int(&a, capacity);
            size_t one[1] = {1};
            status = enqueue(queue, &a, "moira_gate_capacity", 1, one, one);
        }
    }
    if (scores) clReleaseMemObject(scores);
    if (chosen_scratch) clReleaseMemObject(chosen_scratch);
    if (taken) clReleaseMemObject(taken);
    return status;
}

/* ---- MoE ---- */

/* MOE_DISPATCH on one work-item: a stable counting sort is sequential and cheap. */
static moira_status_t op_moe_dispatch(opencl_device_t *device, opencl_queue_t *queue,
                                      const moira_op_launch_t *launch) {
    const moira_moe_dispatch_params_t *p = launch->params;
    int64_t assignments = moira_dtensor_numel(&launch->operands[0]);
    if (assignments > INT32_MAX)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "moe_dispatch: %lld assignments overflow int32 rows",
                                 (long long)assignments);
    args_t a = args_for(device, KERNEL_moira_moe_dispatch);
    arg_tensor(&a, &launch->operands[0]);
    arg_int(&a, assignments);
    arg_int(&a, p->n_experts);
    arg_tensor(&a, &launch->operands[1]);
    arg_tensor(&a, &launch->operands[2]);
    arg_tensor(&a, &launch->operands[3]);
    size_t one[1] = {1};
    return enqueue(queue, &a, "moira_moe_dispatch", 1, one, one);
}

/* The grouped FFN kernel of a format (kernels/moe.cl): MXFP4's or INT8's own when the weights
 * it reads (`a`, `b`) are both in it, else the float kernel `generic`, which reads every type.
 * The ids run up, down, up_mxfp4, down_mxfp4, up_int8, down_int8. */
static opencl_kernel_id_t moe_kernel(opencl_kernel_id_t generic, const moira_dtensor_t *a,
                                     const moira_dtensor_t *b) {
    if (a->dtype != b->dtype) return generic;
    if (a->dtype == MOIRA_DTYPE_MXFP4) return generic + 2;
    if (a->dtype == MOIRA_DTYPE_INT8) return generic + 4;
    return generic;
}

static const char *const moe_kernel_names[] = {"moira_moe_up",       "moira_moe_down",
                                               "moira_moe_up_mxfp4", "moira_moe_down_mxfp4",
                                               "moira_moe_up_int8",  "moira_moe_down_int8"};

/* Three launches whatever the expert count: the tile list, the gate/up half for every expert's
 * tiles, the down half likewise. */
static moira_status_t op_moe_ffn(opencl_device_t *device, opencl_queue_t *queue,
                                 const moira_op_launch_t *launch) {
    const moira_moe_ffn_params_t *p = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *w1 = &launch->operands[1];
    const moira_dtensor_t *w3 = &launch->operands[2], *w2 = &launch->operands[3];
    const moira_dtensor_t *offsets = &launch->operands[4], *sorted = &launch->operands[5];
    const moira_dtensor_t *ys = &launch->operands[6];
    int64_t assignments = ys->shape[0], hidden = x->shape[1];
    int64_t experts = w1->shape[0], inter = w1->shape[1];
    if (assignments == 0 || experts == 0) return MOIRA_OK_STATUS;
    if (assignments > INT32_MAX)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "moe_ffn: too many assignments");
    int64_t max_tiles = (assignments + MOE_TILE - 1) / MOE_TILE + experts;
    cl_mem tiles = NULL, h = NULL;
    moira_status_t status =
        temp_buffer(device, (size_t)max_tiles * 2 * sizeof(int32_t), NULL, &tiles);
    if (!status)
        status = temp_buffer(device, (size_t)(assignments * inter) * sizeof(float), NULL, &h);
    if (!status) {
        args_t a = args_for(device, KERNEL_moira_moe_tiles);
        arg_tensor(&a, offsets);
        arg_int(&a, experts);
        arg_int(&a, assignments);
        arg_mem(&a, tiles);
        arg_int(&a, max_tiles);
        size_t one[1] = {1};
        status = enqueue(queue, &a, "moira_moe_tiles", 1, one, one);
    }
    if (!status) {
        opencl_kernel_id_t id = moe_kernel(KERNEL_moira_moe_up, w1, w3);
        args_t a = args_for(device, id);
        arg_tensor(&a, x);
        arg_weight(&a, w1);
        arg_weight(&a, w3);
        arg_tensor(&a, offsets);
        arg_tensor(&a, sorted);
        arg_mem(&a, tiles);
        arg_mem(&a, h);
        arg_int(&a, hidden);
        arg_int(&a, inter);
        arg_int(&a, p->top_k);
        arg_int(&a, assignments);
        arg_int(&a, x->shape[0]);
        size_t global[2] = {round_up(inter, MOE_COLUMNS), (size_t)max_tiles};
        size_t local[2] = {MOE_COLUMNS, 1};
        status = enqueue(queue, &a, moe_kernel_names[id - KERNEL_moira_moe_up], 2, global, local);
    }
    if (!status) {
        opencl_kernel_id_t id = moe_kernel(KERNEL_moira_moe_down, w2, w2);
        args_t a = args_for(device, id);
        arg_mem(&a, h);
        arg_weight(&a, w2);
        arg_tensor(&a, offsets);
        arg_mem(&a, tiles);
        arg_tensor(&a, ys);
        arg_int(&a, hidden);
        arg_int(&a, inter);
        arg_int(&a, assignments);
        size_t global[2] = {round_up(hidden, MOE_COLUMNS), (size_t)max_tiles};
        size_t local[2] = {MOE_COLUMNS, 1};
        status = enqueue(queue, &a, moe_kernel_names[id - KERNEL_moira_moe_up], 2, global, local);
    }
    if (tiles) clReleaseMemObject(tiles);
    if (h) clReleaseMemObject(h);
    return status;
}

/* MOE_COMBINE: one work-item per output element, experts summed in selection order. */
static moira_status_t op_moe_combine(opencl_device_t *device, opencl_queue_t *queue,
                                     const moira_op_launch_t *launch) {
    const moira_moe_combine_params_t *p = launch->params;
    const moira_dtensor_t *ys = &launch->operands[0], *pos = &launch->operands[1];
    const moira_dtensor_t *y = &launch->operands[3];
    args_t a = args_for(device, KERNEL_moira_moe_combine);
    arg_tensor(&a, ys);
    arg_tensor(&a, pos);
    arg_tensor(&a, &launch->operands[2]);
    arg_tensor(&a, y);
    arg_int(&a, y->shape[1]);
    arg_int(&a, pos->shape[1]);
    arg_int(&a, ys->shape[0]);
    arg_float(&a, p->beta);
    size_t global[2] = {round_up(y->shape[1], GROUP_1D), (size_t)y->shape[0]};
    size_t local[2] = {GROUP_1D, 1};
    return enqueue(queue, &a, "moira_moe_combine", 2, global, local);
}

/* h = silu(x W1^T) * (x W3^T), then y = beta * y + h W2^T. Many tokens: the fused tiled
 * gate/up kernel. Few tokens (decode): two narrow linears and an elementwise pass, since a tile
 * of 16 tokens would be mostly padding. */
static moira_status_t op_swiglu(opencl_device_t *device, opencl_queue_t *queue,
                                const moira_op_launch_t *launch) {
    const moira_swiglu_params_t *p = launch->params;
    const moira_dtensor_t *x = &launch->operands[0], *w1 = &launch->operands[1];
    const moira_dtensor_t *w3 = &launch->operands[2], *w2 = &launch->operands[3];
    const moira_dtensor_t *y = &launch->operands[4];
    int64_t tokens = x->shape[0], hidden = x->shape[1], inter = w1->shape[0];
    if (tokens == 0) return MOIRA_OK_STATUS;
    bool narrow = tokens <= NARROW_MAX_TOKENS;
    size_t h_bytes = (size_t)(tokens * inter) * sizeof(float);
    cl_mem h = NULL, up = NULL;
    moira_status_t status = temp_buffer(device, h_bytes, NULL, &h);
    if (!status && narrow) status = temp_buffer(device, h_bytes, NULL, &up);
    linear_job_t project = {
        .x = moira_opencl_mem(x->buffer),
        .x_off = element_offset(x),
        .x_stride = hidden,
        .weight = w1,
        .y = h,
        .y_stride = inter,
        .batch = 1,
        .tokens = tokens,
        .out_features = inter,
        .in_features = hidden,
    };
    if (!status && narrow) {
        status = run_linear(device, queue, &project);
        project.weight = w3;
        project.y = up;
        if (!status) status = run_linear(device, queue, &project);
        if (!status) {
            args_t a = args_for(device, KERNEL_moira_silu_mul);
            arg_mem(&a, h);
            arg_mem(&a, up);
            arg_long(&a, tokens * inter);
            size_t global[1] = {round_up(tokens * inter, GROUP_1D)};
            size_t local[1] = {GROUP_1D};
            status = enqueue(queue, &a, "moira_silu_mul", 1, global, local);
        }
    } else if (!status) {
        args_t a = args_for(device, KERNEL_moira_swiglu_up);
        arg_tensor(&a, x);
        arg_weight(&a, w1);
        arg_weight(&a, w3);
        arg_mem(&a, h);
        arg_int(&a, tokens);
        arg_int(&a, inter);
        arg_int(&a, hidden);
        size_t global[2] = {round_up(inter, TILE), round_up(tokens, TILE)};
        size_t local[2] = {TILE, TILE};
        status = enqueue(queue, &a, "moira_swiglu_up", 2, global, local);
    }
    if (!status) {
        linear_job_t job = {
            .x = h,
            .x_stride = inter,
            .weight = w2,
            .y = moira_opencl_mem(y->buffer),
            .y_off = element_offset(y),
            .y_stride = hidden,
            .batch = 1,
            .tokens = tokens,
            .out_features = hidden,
            .in_features = inter,
            .beta = p->beta,
        };
        status = run_linear(device, queue, &job);
    }
    if (h) clReleaseMemObject(h);
    if (up) clReleaseMemObject(up);
    return status;
}

/* ---- MLA ---- */

/* One side of moira_mla_attend's dot products or values: where the rows start and how far apart
 * rows (per key or token) and heads are. */
typedef struct attend_operand {
    const moira_dtensor_t *tensor;
    int64_t extra_offset, row_stride, head_stride;
} attend_operand_t;

typedef struct attend_job {
    attend_operand_t q1, q2, k1, k2, v, out;
    int64_t n1, n2, v_width, n_keys, tokens, heads;
    const moira_dtensor_t *positions;
    int decode_mode;
    float scale;
} attend_job_t;

/* Buffer, element offset and row stride (and head stride where the kernel takes one). */
static void arg_attend(args_t *a, const attend_operand_t *operand, bool with_head_stride) {
    arg_mem(a, moira_opencl_mem(operand->tensor->buffer));
    arg_long(a, element_offset(operand->tensor) + operand->extra_offset);
    arg_long(a, operand->row_stride);
    if (with_head_stride) arg_long(a, operand->head_stride);
}

/* Refuses widths beyond the kernel's local buffers rather than overrunning them. */
static moira_status_t run_attend(opencl_device_t *device, opencl_queue_t *queue,
                                 const attend_job_t *job) {
    if (job->n1 + job->n2 > ATTEND_MAX_QUERY || job->v_width > ATTEND_MAX_VALUE)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s: attention with query width %lld / value width %lld "
                                 "(at most %d / %d)",
                                 device->base.info.name, (long long)(job->n1 + job->n2),
                                 (long long)job->v_width, ATTEND_MAX_QUERY, ATTEND_MAX_VALUE);
    args_t a = args_for(device, KERNEL_moira_mla_attend);
    arg_attend(&a, &job->q1, true);
    arg_int(&a, job->n1);
    arg_attend(&a, &job->q2, true);
    arg_int(&a, job->n2);
    arg_attend(&a, &job->k1, true);
    arg_attend(&a, &job->k2, false);
    arg_attend(&a, &job->v, true);
    arg_int(&a, job->v_width);
    arg_tensor(&a, job->positions);
    arg_int(&a, job->n_keys);
    arg_int(&a, job->decode_mode);
    arg_attend(&a, &job->out, true);
    arg_float(&a, job->scale);
    size_t global[2] = {(size_t)(ATTEND_GROUP * job->heads), (size_t)job->tokens};
    size_t local[2] = {ATTEND_GROUP, 1};
    return enqueue(queue, &a, "moira_mla_attend", 2, global, local);
}

/* Prefill: q_nope . k_nope + q_pe . k_pe over kv rows, values from kv's v part. */
static moira_status_t op_mla_attention(opencl_device_t *device, opencl_queue_t *queue,
                                       const moira_op_launch_t *launch) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *q = &launch->operands[0], *kv = &launch->operands[1];
    int64_t q_width = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim);
    int64_t kv_width = (int64_t)p->n_heads * (p->nope_dim + p->v_dim);
    attend_job_t job = {
        .q1 = {q, 0, q_width, p->nope_dim + p->rope_dim},
        .q2 = {q, p->nope_dim, q_width, p->nope_dim + p->rope_dim},
        .k1 = {kv, 0, kv_width, p->nope_dim + p->v_dim},
        .k2 = {&launch->operands[2], 0, moira_dtensor_row_stride(&launch->operands[2]), 0},
        .v = {kv, p->nope_dim, kv_width, p->nope_dim + p->v_dim},
        .out = {&launch->operands[4], 0, (int64_t)p->n_heads * p->v_dim, p->v_dim},
        .n1 = p->nope_dim,
        .n2 = p->rope_dim,
        .v_width = p->v_dim,
        .n_keys = q->shape[0],
        .tokens = q->shape[0],
        .heads = p->n_heads,
        .positions = &launch->operands[3],
        .decode_mode = 0,
        .scale = p->scale,
    };
    return run_attend(device, queue, &job);
}

/* Decode: q_lat . c + q_pe . k_pe over the latent cache, values are c itself. */
static moira_status_t op_mla_decode_attention(opencl_device_t *device, opencl_queue_t *queue,
                                              const moira_op_launch_t *launch) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *q_lat = &launch->operands[0], *q = &launch->operands[1];
    const moira_dtensor_t *c = &launch->operands[2];
    int64_t latent = p->kv_lora_rank;
    int64_t q_width = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim);
    attend_job_t job = {
        .q1 = {q_lat, 0, p->n_heads * latent, latent},
        .q2 = {q, p->nope_dim, q_width, p->nope_dim + p->rope_dim},
        .k1 = {c, 0, latent, 0},
        .k2 = {&launch->operands[3], 0, p->rope_dim, 0},
        .v = {c, 0, latent, 0},
        .out = {&launch->operands[5], 0, p->n_heads * latent, latent},
        .n1 = latent,
        .n2 = p->rope_dim,
        .v_width = latent,
        .n_keys = c->shape[0],
        .tokens = q_lat->shape[0],
        .heads = p->n_heads,
        .positions = &launch->operands[4],
        .decode_mode = 1,
        .scale = p->scale,
    };
    return run_attend(device, queue, &job);
}

/* q_lat[t,h] = q_nope[t,h] W_UK[h]: one x W linear per head (W_UK[h] is stored [nope, L]), as a
 * single batched launch. */
static moira_status_t op_mla_absorb_q(opencl_device_t *device, opencl_queue_t *queue,
                                      const moira_op_launch_t *launch) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *q = &launch->operands[0], *q_lat = &launch->operands[2];
    int64_t latent = p->kv_lora_rank;
    linear_job_t job = {
        .x = moira_opencl_mem(q->buffer),
        .x_off = element_offset(q),
        .x_stride = (int64_t)p->n_heads * (p->nope_dim + p->rope_dim),
        .x_batch_step = p->nope_dim + p->rope_dim,
        .weight = &launch->operands[1],
        .w_row0 = 0,
        .w_batch_rows = p->nope_dim + p->v_dim,
        .w_transposed = true,
        .y = moira_opencl_mem(q_lat->buffer),
        .y_off = element_offset(q_lat),
        .y_stride = p->n_heads * latent,
        .y_batch_step = latent,
        .batch = p->n_heads,
        .tokens = q->shape[0],
        .out_features = latent,
        .in_features = p->nope_dim,
    };
    return run_linear(device, queue, &job);
}

/* One linear per head over its V rows of kv_b_proj, as a single batched launch. */
static moira_status_t op_mla_absorb_out(opencl_device_t *device, opencl_queue_t *queue,
                                        const moira_op_launch_t *launch) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *o_lat = &launch->operands[0], *out = &launch->operands[2];
    int64_t latent = p->kv_lora_rank;
    linear_job_t job = {
        .x = moira_opencl_mem(o_lat->buffer),
        .x_off = element_offset(o_lat),
        .x_stride = p->n_heads * latent,
        .x_batch_step = latent,
        .weight = &launch->operands[1],
        .w_row0 = p->nope_dim,
        .w_batch_rows = p->nope_dim + p->v_dim,
        .y = moira_opencl_mem(out->buffer),
        .y_off = element_offset(out),
        .y_stride = (int64_t)p->n_heads * p->v_dim,
        .y_batch_step = p->v_dim,
        .batch = p->n_heads,
        .tokens = o_lat->shape[0],
        .out_features = p->v_dim,
        .in_features = latent,
    };
    return run_linear(device, queue, &job);
}

/* ---- Dispatch ---- */

typedef moira_status_t (*op_fn)(opencl_device_t *device, opencl_queue_t *queue,
                                const moira_op_launch_t *launch);

/* One launcher per op kind; an empty slot would make supports_op answer false. */
static const op_fn ops[MOIRA_OP_COUNT] = {
    [MOIRA_OP_RMSNORM] = op_rmsnorm,
    [MOIRA_OP_LINEAR] = op_linear,
    [MOIRA_OP_ROPE] = op_rope,
    [MOIRA_OP_GATE] = op_gate,
    [MOIRA_OP_MOE_DISPATCH] = op_moe_dispatch,
    [MOIRA_OP_MOE_FFN] = op_moe_ffn,
    [MOIRA_OP_MOE_COMBINE] = op_moe_combine,
    [MOIRA_OP_SWIGLU] = op_swiglu,
    [MOIRA_OP_MLA_ATTENTION] = op_mla_attention,
    [MOIRA_OP_MLA_ABSORB_Q] = op_mla_absorb_q,
    [MOIRA_OP_MLA_DECODE_ATTENTION] = op_mla_decode_attention,
    [MOIRA_OP_MLA_ABSORB_OUT] = op_mla_absorb_out,
};

/* The launch was validated at submission (opencl_enqueue_op). The kernels keep f32 latent caches
 * only (ops/op.h), so a bf16 one is refused by name rather than written as f32. */
moira_status_t moira_opencl_run_op(opencl_device_t *device, opencl_queue_t *queue,
                                   const moira_op_launch_t *launch) {
    op_fn fn = ops[launch->op];
    if (!fn)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED, "%s: no OpenCL kernel for op %s",
                                 device->base.info.name, moira_op_name(launch->op));
    moira_dtype_t cache = moira_op_cache_dtype(launch);
    if (cache != MOIRA_DTYPE_F32)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s: %s with a %s latent cache is not "
                                 "implemented (f32 caches only)",
                                 device->base.info.name, moira_op_name(launch->op),
                                 moira_dtype_name(cache));
    return fn(device, queue, launch);
}

/* Every kernel widens weights of every float type as it reads them (kernels/common.cl). Decode
 * attention has no weights: the dtype is its latent cache's, and only f32 is kept. */
bool moira_opencl_supports_op(int op, moira_dtype_t weight_dtype) {
    if (op < 0 || op >= MOIRA_OP_COUNT || !ops[op]) return false;
    if (op == MOIRA_OP_MLA_DECODE_ATTENTION) return weight_dtype == MOIRA_DTYPE_F32;
    /* The grouped FFN's and the dense projections' kernels read MXFP4 and INT8 weights
     * (common.cl), decoded in f32. */
    if (moira_dtype_is_quantized(weight_dtype))
        return op == MOIRA_OP_MOE_FFN || op == MOIRA_OP_LINEAR || op == MOIRA_OP_SWIGLU;
    return moira_dtype_is_float(weight_dtype);
}
