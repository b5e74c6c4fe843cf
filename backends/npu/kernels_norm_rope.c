/* Row-wise vector kernels: RMSNORM and ROPE, rows split over the AI cores, each row copied into
 * the UB, transformed in fp32 and copied out (ping-pong buffers so copy-in of row r+1 overlaps
 * row r's compute). */
#include <math.h>
#include <stdbool.h>

#include "backends/npu/npu_kernels.h"

/* GM addresses, borrowed for the launch. */
typedef struct rows_job {
    const moira_op_launch_t *launch;
    const float *x;
    float *y;
    int64_t rows, cols, x_stride, y_stride;
} rows_job_t;

/* RMSNORM and ROPE share operand positions: x first, y third. */
static rows_job_t rows_job(const moira_op_launch_t *launch) {
    const moira_dtensor_t *x = &launch->operands[0], *y = &launch->operands[2];
    return (rows_job_t){
        .launch = launch,
        .x = moira_npu_gm(x),
        .y = moira_npu_gm(y),
        .rows = x->shape[0],
        .cols = x->shape[1],
        .x_stride = moira_dtensor_row_stride(x),
        .y_stride = moira_dtensor_row_stride(y),
    };
}

/* y = x * (1 / sqrt(mean(x^2) + eps)) * w: Mul + ReduceSum for the sum of squares, the root on
 * the scalar unit, then Muls and Mul. The whole row stays in the UB. */
static void rmsnorm_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const rows_job_t *job = raw;
    const moira_rmsnorm_params_t *params = job->launch->params;
    size_t row_bytes = moira_npu_ub_floats(job->cols);
    moira_npu_region_t w = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    moira_npu_region_t squares = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    moira_npu_region_t x[2];
    for (int i = 0; i < 2; i++)
        x[i] = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    moira_npu_copy_gm_to_ub(core, w, moira_npu_gm(&job->launch->operands[1]),
                            (size_t)job->cols * 4);
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks, ping ^= 1) {
        moira_npu_copy_gm_to_ub(core, x[ping], job->x + r * job->x_stride, (size_t)job->cols * 4);
        moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, squares, x[ping], x[ping],
                          job->cols);
        float sum = moira_npu_vreduce_sum(core, squares, job->cols);
        float inv_rms = 1.0f / sqrtf(sum / (float)job->cols + params->eps);
        moira_npu_scalar(core, 4);
        moira_npu_vmuls(core, x[ping], x[ping], inv_rms, job->cols);
        moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, x[ping], x[ping], w, job->cols);
        moira_npu_copy_ub_to_gm(core, job->y + r * job->y_stride, x[ping], (size_t)job->cols * 4);
    }
}

/* Rows spread over the cores; each core keeps the weight in its UB for all its rows. */
moira_status_t moira_npu_rmsnorm(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                 moira_npu_launch_report_t *report) {
    rows_job_t job = rows_job(launch);
    if (job.rows == 0 || job.cols == 0) return MOIRA_OK_STATUS;
    return moira_npu_launch(machine, "rmsnorm", moira_npu_blocks_for(machine, job.rows),
                            rmsnorm_block, &job, report);
}

/* Columns of one rope pass: six row buffers share the UB. */
#define ROPE_MAX_COLS 8192

/* Rotating consecutive pairs is y = x * cos_row + gather(x, partner) * sin_row, where partner
 * swaps 2i and 2i+1 inside every head's rope slice, cos_row holds cos (1 outside the slices) and
 * sin_row holds -sin at even and +sin at odd positions (0 outside). Wide rows (all heads of a
 * query) go through the UB in chunks of whole heads, so no pair is ever split. The tables are
 * built per chunk on the scalar unit from angles in double (a CANN kernel reads such tables from
 * GM; positions reach 10^5 where an f32 angle is too coarse). */
