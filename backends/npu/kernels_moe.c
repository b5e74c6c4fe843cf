/* The expert path on the npu: MOE_DISPATCH (MoeInitRouting: a counting sort on one core's scalar
 * unit), MOE_FFN (grouped SwiGLU: two grouped Cube GEMMs over the group list of per-expert token
 * counts, the vector activation, the grouped down projection), MOE_COMBINE (vector weighted sum)
 * and the dense SWIGLU. */
#include <stdlib.h>

#include "backends/npu/npu_kernels.h"

/* Assignments per UB pass of the dispatch and combine kernels. */
#define INDEX_CHUNK 4096
#define COMBINE_CHUNK 4096

/* GM addresses, borrowed for the launch (as in every kernel's job below). */
typedef struct dispatch_job {
    const int32_t *topk_idx;
    int32_t *offsets, *sorted_rows, *assignment_pos;
    int64_t assignments;
    int n_experts;
} dispatch_job_t;

/* Two passes over topk_idx in UB-sized chunks: count per expert, then place each assignment.
 * sorted_rows is a scatter, written as one small DMA per row (what a scalar-driven scatter
 * costs on hardware). Runs as a single block: the sort is O(T*k), far below the GEMMs. */
static void dispatch_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const dispatch_job_t *job = raw;
    (void)block, (void)n_blocks;
    int n_experts = job->n_experts;
    moira_npu_region_t counts = moira_npu_alloc(core, MOIRA_NPU_UB, (size_t)(n_experts + 1) * 4);
    moira_npu_region_t idx = moira_npu_alloc(core, MOIRA_NPU_UB, INDEX_CHUNK * 4);
    moira_npu_region_t pos = moira_npu_alloc(core, MOIRA_NPU_UB, INDEX_CHUNK * 4);
    moira_npu_region_t one = moira_npu_alloc(core, MOIRA_NPU_UB, 32);
    int32_t *count = moira_npu_scalar_ptr(core, counts, (size_t)(n_experts + 1) * 4);
    if (!count) return;
    for (int e = 0; e <= n_experts; e++)
        count[e] = 0;
    for (int64_t a0 = 0; a0 < job->assignments && moira_npu_ok(core); a0 += INDEX_CHUNK) {
        int64_t n = job->assignments - a0 < INDEX_CHUNK ? job->assignments - a0 : INDEX_CHUNK;
        moira_npu_copy_gm_to_ub(core, idx, job->topk_idx + a0, (size_t)n * 4);
        const int32_t *experts = moira_npu_scalar_ptr(core, idx, (size_t)n * 4);
        for (int64_t i = 0; experts && i < n; i++) {
            int32_t e = experts[i];
            if (e == -1) continue;
            if (e < 0 || e >= n_experts) {
                moira_npu_fault(core, "moe_dispatch: topk_idx[%lld] = %d outside [0, %d)",
                                (long long)(a0 + i), e, n_experts);
                return;
            }
            count[e + 1]++;
        }
        moira_npu_scalar(core, (uint64_t)n);
    }
    for (int e = 0; e < n_experts; e++)
        count[e + 1] += count[e];
    moira_npu_copy_ub_to_gm(core, job->offsets, counts, (size_t)(n_experts + 1) * 4);
    /* count[e] now walks expert e's next free row. */
    int32_t *one_row = moira_npu_scalar_ptr(core, one, 4);
    for (int64_t a0 = 0; a0 < job->assignments && moira_npu_ok(core); a0 += INDEX_CHUNK) {
        int64_t n = job->assignments - a0 < INDEX_CHUNK ? job->assignments - a0 : INDEX_CHUNK;
        moira_npu_copy_gm_to_ub(core, idx, job->topk_idx + a0, (size_t)n * 4);
        const int32_t *experts = moira_npu_scalar_ptr(core, idx, (size_t)n * 4);
        int32_t *positions = moira_npu_scalar_ptr(core, pos, (size_t)n * 4);
        if (!experts || !positions || !one_row) return;
        for (int64_t i = 0; i < n; i++) {
            int32_t e = experts[i];
            if (e == -1) {
                positions[i] = -1;
                continue;
            }
            int32_t row = count[e]++;
            positions[i] = row;
            *one_row = (int32_t)(a0 + i);
            moira_npu_copy_ub_to_gm(core, job->sorted_rows + row, one, 4);
        }
        moira_npu_scalar(core, 2 * (uint64_t)n);
        moira_npu_copy_ub_to_gm(core, job->assignment_pos + a0, pos, (size_t)n * 4);
    }
    *one_row = -1;
    for (int64_t row = count[n_experts]; row < job->assignments; row++)
        moira_npu_copy_ub_to_gm(core, job->sorted_rows + row, one, 4);
}

