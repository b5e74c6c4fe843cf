/* The router (DESIGN.md §4) on the vector units, all in fp32: logits as Mul + ReduceSum of each
 * token against each expert row, softmax or sigmoid scores, the bias, then group and top-k
 * selection on the scalar unit. Keeping the logits out of the Cube's bf16 inputs keeps top-k
 * choices equal to the reference except at genuine near ties. The capacity limit, first come
 * first served in token order, is a second single-block launch. */
#include <math.h>
#include <stdlib.h>

#include "backends/npu/npu_kernels.h"
#include "runtime/tensor.h"

#define GATE_MAX_TOKENS 16
#define CAPACITY_CHUNK 4096

/* GM addresses, borrowed for the launch. */
typedef struct gate_job {
    const moira_gate_params_t *params;
    const float *x;
    moira_npu_gm_matrix_t weight;
    const float *bias; /* NULL when absent */
    int32_t *topk_idx;
    float *topk_weight;
    float *selection; /* NULL when not wanted */
    int64_t tokens, hidden;
    int token_block; /* tokens per UB pass */
} gate_job_t;

/* Largest `count` of `values`, descending, ties to the lower index (strictly larger replaces):
 * the same rule as the reference, on the scalar unit. */
static void top_indices(moira_npu_core_t *core, const float *values, int n, int count, int *out,
                        unsigned char *taken) {
    for (int i = 0; i < n; i++)
        taken[i] = 0;
    for (int j = 0; j < count; j++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!taken[i] && (best < 0 || values[i] > values[best])) best = i;
        taken[best] = 1;
        out[j] = best;
    }
    moira_npu_scalar(core, (uint64_t)n * (uint64_t)count);
}

/* Expert row e into the UB as f32: a straight copy for f32 weights, else the raw row then a
 * vector Cast (and fp8's block scales with Muls per 128 columns). */
static void load_weight_row(moira_npu_core_t *core, const gate_job_t *job, int64_t e,
                            moira_npu_region_t raw, moira_npu_region_t out) {
    const moira_npu_gm_matrix_t *w = &job->weight;
    size_t element = moira_dtype_size(w->dtype);
    const unsigned char *row = w->data + (size_t)(e * w->row_stride) * element;
    if (w->dtype == MOIRA_DTYPE_F32) {
        moira_npu_copy_gm_to_ub(core, out, row, (size_t)job->hidden * 4);
        return;
    }
    moira_npu_copy_gm_to_ub(core, raw, row, (size_t)job->hidden * element);
    if (w->dtype != MOIRA_DTYPE_F8_E4M3) {
        moira_npu_vcast(core, out, MOIRA_DTYPE_F32, raw, w->dtype, job->hidden);
        return;
    }
    /* fp8 e4m3 has no vector cast on this core generation: widen through the scalar unit. */
    const uint8_t *bytes = moira_npu_scalar_ptr(core, raw, (size_t)job->hidden);
    float *values = moira_npu_scalar_ptr(core, out, (size_t)job->hidden * 4);
    if (!bytes || !values) return;
    moira_convert_to_f32(MOIRA_DTYPE_F8_E4M3, bytes, values, (size_t)job->hidden);
    const float *scales = w->scales + (e / MOIRA_FP8_BLOCK) * w->scale_cols;
    for (int64_t c = 0; c < job->hidden; c++)
        values[c] *= scales[c / MOIRA_FP8_BLOCK];
    moira_npu_scalar(core, 2 * (uint64_t)job->hidden);
}

/* One block routes chunks of tokens: logits against every expert row streamed through the UB
 * (double-buffered), then scores, selection and weights per token. */
