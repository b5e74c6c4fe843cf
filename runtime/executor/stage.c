/* One target's share of an MoE layer, on its worker thread: upload the tokens it serves, run
 * dispatch -> grouped FFN -> combine over its experts on its own queue, download its partial
 * sums. Everything is enqueued at once and waited for once, so the device overlaps what its
 * queue allows while the other targets and the home device work at the same time. */
#include "runtime/executor/executor_internal.h"

/* Enqueues the whole stage; the caller waits for the queue. */
static moira_status_t enqueue_stage(exec_target_t *target) {
    const moira_device_experts_t *experts = target->experts;
    int64_t rows = target->rows, d = target->hidden, k = target->top_k;
    moira_buffer_t *buffer = target->workspace;
    moira_dtensor_t x = moira_dtensor_2d(buffer, 0, MOIRA_DTYPE_F32, rows, d);
    moira_dtensor_t idx = moira_dtensor_2d(buffer, target->off_idx, MOIRA_DTYPE_I32, rows, k);
    moira_dtensor_t weight = moira_dtensor_2d(buffer, target->off_weight, MOIRA_DTYPE_F32, rows, k);
    moira_dtensor_t y = moira_dtensor_2d(buffer, target->off_y, MOIRA_DTYPE_F32, rows, d);
    moira_moe_workspace_t ws =
        moira_moe_workspace_at(buffer, target->off_moe, rows, k, experts->n_experts, d);
    size_t row_bytes = (size_t)d * sizeof(float), route_bytes = (size_t)(rows * k) * 4;
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(target->queue, buffer, 0, target->x, (size_t)rows * row_bytes));
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(target->queue, buffer, target->off_idx, target->idx, route_bytes));
    MOIRA_RETURN_IF_ERROR(
        moira_queue_write(target->queue, buffer, target->off_weight, target->weight, route_bytes));
    MOIRA_RETURN_IF_ERROR(moira_moe_experts_enqueue(
        target->queue, &experts->w1, &experts->w3, &experts->w2, &x, &idx, &weight, &ws, &y, 0.0f));
    return moira_queue_read(target->queue, buffer, target->off_y, target->y,
                            (size_t)rows * row_bytes);
}

/* Runs on the target's worker; the wall time from first enqueue to finish is the target's busy
 * time. */
void moira_exec_stage(void *context) {
    exec_target_t *target = context;
    double start = moira_now_seconds();
    moira_status_t status = enqueue_stage(target);
    moira_status_t done = moira_queue_finish(target->queue);
    if (status)
        moira_status_free(done);
    else
        status = done;
    target->stage_s = moira_now_seconds() - start;
    target->status = status;
}
