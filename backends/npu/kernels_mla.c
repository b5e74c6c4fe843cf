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

/* Keys of a score row that one Unified Buffer pass holds. Two rows of this (ping-pong), its key
 * positions and its mask take about 97 KB of the 192 KB UB; a longer row (decode over a long
 * latent cache) goes through the UB in chunks of this many keys. */
#define SOFTMAX_CHUNK_KEYS 8192

/* The UB regions of one core's softmax, sized for rows of up to `keys` keys. */
typedef struct softmax_ub {
    moira_npu_region_t key_positions, visible, row[2];
} softmax_ub_t;

static softmax_ub_t softmax_ub_alloc(moira_npu_core_t *core, int64_t keys) {
    size_t row_bytes = moira_npu_ub_floats(keys);
    softmax_ub_t ub;
    ub.key_positions = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    ub.visible = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes / 32 + 32);
    for (int i = 0; i < 2; i++)
        ub.row[i] = moira_npu_alloc(core, MOIRA_NPU_UB, row_bytes);
    return ub;
}

/* Positions of keys [first, first + count) as floats in ub->key_positions, for the causal
 * compare: the cache's first..first+count-1 (ArithProgression), or the tokens' positions (Cast from
 * i32, staged through `scratch`). */
static void softmax_key_positions(moira_npu_core_t *core, const softmax_job_t *job,
                                  const softmax_ub_t *ub, moira_npu_region_t scratch, int64_t first,
                                  int64_t count) {
    if (job->key_positions) {
        moira_npu_copy_gm_to_ub(core, scratch, job->key_positions + first, (size_t)count * 4);
        moira_npu_vcast(core, ub->key_positions, MOIRA_DTYPE_F32, scratch, MOIRA_DTYPE_I32, count);
    } else {
        moira_npu_vindex(core, ub->key_positions, (float)first, count);
    }
}

/* Brings keys [first, first + count) of score row `r` into `dst`: Muls by the scale, then the
 * causal mask as a vector Compare of the key positions against the query's position and a Select
 * of -inf. */
static void softmax_load_masked(moira_npu_core_t *core, const softmax_job_t *job,
                                const softmax_ub_t *ub, moira_npu_region_t dst, int64_t r,
                                int64_t first, int64_t count) {
    int64_t query = r % job->queries;
    moira_npu_copy_gm_to_ub(core, dst, job->scores + r * job->keys + first, (size_t)count * 4);
    moira_npu_vmuls(core, dst, dst, job->scale, count);
    moira_npu_vcompare_scalar(core, ub->visible, ub->key_positions, MOIRA_NPU_CMP_LE,
                              (float)job->positions[query], count);
    moira_npu_vselect(core, dst, ub->visible, dst, -INFINITY, count);
}

/* A row that fits the UB: one pass, max, exp(x - max), sum and a reciprocal Muls. A row with no
 * visible key becomes zeros. Key positions are built once per core. */
static void softmax_rows_whole(moira_npu_core_t *core, const softmax_job_t *job, int block,
                               int n_blocks) {
    softmax_ub_t ub = softmax_ub_alloc(core, job->keys);
    softmax_key_positions(core, job, &ub, ub.row[0], 0, job->keys);
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks, ping ^= 1) {
        moira_npu_region_t row = ub.row[ping];
        softmax_load_masked(core, job, &ub, row, r, 0, job->keys);
        moira_npu_scalar(core, 2);
        float max_score = moira_npu_vreduce_max(core, row, job->keys);
        if (max_score == -INFINITY) {
            moira_npu_vdup(core, row, 0.0f, job->keys);
        } else {
            moira_npu_vadds(core, row, row, -max_score, job->keys);
            moira_npu_vexp(core, row, row, job->keys);
            float sum = moira_npu_vreduce_sum(core, row, job->keys);
            moira_npu_vmuls(core, row, row, 1.0f / sum, job->keys);
        }
        moira_npu_copy_ub_to_gm(core, job->scores + r * job->keys, row, (size_t)job->keys * 4);
    }
}