static void gate_block(moira_npu_core_t *core, int block, int n_blocks, void *raw_job) {
    const gate_job_t *job = raw_job;
    const moira_gate_params_t *p = job->params;
    int n_experts = p->n_experts, top_k = p->top_k;
    size_t row_bytes = moira_npu_ub_floats(job->hidden);
    size_t expert_bytes = moira_npu_ub_floats(n_experts);
    moira_npu_region_t x = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes * job->token_block);
    moira_npu_region_t w[2], raw[2];
    for (int i = 0; i < 2; i++) {
        w[i] = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
        raw[i] = moira_npu_alloc(core, MOIRA_NPU_UB,
                                 job->weight.dtype == MOIRA_DTYPE_F32 ? 32 : row_bytes);
    }
    moira_npu_region_t product = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    moira_npu_region_t logits =
        moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes * job->token_block);
    moira_npu_region_t scores = moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes);
    moira_npu_region_t chosen = moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes);
    moira_npu_region_t bias = moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes);
    moira_npu_region_t group_scores =
        moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(p->n_group));
    moira_npu_region_t order = moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes);
    moira_npu_region_t taken = moira_npu_alloc(core, MOIRA_NPU_UB, expert_bytes);
    moira_npu_region_t out_idx = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(top_k));
    moira_npu_region_t out_w = moira_npu_alloc(core, MOIRA_NPU_UB, moira_npu_ub_floats(top_k));
    if (job->bias) moira_npu_copy_gm_to_ub(core, bias, job->bias, (size_t)n_experts * 4);
    int64_t n_chunks = (job->tokens + job->token_block - 1) / job->token_block;
    int ping = 0;
    for (int64_t chunk = block; chunk < n_chunks && moira_npu_ok(core); chunk += n_blocks) {
        int64_t t0 = chunk * job->token_block;
        int n_tokens =
            (int)(job->tokens - t0 < job->token_block ? job->tokens - t0 : job->token_block);
        for (int t = 0; t < n_tokens; t++)
            moira_npu_copy_gm_to_ub(core, moira_npu_sub(x, t * row_bytes, row_bytes),
                                    job->x + (t0 + t) * job->hidden, (size_t)job->hidden * 4);
        float *logit = moira_npu_scalar_ptr(core, logits, expert_bytes * (size_t)n_tokens);
        if (!logit) return;
        for (int64_t e = 0; e < n_experts; e++, ping ^= 1) {
            load_weight_row(core, job, e, raw[ping], w[ping]);
            for (int t = 0; t < n_tokens; t++) {
                moira_npu_vbinary(core, MOIRA_NPU_VMUL, MOIRA_DTYPE_F32, product,
                                  moira_npu_sub(x, t * row_bytes, row_bytes), w[ping], job->hidden);
                logit[t * (expert_bytes / 4) + e] =
                    moira_npu_vreduce_sum(core, product, job->hidden);
            }
        }
        for (int t = 0; t < n_tokens && moira_npu_ok(core); t++) {
            moira_npu_region_t row = moira_npu_sub(logits, t * expert_bytes, expert_bytes);
            if (p->scoring == MOIRA_SCORING_SOFTMAX) {
                float max_logit = moira_npu_vreduce_max(core, row, n_experts);
                moira_npu_vadds(core, scores, row, -max_logit, n_experts);
                moira_npu_vexp(core, scores, scores, n_experts);
                float sum = moira_npu_vreduce_sum(core, scores, n_experts);
                moira_npu_vmuls(core, scores, scores, 1.0f / sum, n_experts);
            } else {
                moira_npu_vsigmoid(core, scores, row, n_experts);
            }
            if (job->bias)
                moira_npu_vbinary(core, MOIRA_NPU_VADD, MOIRA_DTYPE_F32, chosen, scores, bias,
                                  n_experts);
            else
                moira_npu_vadds(core, chosen, scores, 0.0f, n_experts);
            float *s = moira_npu_scalar_ptr(core, scores, (size_t)n_experts * 4);
            float *sel = moira_npu_scalar_ptr(core, chosen, (size_t)n_experts * 4);
            float *gs = moira_npu_scalar_ptr(core, group_scores, (size_t)p->n_group * 4);
            int *ord = moira_npu_scalar_ptr(core, order, (size_t)n_experts * 4);
            unsigned char *tk = moira_npu_scalar_ptr(core, taken, (size_t)n_experts);
            int32_t *idx = moira_npu_scalar_ptr(core, out_idx, (size_t)top_k * 4);
            float *wt = moira_npu_scalar_ptr(core, out_w, (size_t)top_k * 4);
            if (!s || !sel || !gs || !ord || !tk || !idx || !wt) return;
            if (p->n_group > 1) {
                int group_size = n_experts / p->n_group;
                int take = job->bias && group_size >= 2 ? 2 : 1;
                for (int g = 0; g < p->n_group; g++) {
                    top_indices(core, sel + g * group_size, group_size, take, ord, tk);
                    gs[g] = sel[g * group_size + ord[0]] +
                            (take == 2 ? sel[g * group_size + ord[1]] : 0.0f);
                }
                top_indices(core, gs, p->n_group, p->topk_group, ord, tk);
                for (int e = 0; e < n_experts; e++)
                    if (!tk[e / group_size]) sel[e] = -INFINITY;
            }
            top_indices(core, sel, n_experts, top_k, ord, tk);
            float sum = 0;
            for (int j = 0; j < top_k; j++)
                sum += s[ord[j]];
            float norm = p->norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
            for (int j = 0; j < top_k; j++) {
                idx[j] = ord[j];
                wt[j] = s[ord[j]] * norm * p->routed_scaling_factor;
            }
            moira_npu_scalar(core, 4 * (uint64_t)top_k);
            int64_t token = t0 + t;
            moira_npu_copy_ub_to_gm(core, job->topk_idx + token * top_k, out_idx,
                                    (size_t)top_k * 4);
            moira_npu_copy_ub_to_gm(core, job->topk_weight + token * top_k, out_w,
                                    (size_t)top_k * 4);
            if (job->selection)
                moira_npu_copy_ub_to_gm(core, job->selection + token * n_experts, chosen,
                                        (size_t)n_experts * 4);
        }
    }
}