/* The sort is one block: it is O(T*k) and feeds the GEMMs that dominate. */
moira_status_t moira_npu_moe_dispatch(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                      moira_npu_launch_report_t *report) {
    const moira_moe_dispatch_params_t *params = launch->params;
    dispatch_job_t job = {
        .topk_idx = moira_npu_gm(&launch->operands[0]),
        .offsets = moira_npu_gm(&launch->operands[1]),
        .sorted_rows = moira_npu_gm(&launch->operands[2]),
        .assignment_pos = moira_npu_gm(&launch->operands[3]),
        .assignments = moira_dtensor_numel(&launch->operands[0]),
        .n_experts = params->n_experts,
    };
    if (job.assignments > INT32_MAX)
        return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM,
                                "moe_dispatch: %lld assignments overflow int32 rows",
                                (long long)job.assignments);
    return moira_npu_launch(machine, "moe_dispatch", 1, dispatch_block, &job, report);
}

/* The group list and row map come from device memory (normally MOE_DISPATCH): the tiling reads
 * them, and an inconsistent list is an error, never a stray access. */
static moira_status_t check_routing(const int32_t *offsets, int n_experts,
                                    const int32_t *sorted_rows, int64_t assignments) {
    if (offsets[0] < 0 || offsets[0] > assignments)
        return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM, "moe_ffn: expert_offsets[0] = %d",
                                offsets[0]);
    for (int e = 0; e < n_experts; e++)
        if (offsets[e + 1] < offsets[e] || offsets[e + 1] > assignments)
            return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM,
                                    "moe_ffn: expert_offsets[%d] = %d is not in [%d, %lld]", e + 1,
                                    offsets[e + 1], offsets[e], (long long)assignments);
    for (int64_t row = offsets[0]; row < offsets[n_experts]; row++)
        if (sorted_rows[row] < 0 || sorted_rows[row] >= assignments)
            return moira_acl_status(MOIRA_ACL_ERROR_INVALID_PARAM,
                                    "moe_ffn: sorted_rows[%lld] = %d outside [0, %lld)",
                                    (long long)row, sorted_rows[row], (long long)assignments);
    return MOIRA_OK_STATUS;
}

/* Gate and up projections of every expert's rows (gathered from x through sorted_rows / k) in
 * one grouped GEMM each, the activation on the vector units, then the grouped down projection
 * straight into ys. Intermediates live in a GM workspace, as on 910B where Cube and Vector cores
 * meet through GM. */
