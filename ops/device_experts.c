/* Routed experts on one device and the dispatch -> grouped FFN -> combine pipeline
 * (ops/device_experts.h). */
#include "ops/device_experts.h"

#include <stdlib.h>
#include <string.h>

#include "ops/device_layer.h"
#include "ops/upload_staging.h"

#define WORKSPACE_ALIGN 256

/* What place_experts lays out: the chosen experts' host matrices into `layout`. */
typedef struct experts_upload {
    const moira_tensor_t **picked; /* 3 x n: gate_proj, up_proj, down_proj of each chosen expert */
    int64_t n;
    moira_device_experts_t *layout;
} experts_upload_t;

/* The chosen experts' three matrices, each stacked [n, rows, cols] in the order given. */
static moira_status_t place_experts(moira_staging_t *s, void *context) {
    experts_upload_t *u = context;
    const moira_tensor_t **p = u->picked;
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrices(s, p, u->n, true, &u->layout->w1));
    MOIRA_RETURN_IF_ERROR(moira_staging_place_matrices(s, p + u->n, u->n, true, &u->layout->w3));
    return moira_staging_place_matrices(s, p + 2 * u->n, u->n, true, &u->layout->w2);
}

/* The chosen experts' matrices are gathered by pointer, then staged like a whole layer. */
moira_status_t moira_device_experts_upload(moira_device_t *device, moira_queue_t *queue,
                                           const moira_moe_weights_t *host, const int32_t *experts,
                                           int64_t n, int numa_node, int weight_dtype,
                                           moira_device_experts_t *out_experts) {
    memset(out_experts, 0, sizeof(*out_experts));
    if (n < 1 || !host->expert_gate_proj)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "experts upload: no experts to place (%lld)", (long long)n);
    const moira_tensor_t **picked = calloc(3 * (size_t)n, sizeof(*picked));
    if (!picked) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    moira_status_t status = MOIRA_OK_STATUS;
    for (int64_t i = 0; i < n && !status; i++) {
        int32_t e = experts[i];
        if (e < 0 || e >= host->n_experts) {
            status = moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                       "experts upload: expert %d outside 0..%lld", e,
                                       (long long)host->n_experts - 1);
            break;
        }
        picked[i] = host->expert_gate_proj[e];
        picked[n + i] = host->expert_up_proj[e];
        picked[2 * n + i] = host->expert_down_proj[e];
    }
    moira_device_experts_t layout;
    memset(&layout, 0, sizeof(layout));
    experts_upload_t context = {picked, n, &layout};
    if (!status)
        status = moira_staging_upload(device, queue, numa_node, weight_dtype, place_experts,
                                      &context, &layout.buffer);
    free(picked);
    if (status) return status;
    layout.device = device;
    layout.n_experts = n;
    layout.w1.buffer = layout.w3.buffer = layout.w2.buffer = layout.buffer;
    /* As for a whole layer: the device may keep its own layout of the experts (the cpu packs GEMM
     * panels, on the buffer's NUMA node), built now rather than inside the first timed launch. */
    moira_dtensor_t stacks[3] = {layout.w1, layout.w3, layout.w2};
    status = moira_device_prepare_weights(device, MOIRA_OP_MOE_FFN, stacks, 3);
    if (status) {
        moira_buffer_free(layout.buffer);
        return status;
    }
    *out_experts = layout;
    return MOIRA_OK_STATUS;
}

/* One buffer holds all three stacks. */
void moira_device_experts_release(moira_device_experts_t *experts) {
    moira_buffer_free(experts->buffer);
    memset(experts, 0, sizeof(*experts));
}

/* Each window 256-byte aligned, as in the weight buffers. */
static size_t workspace_round(size_t bytes) {
    return (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
}

/* Computed the same way moira_moe_workspace_at carves, so the two cannot disagree. */
size_t moira_moe_workspace_bytes(int64_t tokens, int64_t top_k, int64_t n_experts, int64_t hidden) {
    size_t rows = (size_t)(tokens * top_k);
    return workspace_round((size_t)(n_experts + 1) * 4) + 2 * workspace_round(rows * 4) +
           workspace_round(rows * (size_t)hidden * 4);
}

/* Carved per call, so a buffer sized for the largest batch serves every smaller one. */
moira_moe_workspace_t moira_moe_workspace_at(moira_buffer_t *buffer, size_t offset, int64_t tokens,
                                             int64_t top_k, int64_t n_experts, int64_t hidden) {
    moira_moe_workspace_t w;
    size_t rows = (size_t)(tokens * top_k);
    w.expert_offsets = moira_dtensor_2d(buffer, offset, MOIRA_DTYPE_I32, n_experts + 1, 1);
    w.expert_offsets.rank = 1;
    offset += workspace_round((size_t)(n_experts + 1) * 4);
    w.sorted_rows = moira_dtensor_2d(buffer, offset, MOIRA_DTYPE_I32, (int64_t)rows, 1);
    w.sorted_rows.rank = 1;
    offset += workspace_round(rows * 4);
    w.assignment_pos = moira_dtensor_2d(buffer, offset, MOIRA_DTYPE_I32, tokens, top_k);
    offset += workspace_round(rows * 4);
    w.ys = moira_dtensor_2d(buffer, offset, MOIRA_DTYPE_F32, (int64_t)rows, hidden);
    return w;
}

/* Three launches and no wait: the caller decides when to finish the queue. */
moira_status_t moira_moe_experts_enqueue(moira_queue_t *queue, const moira_dtensor_t *w1,
                                         const moira_dtensor_t *w3, const moira_dtensor_t *w2,
                                         const moira_dtensor_t *x, const moira_dtensor_t *topk_idx,
                                         const moira_dtensor_t *topk_weight,
                                         const moira_moe_workspace_t *ws, const moira_dtensor_t *y,
                                         float beta) {
    int64_t t = topk_idx->shape[0], k = topk_idx->shape[1];
    moira_moe_dispatch_params_t dispatch = {.n_experts = (int32_t)w1->shape[0]};
    moira_moe_ffn_params_t ffn = {.top_k = (int32_t)k};
    moira_moe_combine_params_t combine = {.beta = beta};
    moira_dtensor_t flat_positions = ws->assignment_pos; /* dispatch sees [T*k], combine [T, k] */
    flat_positions.rank = 1;
    flat_positions.shape[0] = t * k;
    moira_dtensor_t dispatch_ops[] = {*topk_idx, ws->expert_offsets, ws->sorted_rows,
                                      flat_positions};
    moira_dtensor_t ffn_ops[] = {*x, *w1, *w3, *w2, ws->expert_offsets, ws->sorted_rows, ws->ys};
    moira_dtensor_t combine_ops[] = {ws->ys, ws->assignment_pos, *topk_weight, *y};
    MOIRA_RETURN_IF_ERROR(moira_launch_op(queue, MOIRA_OP_MOE_DISPATCH, &dispatch, sizeof(dispatch),
                                          4, dispatch_ops));
    MOIRA_RETURN_IF_ERROR(moira_launch_op(queue, MOIRA_OP_MOE_FFN, &ffn, sizeof(ffn), 7, ffn_ops));
    return moira_launch_op(queue, MOIRA_OP_MOE_COMBINE, &combine, sizeof(combine), 4, combine_ops);
}