/* The capacity pass: first come first served over all assignments in token order. */
static void capacity_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const gate_job_t *job = raw;
    (void)block, (void)n_blocks;
    int32_t capacity = moira_gate_capacity(job->params, job->tokens);
    int n_experts = job->params->n_experts;
    moira_npu_region_t counts = moira_npu_alloc(core, MOIRA_NPU_UB, (size_t)n_experts * 4);
    moira_npu_region_t idx = moira_npu_alloc(core, MOIRA_NPU_UB, CAPACITY_CHUNK * 4);
    moira_npu_region_t wts = moira_npu_alloc(core, MOIRA_NPU_UB, CAPACITY_CHUNK * 4);
    int32_t *taken = moira_npu_scalar_ptr(core, counts, (size_t)n_experts * 4);
    if (!taken) return;
    for (int e = 0; e < n_experts; e++)
        taken[e] = 0;
    int64_t assignments = job->tokens * job->params->top_k;
    for (int64_t a0 = 0; a0 < assignments && moira_npu_ok(core); a0 += CAPACITY_CHUNK) {
        int64_t n = assignments - a0 < CAPACITY_CHUNK ? assignments - a0 : CAPACITY_CHUNK;
        moira_npu_copy_gm_to_ub(core, idx, job->topk_idx + a0, (size_t)n * 4);
        moira_npu_copy_gm_to_ub(core, wts, job->topk_weight + a0, (size_t)n * 4);
        int32_t *expert = moira_npu_scalar_ptr(core, idx, (size_t)n * 4);
        float *weight = moira_npu_scalar_ptr(core, wts, (size_t)n * 4);
        if (!expert || !weight) return;
        for (int64_t i = 0; i < n; i++) {
            if (taken[expert[i]] < capacity) {
                taken[expert[i]]++;
            } else {
                expert[i] = -1;
                weight[i] = 0;
            }
        }
        moira_npu_scalar(core, 2 * (uint64_t)n);
        moira_npu_copy_ub_to_gm(core, job->topk_idx + a0, idx, (size_t)n * 4);
        moira_npu_copy_ub_to_gm(core, job->topk_weight + a0, wts, (size_t)n * 4);
    }
}

/* Tokens per chunk are sized to the UB; the capacity pass runs only when a factor is set. */
moira_status_t moira_npu_gate(moira_npu_machine_t *machine, const moira_op_launch_t *launch,
                              moira_npu_launch_report_t *report) {
    const moira_dtensor_t *operands = launch->operands;
    gate_job_t job = {
        .params = launch->params,
        .x = moira_npu_gm(&operands[0]),
        .weight = moira_npu_gm_matrix(&operands[1], 0),
        .bias = moira_npu_gm(&operands[2]),
        .topk_idx = moira_npu_gm(&operands[3]),
        .topk_weight = moira_npu_gm(&operands[4]),
        .selection = moira_npu_gm(&operands[5]),
        .tokens = operands[0].shape[0],
        .hidden = operands[0].shape[1],
    };
    if (job.tokens == 0) return MOIRA_OK_STATUS;
    /* As many tokens per pass as the UB holds next to two weight rows and the routing state. */
    size_t row_bytes = moira_npu_ub_floats(job.hidden);
    size_t expert_bytes = moira_npu_ub_floats(job.params->n_experts);
    size_t fixed = 5 * row_bytes + 8 * expert_bytes + 4096;
    size_t ub = machine->spec.ub_bytes;
    int64_t fit = fixed < ub ? (int64_t)((ub - fixed) / (row_bytes + expert_bytes)) : 0;
    if (fit < 1)
        return moira_acl_status(MOIRA_ACL_ERROR_API_NOT_SUPPORT,
                                "gate: hidden size %lld with %d experts does not fit the %zu-byte "
                                "UB",
                                (long long)job.hidden, job.params->n_experts, ub);
    job.token_block = (int)(fit < GATE_MAX_TOKENS ? fit : GATE_MAX_TOKENS);
    int64_t chunks = (job.tokens + job.token_block - 1) / job.token_block;
    MOIRA_RETURN_IF_ERROR(moira_npu_launch(machine, "gate", moira_npu_blocks_for(machine, chunks),
                                           gate_block, &job, report));
    if (moira_gate_capacity(job.params, job.tokens) == INT32_MAX) return MOIRA_OK_STATUS;
    return moira_npu_launch(machine, "gate_capacity", 1, capacity_block, &job, report);
}
