/* The per-device reference check: each target's partial sums of an MoE layer against the fp64
 * reference FFN (ops/reference.c) of the same experts on the same tokens with the same routing
 * weights. Comparing each device's own share, rather than only the model's output, says which
 * device disagrees when one does. */
#include <stdlib.h>
#include <string.h>

#include "ops/reference.h"
#include "runtime/executor/executor_internal.h"

/* Adds w * FFN_expert(x) of every assignment the target served with local number `slot` to the
 * rows' sums in `want` [rows, D]. `xs`, `ys` [rows * k, D] and `picked` are scratch. */
static moira_status_t add_expert(const moira_moe_weights_t *moe, int32_t expert, int32_t slot,
                                 const exec_target_t *target, moira_tensor_t *xs,
                                 moira_tensor_t *ys, int64_t *picked, float *want) {
    int64_t k = target->top_k, d = target->hidden, n = 0;
    for (int64_t a = 0; a < target->rows * k; a++)
        if (target->idx[a] == slot) {
            memcpy((float *)xs->data + n * d, target->x + (a / k) * d, (size_t)d * sizeof(float));
            picked[n++] = a;
        }
    if (n == 0) return MOIRA_OK_STATUS;
    moira_mlp_weights_t ffn = {moe->expert_gate_proj[expert], moe->expert_up_proj[expert],
                               moe->expert_down_proj[expert]};
    moira_tensor_t x_rows = *xs, y_rows = *ys;
    x_rows.shape[0] = y_rows.shape[0] = n;
    MOIRA_RETURN_IF_ERROR(moira_ref_mlp(&ffn, &x_rows, &y_rows));
    for (int64_t i = 0; i < n; i++) {
        const float *y = (const float *)ys->data + i * d;
        float w = target->weight[picked[i]];
        float *sum = want + (picked[i] / k) * d;
        for (int64_t c = 0; c < d; c++)
            sum[c] += w * y[c];
    }
    return MOIRA_OK_STATUS;
}

/* Accumulates over the MoE layers of one forward, so the verdict covers every layer the target
 * served. */
moira_status_t moira_exec_check_target(const moira_executor_t *e, const exec_layer_t *layer,
                                       exec_target_t *target) {
    int64_t k = target->top_k, d = target->hidden, rows = target->rows;
    if (rows == 0) return MOIRA_OK_STATUS;
    int exec_index = (int)(target - e->targets);
    moira_tensor_t xs = {0}, ys = {0};
    float *want = calloc((size_t)(rows * d), sizeof(float));
    int64_t *picked = calloc((size_t)(rows * k), sizeof(int64_t));
    moira_status_t status =
        want && picked ? moira_tensor_alloc_f32(rows * k, d, &xs)
                       : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "check: out of memory");
    if (!status) status = moira_tensor_alloc_f32(rows * k, d, &ys);
    const moira_plan_layer_t *plan = layer->plan;
    for (int r = 0; !status && r < plan->n_replicas; r++)
        if (layer->replica_exec[r] == exec_index)
            status = add_expert(&e->weights[layer->index].moe, plan->replica_expert[r],
                                layer->replica_slot[r], target, &xs, &ys, picked, want);
    for (int64_t i = 0; !status && i < rows * d; i++) {
        double diff = (double)target->y[i] - (double)want[i];
        target->check_num += diff * diff;
        target->check_den += (double)want[i] * (double)want[i];
    }
    free(want);
    free(picked);
    moira_tensor_release(&xs);
    moira_tensor_release(&ys);
    return status;
}
