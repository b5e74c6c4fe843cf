/* MLA attention on the npu, prefill and absorbed decode alike, in three stages per chunk of heads:
 * scores on the Cube (two GEMMs into a GM workspace: the nope or latent part, then the rope part
 * atomically added), a masked, scaled softmax on the vector units in fp32, and the weighted sum
 * of values on the Cube. Prefill's keys are k_nope (in kv) and k_pe with values v (in kv);
 * decode's keys and values are the latent cache c, plus k_pe. */
#include <math.h>
#include <stdlib.h>

#include "backends/npu/npu_kernels.h"

/* Score elements per head chunk: bounds the GM workspace to 64 MB. */
#define SCORE_WORKSPACE_FLOATS (16ll << 20)

/* GM addresses, borrowed for the launch. */
typedef struct softmax_job {
    float *scores; /* [heads][queries][keys] */
    int64_t rows, queries, keys;
    const int32_t *positions;     /* of the queries */
    const int32_t *key_positions; /* NULL: key s is at position s (the cache) */
    float scale;
} softmax_job_t;

/* One score row per step: Muls by the scale, then the causal mask as a vector Compare of the
 * key positions against the query's position and a Select of -inf, then max, exp(x - max), sum
 * and a reciprocal Muls. A row with no visible key becomes zeros. Key positions are built once
 * per core: the cache's 0..S-1 (ArithProgression), or the tokens' positions (Cast from i32). */
static void softmax_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const softmax_job_t *job = raw;
    size_t row_bytes = moira_npu_ub_floats(job->keys);
    moira_npu_region_t key_positions = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    moira_npu_region_t visible = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes / 32 + 32);
    moira_npu_region_t row[2];
    for (int i = 0; i < 2; i++)
        row[i] = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    if (job->key_positions) {
        moira_npu_copy_gm_to_ub(core, row[0], job->key_positions, (size_t)job->keys * 4);
        moira_npu_vcast(core, key_positions, MOIRA_DTYPE_F32, row[0], MOIRA_DTYPE_I32, job->keys);
    } else {
        moira_npu_vindex(core, key_positions, 0.0f, job->keys);
    }
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks, ping ^= 1) {
        float *gm = job->scores + r * job->keys;
        int64_t query = r % job->queries;
        moira_npu_copy_gm_to_ub(core, row[ping], gm, (size_t)job->keys * 4);
        moira_npu_vmuls(core, row[ping], row[ping], job->scale, job->keys);
        moira_npu_vcompare_scalar(core, visible, key_positions, MOIRA_NPU_CMP_LE,
                                  (float)job->positions[query], job->keys);
        moira_npu_vselect(core, row[ping], visible, row[ping], -INFINITY, job->keys);
        moira_npu_scalar(core, 2);
        float max_score = moira_npu_vreduce_max(core, row[ping], job->keys);
        if (max_score == -INFINITY) {
            moira_npu_vdup(core, row[ping], 0.0f, job->keys);
        } else {
            moira_npu_vadds(core, row[ping], row[ping], -max_score, job->keys);
            moira_npu_vexp(core, row[ping], row[ping], job->keys);
            float sum = moira_npu_vreduce_sum(core, row[ping], job->keys);
            moira_npu_vmuls(core, row[ping], row[ping], 1.0f / sum, job->keys);
        }
        moira_npu_copy_ub_to_gm(core, gm, row[ping], (size_t)job->keys * 4);
    }
}

/* Where one head's operands live (GM addresses, borrowed); the three GEMMs and the softmax are
 * built from these. */
typedef struct attention_shape {
    int64_t heads, queries, keys;
    /* scores = q1 k1^T + q2 k2^T: [queries, d1] x [keys, d1], and [queries, d2] x [keys, d2] */
    const float *q1, *k1, *q2, *k2;
    int64_t q1_head_step, k1_head_step, q2_head_step, k2_head_step;
    int64_t q1_stride, k1_stride, q2_stride, k2_stride, d1, d2;
    /* out = P values: [queries, keys] x [keys, dv] */
    const float *values;
    int64_t values_head_step, values_stride, dv;
    float *out;
    int64_t out_head_step, out_stride;
    const int32_t *positions, *key_positions;
    float scale;
} attention_shape_t;

