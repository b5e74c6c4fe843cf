/* Routed experts on one device: a device's share of one MoE layer's experts, packed for the
 * grouped FFN, and the dispatch -> grouped FFN -> combine pipeline that runs tokens through them.
 *
 * The multi-device executor gives each device the experts the plan places there, numbered
 * 0..n-1 on that device (its "local" experts); the single-device moe op runs the same pipeline
 * over all of a layer's experts. */
#ifndef MOIRA_OPS_DEVICE_EXPERTS_H
#define MOIRA_OPS_DEVICE_EXPERTS_H

#include <stdint.h>

#include "ops/op.h"
#include "ops/weights.h"

typedef struct moira_device_experts {
    moira_device_t *device; /* borrowed */
    moira_buffer_t *buffer; /* owned: w1, w3 and w2 are windows of it */
    int64_t n_experts;
    moira_dtensor_t w1, w3, w2; /* [n, I, D], [n, I, D], [n, D, I] */
} moira_device_experts_t;

/* Copies experts experts[0..n-1] of `host` (their global indices) to `device`, in that order,
 * into memory bound to NUMA node `numa_node` where the device has such a notion (-1: anywhere).
 * `weight_dtype` as for moira_device_layer_upload. `host` and `experts` are borrowed for the
 * call. Caller releases `out_experts` with moira_device_experts_release. */
moira_status_t moira_device_experts_upload(moira_device_t *device, moira_queue_t *queue,
                                           const moira_moe_weights_t *host, const int32_t *experts,
                                           int64_t n, int numa_node, int weight_dtype,
                                           moira_device_experts_t *out_experts);

void moira_device_experts_release(moira_device_experts_t *experts);

/* The temporaries of the pipeline for T tokens, k assignments each, over E experts of hidden
 * size D: expert_offsets i32 [E+1], sorted_rows i32 [T*k], assignment_pos i32 [T, k], ys f32
 * [T*k, D]. Windows of one caller-owned buffer. */
typedef struct moira_moe_workspace {
    moira_dtensor_t expert_offsets, sorted_rows, assignment_pos, ys;
} moira_moe_workspace_t;

/* Bytes moira_moe_workspace_at needs from its offset. */
size_t moira_moe_workspace_bytes(int64_t tokens, int64_t top_k, int64_t n_experts, int64_t hidden);

/* Carves the workspace for exactly these sizes out of `buffer` (borrowed) from `offset`. */
moira_moe_workspace_t moira_moe_workspace_at(moira_buffer_t *buffer, size_t offset, int64_t tokens,
                                             int64_t top_k, int64_t n_experts, int64_t hidden);

/* Enqueues y = beta * y + sum_j topk_weight[t,j] * FFN_{topk_idx[t,j]}(x[t]) over the experts
 * w1/w3/w2 ([E, I, D] / [E, I, D] / [E, D, I]): dispatch, one grouped FFN launch, combine.
 * Assignments with index -1 contribute nothing. x f32 [T, D], topk_idx i32 [T, k] (local expert
 * numbers), topk_weight f32 [T, k], y f32 [T, D]. Does not wait for the queue. */
moira_status_t moira_moe_experts_enqueue(moira_queue_t *queue, const moira_dtensor_t *w1,
                                         const moira_dtensor_t *w3, const moira_dtensor_t *w2,
                                         const moira_dtensor_t *x, const moira_dtensor_t *topk_idx,
                                         const moira_dtensor_t *topk_weight,
                                         const moira_moe_workspace_t *workspace,
                                         const moira_dtensor_t *y, float beta);

#endif