static void rope_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const rows_job_t *job = raw;
    const moira_rope_params_t *p = job->launch->params;
    const int32_t *positions = moira_npu_gm(&job->launch->operands[1]);
    /* Rows that are exactly whole heads split between heads; any other row goes in one piece
     * (a row too wide for the UB then faults as an overflow). */
    int64_t chunk = job->cols;
    bool whole_heads = p->n_heads > 1 && job->cols == (int64_t)p->n_heads * p->head_stride;
    if (chunk > ROPE_MAX_COLS && whole_heads)
        chunk = ROPE_MAX_COLS / p->head_stride * p->head_stride;
    if (chunk < 1) chunk = job->cols;
    size_t chunk_bytes = moira_npu_ub_floats(chunk);
    moira_npu_region_t partner = moira_npu_alloc(core, MOIRA_NPU_UB, chunk_bytes);
    moira_npu_region_t cos_row = moira_npu_alloc(core, MOIRA_NPU_UB, chunk_bytes);
    moira_npu_region_t sin_row = moira_npu_alloc(core, MOIRA_NPU_UB, chunk_bytes);
    moira_npu_region_t swapped = moira_npu_alloc(core, MOIRA_NPU_UB, chunk_bytes);
    moira_npu_region_t x[2];
    for (int i = 0; i < 2; i++)
        x[i] = moira_npu_alloc(core, MOIRA_NPU_UB, chunk_bytes);
    int pairs = p->rope_dim / 2;
    /* Chunks start on head boundaries, so every chunk has the same pattern: the partner table
     * and the 1 / 0 outside the rope slices are written once per core; per row only the slices'
     * cos and sin change. */
    int32_t *index = moira_npu_scalar_ptr(core, partner, (size_t)chunk * 4);
    float *c = moira_npu_scalar_ptr(core, cos_row, (size_t)chunk * 4);
    float *s = moira_npu_scalar_ptr(core, sin_row, (size_t)chunk * 4);
    if (!index || !c || !s) return;
    int64_t slice_heads = 0;
    for (int64_t i = 0; i < chunk; i++) {
        int64_t head = p->n_heads == 1 ? 0 : i / p->head_stride;
        int64_t within = (p->n_heads == 1 ? i : i % p->head_stride) - p->rope_offset;
        index[i] = (int32_t)i;
        c[i] = 1.0f;
        s[i] = 0.0f;
        if (head >= p->n_heads || within < 0 || within >= p->rope_dim) continue;
        index[i] = (int32_t)(within % 2 == 0 ? i + 1 : i - 1);
        if (within == 0) slice_heads++;
    }
    moira_npu_scalar(core, 4 * (uint64_t)chunk);
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks) {
        for (int i = 0; i < pairs; i++) {
            double angle = (double)positions[r] * p->inv_freq[i];
            float cosine = (float)(cos(angle) * p->cos_sin_scale);
            float sine = (float)(sin(angle) * p->cos_sin_scale);
            for (int64_t h = 0; h < slice_heads; h++) {
                int64_t even = h * p->head_stride + p->rope_offset + 2 * i;
                c[even] = c[even + 1] = cosine;
                s[even] = -sine;
                s[even + 1] = sine;
            }
        }
        moira_npu_scalar(core, (uint64_t)pairs * (20 + 4 * (uint64_t)slice_heads));
        for (int64_t c0 = 0; c0 < job->cols && moira_npu_ok(core); c0 += chunk, ping ^= 1) {
            int64_t n = job->cols - c0 < chunk ? job->cols - c0 : chunk;
            moira_npu_copy_gm_to_ub(core, x[ping], job->x + r * job->x_stride + c0, (size_t)n * 4);
            moira_npu_vgather(core, swapped, x[ping], partner, n);
            moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, x[ping], x[ping], cos_row, n);
            moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, swapped, swapped, sin_row, n);
            moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_F32, x[ping], x[ping], swapped, n);
            moira_npu_copy_ub_to_gm(core, job->y + r * job->y_stride + c0, x[ping], (size_t)n * 4);
        }
    }
}

/* Rows spread over the cores. */
moira_status_t moira_npu_rope(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                              moira_npu_launch_report_t *report) {
    rows_job_t job = rows_job(launch);
    if (job.rows == 0 || job.cols == 0) return MOIRA_OK_STATUS;
    return moira_npu_launch(machine, "rope", moira_npu_blocks_for(machine, job.rows), rope_block,
                            &job, report);
}
