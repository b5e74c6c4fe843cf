/* The npu machine: AI cores, block-parallel launches, GM workspace and operand views
 * (npu_kernels.h), plus the small vector kernels several ops share. */
#include <stdlib.h>
#include <string.h>

#include "backends/npu/npu_device.h"
#include "backends/npu/npu_kernels.h"
#include "runtime/log.h"
#include "runtime/tensor.h"
#include "runtime/weight_format.h"

/* Cores are described here but get their local buffers on their first launch, so a
 * MOIRA_NPU_DEVICES of many large devices costs host memory only for the cores that work. */
moira_status_t moira_npu_machine_create(moira_acl_device_t *acl, moira_npu_machine_t **out) {
    moira_npu_machine_t *machine = calloc(1, sizeof(*machine));
    if (!machine) return moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "npu machine");
    machine->acl = acl;
    machine->spec = *moira_acl_device_spec(acl);
    int n_cores = machine->spec.ai_cores;
    machine->cores = calloc((size_t)n_cores, sizeof(*machine->cores));
    machine->block_cost = calloc((size_t)n_cores, sizeof(*machine->block_cost));
    moira_status_t status = machine->cores && machine->block_cost
                                ? MOIRA_OK_STATUS
                                : moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "npu cores");
    if (!status) status = moira_threadpool_create(0, -1, &machine->pool);
    pthread_mutex_init(&machine->mutex, NULL);
    if (status) {
        moira_npu_machine_destroy(machine);
        return status;
    }
    *out = machine;
    return MOIRA_OK_STATUS;
}

/* Threads stop before the cores they run are freed. */
void moira_npu_machine_destroy(moira_npu_machine_t *machine) {
    if (!machine) return;
    if (machine->pool) moira_threadpool_destroy(machine->pool);
    for (int c = 0; machine->cores && c < machine->spec.ai_cores; c++)
        moira_npu_core_release(&machine->cores[c]);
    free(machine->cores);
    free(machine->block_cost);
    pthread_mutex_destroy(&machine->mutex);
    free(machine);
}

/* Borrowed for the launch. */
typedef struct launch_ctx {
    moira_npu_machine_t *machine;
    const char *kernel;
    int n_blocks;
    moira_npu_block_fn fn;
    void *ctx;
} launch_ctx_t;

/* A host thread plays AI core `block`: fresh buffers and counters, then the kernel body. */
static void run_blocks(void *raw, int64_t begin, int64_t end, int thread) {
    const launch_ctx_t *launch = raw;
    (void)thread;
    for (int64_t b = begin; b < end; b++) {
        moira_npu_core_t *core = &launch->machine->cores[b];
        moira_npu_core_begin(core, launch->kernel);
        launch->fn(core, (int)b, launch->n_blocks, launch->ctx);
        launch->machine->block_cost[b] = core->cost;
    }
}

/* Launches are serialised per device (streams share the cores); the first core fault fails
 * the launch and the others are dropped as its consequences. */
moira_status_t moira_npu_launch(moira_npu_machine_t *machine, const char *kernel, int n_blocks,
                                moira_npu_block_fn fn, void *ctx,
                                moira_npu_launch_report_t *report) {
    if (n_blocks < 1) n_blocks = 1;
    if (n_blocks > machine->spec.ai_cores) n_blocks = machine->spec.ai_cores;
    launch_ctx_t launch = {machine, kernel, n_blocks, fn, ctx};
    pthread_mutex_lock(&machine->mutex);
    for (int b = 0; b < n_blocks; b++) {
        if (machine->cores[b].mem[0]) continue;
        moira_status_t status = moira_npu_core_init(&machine->cores[b], b, &machine->spec);
        if (status) {
            pthread_mutex_unlock(&machine->mutex);
            return status;
        }
    }
    moira_threadpool_parallel_for(machine->pool, n_blocks, 1, run_blocks, &launch);
    moira_status_t fault = MOIRA_OK_STATUS;
    for (int b = 0; b < n_blocks && !fault; b++) {
        fault = machine->cores[b].fault;
        machine->cores[b].fault = MOIRA_OK_STATUS;
    }
    for (int b = 0; b < n_blocks; b++) {
        moira_status_free(machine->cores[b].fault);
        machine->cores[b].fault = MOIRA_OK_STATUS;
    }
    moira_npu_launch_report_t one;
    moira_npu_report_launch(&machine->spec, machine->block_cost, n_blocks, &one);
    pthread_mutex_unlock(&machine->mutex);
    MOIRA_LOG_D("npu:%d: kernel %s on %d blocks: modelled %.3f us (%s-bound): %llu cube fractals, "
                "%llu vector repeats, %llu scalar ops, MTE2 %llu B, MTE1 %llu B, MTE3 %llu B",
                moira_acl_device_id(machine->acl), kernel, n_blocks, one.time_us, one.bound,
                (unsigned long long)one.total.cube_fractals,
                (unsigned long long)one.total.vector_repeats,
                (unsigned long long)one.total.scalar_ops, (unsigned long long)one.total.mte2_bytes,
                (unsigned long long)one.total.mte1_bytes, (unsigned long long)one.total.mte3_bytes);
    moira_npu_report_add(report, &one);
    return fault;
}