/* Scores for a chunk of heads (two GEMMs, the second accumulating), the softmax, then the
 * weighted values written straight into the output columns of each head. */
static moira_status_t attention_heads(moira_npu_machine_t *machine, const attention_shape_t *a,
                                      int64_t h0, int64_t n_heads, float *scores,
                                      moira_npu_gemm_group_t *groups,
                                      moira_npu_launch_report_t *report) {
    int64_t per_head = a->queries * a->keys;
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < n_heads; i++) {
            int64_t h = h0 + i;
            const float *q = pass == 0 ? a->q1 + h * a->q1_head_step : a->q2 + h * a->q2_head_step;
            const float *k = pass == 0 ? a->k1 + h * a->k1_head_step : a->k2 + h * a->k2_head_step;
            int64_t d = pass == 0 ? a->d1 : a->d2;
            groups[i] = (moira_npu_gemm_group_t){
                .a = moira_npu_gm_f32(q, a->queries, d, pass == 0 ? a->q1_stride : a->q2_stride),
                .b = moira_npu_gm_f32(k, a->keys, d, pass == 0 ? a->k1_stride : a->k2_stride),
                .b_is_nk = true,
                .c = scores + i * per_head,
                .c_stride = a->keys,
                .m = a->queries,
                .n = a->keys,
                .k = d,
            };
        }
        MOIRA_RETURN_IF_ERROR(moira_npu_gemm(machine, pass == 0 ? "mla_scores" : "mla_scores_pe",
                                             groups, (int)n_heads, pass == 1, report));
    }
    softmax_job_t softmax = {
        .scores = scores,
        .rows = n_heads * a->queries,
        .queries = a->queries,
        .keys = a->keys,
        .positions = a->positions,
        .key_positions = a->key_positions,
        .scale = a->scale,
    };
    MOIRA_RETURN_IF_ERROR(moira_npu_launch(machine, "mla_softmax",
                                           moira_npu_blocks_for(machine, softmax.rows),
                                           softmax_block, &softmax, report));
    for (int64_t i = 0; i < n_heads; i++) {
        int64_t h = h0 + i;
        groups[i] = (moira_npu_gemm_group_t){
            .a = moira_npu_gm_f32(scores + i * per_head, a->queries, a->keys, a->keys),
            .b = moira_npu_gm_f32(a->values + h * a->values_head_step, a->keys, a->dv,
                                  a->values_stride),
            .b_is_nk = false,
            .c = a->out + h * a->out_head_step,
            .c_stride = a->out_stride,
            .m = a->queries,
            .n = a->dv,
            .k = a->keys,
        };
    }
    return moira_npu_gemm(machine, "mla_weighted_values", groups, (int)n_heads, false, report);
}

/* Heads go in chunks so the score workspace stays bounded however long the sequence. */
static moira_status_t attention(moira_npu_machine_t *machine, const attention_shape_t *a,
                                moira_npu_launch_report_t *report) {
    if (a->queries == 0 || a->heads == 0) return MOIRA_OK_STATUS;
    int64_t per_head = a->queries * (a->keys > 0 ? a->keys : 1);
    int64_t chunk = SCORE_WORKSPACE_FLOATS / per_head;
    if (chunk < 1) chunk = 1;
    if (chunk > a->heads) chunk = a->heads;
    void *workspace = NULL;
    MOIRA_RETURN_IF_ERROR(moira_npu_workspace(machine, (size_t)(chunk * per_head) * 4, &workspace));
    moira_npu_gemm_group_t *groups = calloc((size_t)chunk, sizeof(*groups));
    moira_status_t status =
        groups ? MOIRA_OK_STATUS : moira_acl_status(MOIRA_ACL_ERROR_BAD_ALLOC, "mla groups");
    for (int64_t h0 = 0; h0 < a->heads && !status; h0 += chunk) {
        int64_t n = a->heads - h0 < chunk ? a->heads - h0 : chunk;
        status = attention_heads(machine, a, h0, n, workspace, groups, report);
    }
    free(groups);
    moira_npu_workspace_free(machine, workspace);
    return status;
}