moira_status_t moira_npu_moe_ffn(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                 moira_npu_launch_report_t *report) {
    const moira_moe_ffn_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    const int32_t *offsets = moira_npu_gm(&operands[4]);
    const int32_t *sorted_rows = moira_npu_gm(&operands[5]);
    const float *x = moira_npu_gm(&operands[0]);
    float *ys = moira_npu_gm(&operands[6]);
    int n_experts = (int)operands[1].shape[0];
    int64_t tokens = operands[0].shape[0], hidden = operands[0].shape[1];
    int64_t inter = operands[1].shape[1], assignments = operands[5].shape[0];
    MOIRA_RETURN_IF_ERROR(check_routing(offsets, n_experts, sorted_rows, assignments));
    int64_t rows = offsets[n_experts] - offsets[0];
    if (rows == 0 || hidden == 0) return MOIRA_OK_STATUS;
    void *workspace = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_npu_workspace(machine, (size_t)(2 * assignments * inter) * 4, &workspace));
    float *gate = workspace, *up = gate + assignments * inter;
    moira_npu_gemm_group_t *groups = calloc((size_t)n_experts, sizeof(*groups));
    moira_status_t status =
        groups ? MOIRA_OK_STATUS : moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "moe_ffn groups");
    for (int pass = 0; pass < 2 && !status; pass++) {
        for (int e = 0; e < n_experts; e++) {
            moira_npu_gm_matrix_t a = moira_npu_gm_f32(x, tokens, hidden, hidden);
            a.row_map = sorted_rows + offsets[e];
            a.row_map_div = params->top_k;
            a.rows = offsets[e + 1] - offsets[e];
            groups[e] = (moira_npu_gemm_group_t){
                .a = a,
                .b = moira_npu_gm_matrix(&operands[pass == 0 ? 1 : 2], e),
                .b_is_nk = true,
                .c = (pass == 0 ? gate : up) + (int64_t)offsets[e] * inter,
                .c_stride = inter,
                .m = offsets[e + 1] - offsets[e],
                .n = inter,
                .k = hidden,
            };
        }
        status = moira_npu_gemm(machine, pass == 0 ? "moe_ffn_gate" : "moe_ffn_up", groups,
                                n_experts, false, report);
    }
    float *h = gate + (int64_t)offsets[0] * inter;
    if (!status)
        status = moira_npu_swiglu_activation(machine, h, up + (int64_t)offsets[0] * inter, h, rows,
                                             inter, report);
    for (int e = 0; e < n_experts && !status; e++) {
        groups[e] = (moira_npu_gemm_group_t){
            .a = moira_npu_gm_f32(gate + (int64_t)offsets[e] * inter, offsets[e + 1] - offsets[e],
                                  inter, inter),
            .b = moira_npu_gm_matrix(&operands[3], e),
            .b_is_nk = true,
            .c = ys + (int64_t)offsets[e] * hidden,
            .c_stride = hidden,
            .m = offsets[e + 1] - offsets[e],
            .n = hidden,
            .k = inter,
        };
    }
    if (!status) status = moira_npu_gemm(machine, "moe_ffn_down", groups, n_experts, false, report);
    free(groups);
    moira_npu_workspace_free(machine, workspace);
    return status;
}

/* GM addresses, borrowed for the launch. */
typedef struct combine_job {
    const float *ys;
    const int32_t *assignment_pos;
    const float *topk_weight;
    float *y;
    int64_t tokens, top_k, hidden, assignments;
    float beta;
} combine_job_t;

/* Per token and column chunk: acc = sum_j w_j * ys[pos_j] in selection order (Muls + Add), then
 * beta * y folded in once. */
static void combine_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const combine_job_t *job = raw;
    moira_npu_region_t acc = moira_npu_alloc(core, MOIRA_NPU_UB, COMBINE_CHUNK * 4);
    moira_npu_region_t row[2];
    for (int i = 0; i < 2; i++)
        row[i] = moira_npu_alloc(core, MOIRA_NPU_UB, COMBINE_CHUNK * 4);
    moira_npu_region_t meta = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(job->top_k));
    moira_npu_region_t wts = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(job->top_k));
    int ping = 0;
    for (int64_t t = block; t < job->tokens && moira_npu_ok(core); t += n_blocks) {
        moira_npu_copy_gm_to_ub(core, meta, job->assignment_pos + t * job->top_k,
                                (size_t)job->top_k * 4);
        moira_npu_copy_gm_to_ub(core, wts, job->topk_weight + t * job->top_k,
                                (size_t)job->top_k * 4);
        const int32_t *pos = moira_npu_scalar_ptr(core, meta, (size_t)job->top_k * 4);
        const float *w = moira_npu_scalar_ptr(core, wts, (size_t)job->top_k * 4);
        if (!pos || !w) return;
        for (int64_t c0 = 0; c0 < job->hidden; c0 += COMBINE_CHUNK) {
            int64_t n = job->hidden - c0 < COMBINE_CHUNK ? job->hidden - c0 : COMBINE_CHUNK;
            moira_npu_vdup(core, acc, 0.0f, n);
            for (int64_t j = 0; j < job->top_k; j++, ping ^= 1) {
                if (pos[j] < 0) continue;
                if (pos[j] >= job->assignments) {
                    moira_npu_fault(core, "moe_combine: assignment_pos %d outside [0, %lld)",
                                    pos[j], (long long)job->assignments);
                    return;
                }
                moira_npu_copy_gm_to_ub(core, row[ping], job->ys + pos[j] * job->hidden + c0,
                                        (size_t)n * 4);
                moira_npu_vmuls(core, row[ping], row[ping], w[j], n);
                moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_F32, acc, acc, row[ping], n);
            }
            float *y = job->y + t * job->hidden + c0;
            if (job->beta != 0) {
                moira_npu_copy_gm_to_ub(core, row[ping], y, (size_t)n * 4);
                moira_npu_vmuls(core, row[ping], row[ping], job->beta, n);
                moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_F32, acc, row[ping], acc, n);
            }
            moira_npu_copy_ub_to_gm(core, y, acc, (size_t)n * 4);
        }
        moira_npu_scalar(core, 2 * (uint64_t)job->top_k);
    }
}