/* No more blocks than cores, and no idle blocks beyond the work items. */
int moira_npu_blocks_for(const moira_npu_machine_t *machine, int64_t items) {
    if (items < 1) return 1;
    return items < machine->spec.ai_cores ? (int)items : machine->spec.ai_cores;
}

/* Workspace is ordinary HBM, so it counts against the device's memory. */
moira_status_t moira_npu_workspace(moira_npu_machine_t *machine, size_t bytes, void **out) {
    return moira_acl_malloc(machine->acl, bytes ? bytes : 1, out);
}

/* Returns workspace to the device's HBM. */
void moira_npu_workspace_free(moira_npu_machine_t *machine, void *workspace) {
    moira_acl_free(machine->acl, workspace);
}

/* Kernels address GM through the buffer's allocation plus the tensor's offset. */
void *moira_npu_gm(const moira_dtensor_t *tensor) {
    if (!tensor->buffer) return NULL;
    return ((moira_npu_buffer_t *)tensor->buffer)->hbm + tensor->offset;
}

/* Packed expert weights are [E, rows, cols]: matrix `matrix` starts matrix * rows rows in, and
 * its fp8 scales matrix * ceil(rows / 128) scale rows in. */
moira_npu_gm_matrix_t moira_npu_gm_matrix(const moira_dtensor_t *tensor, int64_t matrix) {
    int64_t rows = tensor->shape[tensor->rank - 2], cols = tensor->shape[tensor->rank - 1];
    int64_t stride = moira_dtensor_row_stride(tensor);
    moira_npu_gm_matrix_t m = {
        .dtype = tensor->dtype,
        .rows = rows,
        .cols = cols,
        .row_stride = stride,
        .row_map_div = 1,
    };
    m.data = (const unsigned char *)moira_npu_gm(tensor) +
             (size_t)(matrix * rows * stride) * moira_dtype_size(tensor->dtype);
    if (moira_dtype_is_quantized(tensor->dtype)) { /* contiguous; scales one matrix after another */
        m.data = (const unsigned char *)moira_npu_gm(tensor) +
                 (size_t)(matrix * rows) * moira_weight_row_bytes(tensor->dtype, cols);
        m.format_scales = ((moira_npu_buffer_t *)tensor->buffer)->hbm + tensor->scale_offset +
                          (size_t)matrix * moira_weight_scale_bytes(tensor->dtype, rows, cols);
    }
    if (tensor->dtype == MOIRA_DTYPE_F8_E4M3) {
        int64_t scale_rows = (rows + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
        m.scale_cols = (cols + MOIRA_FP8_BLOCK - 1) / MOIRA_FP8_BLOCK;
        m.scales =
            (const float *)(((moira_npu_buffer_t *)tensor->buffer)->hbm + tensor->scale_offset) +
            matrix * scale_rows * m.scale_cols;
    }
    return m;
}

/* Activations and workspaces are plain f32 matrices. */
moira_npu_gm_matrix_t moira_npu_gm_f32(const float *data, int64_t rows, int64_t cols,
                                       int64_t row_stride) {
    return (moira_npu_gm_matrix_t){
        .data = (const unsigned char *)data,
        .dtype = MOIRA_DTYPE_F32,
        .rows = rows,
        .cols = cols,
        .row_stride = row_stride,
        .row_map_div = 1,
    };
}

/* ---- Shared vector kernels ---- */

/* Columns per UB pass of the row-wise vector kernels below. */
#define VECTOR_CHUNK 4096

/* GM addresses, borrowed for the launch. */
typedef struct rows_job {
    float *y;
    const float *gate, *up;
    float *h;
    int64_t rows, cols, stride;
    float beta;
} rows_job_t;

/* Rows are split evenly over blocks; each row streams through the UB in VECTOR_CHUNK columns
 * with two buffers, so the next chunk's copy-in can overlap this one's compute. */
static void scale_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const rows_job_t *job = raw;
    moira_npu_region_t buf[2];
    for (int i = 0; i < 2; i++)
        buf[i] = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(VECTOR_CHUNK));
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks) {
        float *row = job->y + r * job->stride;
        for (int64_t c0 = 0; c0 < job->cols; c0 += VECTOR_CHUNK, ping ^= 1) {
            int64_t n = job->cols - c0 < VECTOR_CHUNK ? job->cols - c0 : VECTOR_CHUNK;
            if (job->beta == 0) {
                moira_npu_vdup(core, buf[ping], 0.0f, n);
            } else {
                moira_npu_copy_gm_to_ub(core, buf[ping], row + c0, (size_t)n * 4);
                moira_npu_vmuls(core, buf[ping], buf[ping], job->beta, n);
            }
            moira_npu_copy_ub_to_gm(core, row + c0, buf[ping], (size_t)n * 4);
        }
    }
}