/* Keys in the chunk of a long row that starts at key `first`. */
static int64_t softmax_chunk_keys(const softmax_job_t *job, int64_t first) {
    return job->keys - first < SOFTMAX_CHUNK_KEYS ? job->keys - first : SOFTMAX_CHUNK_KEYS;
}

/* Brings chunk `first` of score row `r` (up to SOFTMAX_CHUNK_KEYS keys) into ub->row[ping],
 * scaled and masked, building its key positions through the other row; returns its key count. */
static int64_t softmax_load_chunk(moira_npu_core_t *core, const softmax_job_t *job,
                                  const softmax_ub_t *ub, int ping, int64_t r, int64_t first) {
    int64_t count = softmax_chunk_keys(job, first);
    softmax_key_positions(core, job, ub, ub->row[ping ^ 1], first, count);
    softmax_load_masked(core, job, ub, ub->row[ping], r, first, count);
    return count;
}

/* A row longer than the UB holds, in two passes over its chunks in GM: the first keeps a running
 * max and a sum of exp(x - max) rescaled whenever the max grows (the online softmax); the second
 * reloads each chunk and writes exp(x - max) / sum. Two reads and one write of the row instead of
 * one and one, but any length fits. A row with no visible key becomes zeros. */
static void softmax_rows_chunked(moira_npu_core_t *core, const softmax_job_t *job, int block,
                                 int n_blocks) {
    softmax_ub_t ub = softmax_ub_alloc(core, SOFTMAX_CHUNK_KEYS);
    int ping = 0;
    for (int64_t r = block; r < job->rows && moira_npu_ok(core); r += n_blocks) {
        float max_score = -INFINITY, sum = 0.0f;
        for (int64_t first = 0; first < job->keys && moira_npu_ok(core);
             first += SOFTMAX_CHUNK_KEYS, ping ^= 1) {
            int64_t count = softmax_load_chunk(core, job, &ub, ping, r, first);
            moira_npu_region_t chunk = ub.row[ping];
            float chunk_max = moira_npu_vreduce_max(core, chunk, count);
            moira_npu_scalar(core, 6);
            if (chunk_max == -INFINITY) continue;
            float new_max = chunk_max > max_score ? chunk_max : max_score;
            sum *= expf(max_score - new_max); /* 0 * exp(-inf) on the first visible chunk */
            max_score = new_max;
            moira_npu_vadds(core, chunk, chunk, -max_score, count);
            moira_npu_vexp(core, chunk, chunk, count);
            sum += moira_npu_vreduce_sum(core, chunk, count);
        }
        for (int64_t first = 0; first < job->keys && moira_npu_ok(core);
             first += SOFTMAX_CHUNK_KEYS, ping ^= 1) {
            moira_npu_region_t chunk = ub.row[ping];
            int64_t count;
            if (max_score == -INFINITY) {
                count = softmax_chunk_keys(job, first);
                moira_npu_vdup(core, chunk, 0.0f, count);
            } else {
                count = softmax_load_chunk(core, job, &ub, ping, r, first);
                moira_npu_vadds(core, chunk, chunk, -max_score, count);
                moira_npu_vexp(core, chunk, chunk, count);
                moira_npu_vmuls(core, chunk, chunk, 1.0f / sum, count);
            }
            moira_npu_copy_ub_to_gm(core, job->scores + r * job->keys + first, chunk,
                                    (size_t)count * 4);
        }
    }
}

/* The masked, scaled softmax of every score row in fp32 on the vector units, rows spread over
 * the cores. */
static void softmax_block(moira_npu_core_t *core, int block, int n_blocks, void *raw) {
    const softmax_job_t *job = raw;
    if (job->keys <= SOFTMAX_CHUNK_KEYS)
        softmax_rows_whole(core, job, block, n_blocks);
    else
        softmax_rows_chunked(core, job, block, n_blocks);
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