/* Tokens are independent, so they spread over the cores. */
moira_status_t moira_npu_moe_combine(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                     moira_npu_launch_report_t *report) {
    const moira_moe_combine_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    combine_job_t job = {
        .ys = moira_npu_gm(&operands[0]),
        .assignment_pos = moira_npu_gm(&operands[1]),
        .topk_weight = moira_npu_gm(&operands[2]),
        .y = moira_npu_gm(&operands[3]),
        .tokens = operands[1].shape[0],
        .top_k = operands[1].shape[1],
        .hidden = operands[3].shape[1],
        .beta = params->beta,
    };
    job.assignments = job.tokens * job.top_k;
    if (job.tokens == 0) return MOIRA_OK_STATUS;
    return moira_npu_launch(machine, "moe_combine", moira_npu_blocks_for(machine, job.tokens),
                            combine_block, &job, report);
}

/* Dense SwiGLU: gate and up GEMMs into a GM workspace, the vector activation, then the down GEMM
 * writing y (beta 0), atomically adding to it (beta 1), or adding after a vector beta pass. */
moira_status_t moira_npu_swiglu(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                                moira_npu_launch_report_t *report) {
    const moira_swiglu_params_t *params = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    const float *x = moira_npu_gm(&operands[0]);
    float *y = moira_npu_gm(&operands[4]);
    int64_t tokens = operands[0].shape[0], hidden = operands[0].shape[1];
    int64_t inter = operands[1].shape[0];
    if (tokens == 0) return MOIRA_OK_STATUS;
    void *workspace = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_npu_workspace(machine, (size_t)(2 * tokens * inter) * 4, &workspace));
    float *gate = workspace, *up = gate + tokens * inter;
    moira_status_t status = MOIRA_OK_STATUS;
    for (int pass = 0; pass < 2 && !status; pass++) {
        moira_npu_gemm_group_t group = {
            .a = moira_npu_gm_f32(x, tokens, hidden, hidden),
            .b = moira_npu_gm_matrix(&operands[pass == 0 ? 1 : 2], 0),
            .b_is_nk = true,
            .c = pass == 0 ? gate : up,
            .c_stride = inter,
            .m = tokens,
            .n = inter,
            .k = hidden,
        };
        status = moira_npu_gemm(machine, pass == 0 ? "swiglu_gate" : "swiglu_up", &group, 1, false,
                                report);
    }
    if (!status)
        status = moira_npu_swiglu_activation(machine, gate, up, gate, tokens, inter, report);
    if (!status && params->beta != 0)
        status = moira_npu_scale_rows(machine, y, tokens, hidden, hidden, params->beta, report);
    if (!status) {
        moira_npu_gemm_group_t down = {
            .a = moira_npu_gm_f32(gate, tokens, inter, inter),
            .b = moira_npu_gm_matrix(&operands[3], 0),
            .b_is_nk = true,
            .c = y,
            .c_stride = hidden,
            .m = tokens,
            .n = hidden,
            .k = inter,
        };
        status = moira_npu_gemm(machine, "swiglu_down", &down, 1, params->beta != 0, report);
    }
    moira_npu_workspace_free(machine, workspace);
    return status;
}