/* beta 1 needs no pass at all; other values one vector pass before an accumulating GEMM. */
moira_status_t moira_npu_scale_rows(moira_npu_machine_t *machine, float *y, int64_t rows,
                                    int64_t cols, int64_t stride, float beta,
                                    moira_npu_launch_report_t *report) {
    if (beta == 1.0f || rows == 0 || cols == 0) return MOIRA_OK_STATUS;
    rows_job_t job = {.y = y, .rows = rows, .cols = cols, .stride = stride, .beta = beta};
    return moira_npu_launch(machine, "scale_rows", moira_npu_blocks_for(machine, rows), scale_block,
                            &job, report);
}

/* silu(g) * u = g * sigmoid(g) * u, three vector passes after Sigmoid. */
static void swiglu_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const rows_job_t *job = raw;
    moira_npu_region_t g[2], u[2],
        s = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(VECTOR_CHUNK));
    for (int i = 0; i < 2; i++) {
        g[i] = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(VECTOR_CHUNK));
        u[i] = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(VECTOR_CHUNK));
    }
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks) {
        for (int64_t c0 = 0; c0 < job->cols; c0 += VECTOR_CHUNK, ping ^= 1) {
            int64_t n = job->cols - c0 < VECTOR_CHUNK ? job->cols - c0 : VECTOR_CHUNK;
            size_t at = (size_t)(r * job->cols + c0);
            moira_npu_copy_gm_to_ub(core, g[ping], job->gate + at, (size_t)n * 4);
            moira_npu_copy_gm_to_ub(core, u[ping], job->up + at, (size_t)n * 4);
            moira_npu_vsigmoid(core, s, g[ping], n);
            moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, g[ping], g[ping], s, n);
            moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, g[ping], g[ping], u[ping], n);
            moira_npu_copy_ub_to_gm(core, job->h + at, g[ping], (size_t)n * 4);
        }
    }
}

/* Rows spread over the cores. */
moira_status_t moira_npu_swiglu_activation(moira_npu_machine_t *machine, const float *gate,
                                           const float *up, float *h, int64_t rows, int64_t cols,
                                           moira_npu_launch_report_t *report) {
    if (rows == 0 || cols == 0) return MOIRA_OK_STATUS;
    rows_job_t job = {.gate = gate, .up = up, .h = h, .rows = rows, .cols = cols};
    return moira_npu_launch(machine, "swiglu_activation", moira_npu_blocks_for(machine, rows),
                            swiglu_block, &job, report);
}
