/* W8A8 on the npu (npu_kernels.h): activations quantised per token for the Cube's int8 mode. */
#include <math.h>

#include "backends/npu/npu_kernels.h"

/* Floats of a row per UB pass. */
#define CHUNK 4096

typedef struct quant_job {
    const moira_npu_gm_matrix_t *a; /* f32 rows, maybe through a row map */
    int8_t *q;
    float *scale;
} quant_job_t;

/* Two passes over a row in UB chunks: its largest magnitude (Abs, ReduceMax), then
 * q = rint(x * 127 / amax) (Muls, Cast to s8); the scale amax / 127 goes out beside it. The
 * arithmetic runs on the scalar view of UB and is counted as those vector instructions. */
static void quant_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const quant_job_t *job = raw;
    moira_npu_region_t in = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(CHUNK));
    moira_npu_region_t out = moira_npu_alloc(core, MOIRA_NPU_UB, CHUNK);
    moira_npu_region_t one = moira_npu_alloc(core, MOIRA_NPU_UB, 32);
    const moira_npu_gm_matrix_t *a = job->a;
    int64_t cols = a->cols;
    uint64_t repeats = (uint64_t)(cols + 63) / 64;
    for (int64_t r = block; r < a->rows && moira_npu_ok(core); r += n_blocks) {
        int64_t source = (a->row_map ? a->row_map[r] / a->row_map_div : r) + a->row_base;
        const float *row = (const float *)a->data + source * a->row_stride;
        float amax = 0;
        for (int64_t c0 = 0; c0 < cols && moira_npu_ok(core); c0 += CHUNK) {
            int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            moira_npu_copy_gm_to_ub(core, in, row + c0, (size_t)n * 4);
            const float *v = moira_npu_scalar_ptr(core, in, (size_t)n * 4);
            for (int64_t c = 0; v && c < n; c++)
                amax = fmaxf(amax, fabsf(v[c]));
        }
        float inverse = amax > 0 ? 127.0f / amax : 0;
        for (int64_t c0 = 0; c0 < cols && moira_npu_ok(core); c0 += CHUNK) {
            int64_t n = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            moira_npu_copy_gm_to_ub(core, in, row + c0, (size_t)n * 4);
            const float *v = moira_npu_scalar_ptr(core, in, (size_t)n * 4);
            int8_t *q = moira_npu_scalar_ptr(core, out, (size_t)n);
            for (int64_t c = 0; v && q && c < n; c++)
                q[c] = (int8_t)rintf(v[c] * inverse);
            moira_npu_copy_ub_to_gm(core, job->q + r * cols + c0, out, (size_t)n);
        }
        float *s = moira_npu_scalar_ptr(core, one, 4);
        if (s) *s = amax / 127.0f;
        moira_npu_copy_ub_to_gm(core, job->scale + r, one, 4);
        core->cost.vector_repeats += 4 * repeats;
    }
}

/* The workspace holds the int8 rows, then their scales (32-byte aligned after the rows). */
size_t moira_npu_int8_rows_bytes(int64_t rows, int64_t cols) {
    return (size_t)((rows * cols + 31) / 32 * 32) + (size_t)rows * 4;
}

moira_status_t moira_npu_int8_rows(moira_npu_machine_t *machine, const moira_npu_gm_matrix_t *a,
                                   void *workspace, moira_npu_launch_report_t *report,
                                   moira_npu_gm_matrix_t *out) {
    int8_t *q = workspace;
    float *scale = (float *)((unsigned char *)workspace + (a->rows * a->cols + 31) / 32 * 32);
    *out = (moira_npu_gm_matrix_t){
        .data = (const unsigned char *)q,
        .dtype = MOIRA_DTYPE_INT8,
        .rows = a->rows,
        .cols = a->cols,
        .row_stride = a->cols,
        .format_scales = (const unsigned char *)scale,
        .row_map_div = 1,
    };
    if (a->rows == 0 || a->cols == 0) return MOIRA_OK_STATUS;
    quant_job_t job = {a, q, scale};
    return moira_npu_launch(machine, "quantize_rows", moira_npu_blocks_for(machine, a->rows),
                            quant_block, &job, report);
}