/* Prefill: keys and values are expanded per head in kv; k_pe is shared by all heads. */
moira_status_t moira_npu_mla_attention(moira_npu_machine_t *machine,
                                       const moira_op_launch_t *launch,
                                       moira_npu_launch_report_t *report) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    const float *q = moira_npu_gm(&operands[0]), *kv = moira_npu_gm(&operands[1]);
    int64_t heads = p->n_heads, tokens = operands[0].shape[0];
    int64_t q_head = p->nope_dim + p->rope_dim, kv_head = p->nope_dim + p->v_dim;
    attention_shape_t a = {
        .heads = heads,
        .queries = tokens,
        .keys = tokens,
        .q1 = q,
        .q1_head_step = q_head,
        .q1_stride = heads * q_head,
        .d1 = p->nope_dim,
        .k1 = kv,
        .k1_head_step = kv_head,
        .k1_stride = heads * kv_head,
        .q2 = q + p->nope_dim,
        .q2_head_step = q_head,
        .q2_stride = heads * q_head,
        .d2 = p->rope_dim,
        .k2 = moira_npu_gm(&operands[2]),
        .k2_head_step = 0,
        .k2_stride = moira_dtensor_row_stride(&operands[2]),
        .values = kv + p->nope_dim,
        .values_head_step = kv_head,
        .values_stride = heads * kv_head,
        .dv = p->v_dim,
        .out = moira_npu_gm(&operands[4]),
        .out_head_step = p->v_dim,
        .out_stride = heads * p->v_dim,
        .positions = moira_npu_gm(&operands[3]),
        .key_positions = moira_npu_gm(&operands[3]),
        .scale = p->scale,
    };
    return attention(machine, &a, report);
}

/* Keys beyond a query's position, and cache rows past S, are masked by the softmax. */
moira_status_t moira_npu_mla_decode_attention(moira_npu_machine_t *machine,
                                              const moira_op_launch_t *launch,
                                              moira_npu_launch_report_t *report) {
    const moira_mla_params_t *p = launch->params;
    const moira_dtensor_t *operands = launch->operands;
    const float *q = moira_npu_gm(&operands[1]), *c = moira_npu_gm(&operands[2]);
    int64_t heads = p->n_heads, latent = p->kv_lora_rank;
    int64_t q_head = p->nope_dim + p->rope_dim;
    attention_shape_t a = {
        .heads = heads,
        .queries = operands[0].shape[0],
        .keys = operands[2].shape[0],
        .q1 = moira_npu_gm(&operands[0]),
        .q1_head_step = latent,
        .q1_stride = heads * latent,
        .d1 = latent,
        .k1 = c,
        .k1_head_step = 0,
        .k1_stride = latent,
        .q2 = q + p->nope_dim,
        .q2_head_step = q_head,
        .q2_stride = heads * q_head,
        .d2 = p->rope_dim,
        .k2 = moira_npu_gm(&operands[3]),
        .k2_head_step = 0,
        .k2_stride = p->rope_dim,
        .values = c,
        .values_head_step = 0,
        .values_stride = latent,
        .dv = latent,
        .out = moira_npu_gm(&operands[5]),
        .out_head_step = latent,
        .out_stride = heads * latent,
        .positions = moira_npu_gm(&operands[4]),
        .key_positions = NULL,
        .scale = p->scale,
    };
    return attention(machine, &a, report);
}
