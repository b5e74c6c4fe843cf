/* Routing one MoE layer's assignments to expert replicas, and cutting the batch into what each
 * target serves.
 *
 * Replica choice. Assignments (token t, slot j) are taken in token order. An expert with one
 * replica leaves no choice. Otherwise the assignment goes to the replica whose target the cost
 * model predicts to finish the layer earliest with it added: moira_cost_target_us over the
 * assignments that target has been given so far plus this one, counting one more expert's
 * weights to read when this replica has had none yet. Ties go to the replica the plan lists
 * first. So replicas on equal devices share an expert's tokens evenly, a faster device takes
 * proportionally more, and the same routing always gives the same split. */
#include <string.h>

#include "runtime/executor/executor_internal.h"

/* The replica of `expert` that assignment should go to, by the rule above. */
static int32_t choose_replica(moira_executor_t *e, const exec_layer_t *layer, int32_t expert) {
    int32_t first = layer->expert_first[expert], end = layer->expert_first[expert + 1];
    if (end - first == 1) return layer->expert_replicas[first];
    int32_t best = -1;
    double best_us = 0;
    for (int32_t i = first; i < end; i++) {
        int32_t r = layer->expert_replicas[i];
        int t = layer->plan->replica_target[r];
        bool idle = layer->replica_rows[r] == 0 && layer->sent_rows[r] == 0;
        int active = e->target_active[t] + (idle ? 1 : 0);
        double us =
            moira_cost_target_us(&e->cost, &e->topology->targets[t], e->target_rows[t] + 1, active);
        if (best < 0 || us < best_us) {
            best = r;
            best_us = us;
        }
    }
    return best;
}

/* Starts a new row for token `t` on `target` unless its last row already is that token's. */
static int64_t row_for_token(exec_target_t *target, int32_t t, int64_t k) {
    if (target->rows > 0 && target->token[target->rows - 1] == t) return target->rows - 1;
    int64_t row = target->rows++;
    target->token[row] = t;
    for (int64_t j = 0; j < k; j++) {
        target->idx[row * k + j] = -1;
        target->weight[row * k + j] = 0;
    }
    return row;
}

/* Gives assignment j of row-token `token` to replica r, which this host holds. */
void moira_exec_assign(moira_executor_t *e, exec_layer_t *layer, int32_t token, int64_t j,
                       int32_t r, float weight) {
    int64_t k = e->model->num_experts_per_tok;
    layer->replica_rows[r] += 1;
    exec_target_t *target = &e->targets[layer->replica_exec[r]];
    int64_t row = row_for_token(target, token, k);
    target->idx[row * k + j] = layer->replica_slot[r];
    target->weight[row * k + j] = weight;
    target->assignments++;
}

/* Host work between the router and the devices: replica choice, then each target's rows (and
 * each other host's rows, with a cluster). The activations are copied into the targets' rows by
 * moira_exec_fill_rows, once rows from other hosts have joined. */
void moira_exec_route(moira_executor_t *e, exec_layer_t *layer, int64_t tokens) {
    int64_t k = e->model->num_experts_per_tok;
    const moira_plan_layer_t *plan = layer->plan;
    memset(e->target_rows, 0, (size_t)e->topology->n_targets * sizeof(double));
    memset(e->target_active, 0, (size_t)e->topology->n_targets * sizeof(int));
    memset(layer->replica_rows, 0, (size_t)plan->n_replicas * sizeof(double));
    memset(layer->expert_load, 0, (size_t)e->model->n_routed_experts * sizeof(double));
    memset(layer->sent_rows, 0, (size_t)plan->n_replicas * sizeof(double));
    memset(layer->received_rows, 0, (size_t)plan->n_replicas * sizeof(double));
    for (int h = 0; h < e->exchange.n_hosts && e->exchange.cluster; h++)
        e->exchange.send_rows[h] = 0;
    for (int i = 0; i < e->n_targets; i++) {
        e->targets[i].rows = 0;
        e->targets[i].assignments = 0;
        e->targets[i].experts = &layer->experts[i];
    }
    for (int64_t t = 0; t < tokens; t++) {
        for (int64_t j = 0; j < k; j++) {
            int32_t expert = e->idx[t * k + j];
            if (expert < 0) continue; /* dropped by the capacity factor */
            int32_t r = choose_replica(e, layer, expert);
            int target_index = plan->replica_target[r];
            if (layer->replica_rows[r] == 0 && layer->sent_rows[r] == 0)
                e->target_active[target_index]++;
            layer->expert_load[expert] += 1;
            e->target_rows[target_index] += 1;
            if (layer->replica_exec[r] >= 0) {
                moira_exec_assign(e, layer, (int32_t)t, j, r, e->weight[t * k + j]);
            } else {
                layer->sent_rows[r] += 1;
                moira_exec_route_remote(e, e->topology->targets[target_index].host, (int32_t)t, j,
                                        r, e->weight[t * k + j]);
            }
        }
    }
}

void moira_exec_fill_rows(moira_executor_t *e) {
    int64_t d = e->model->hidden_size;
    for (int i = 0; i < e->n_targets; i++) {
        exec_target_t *target = &e->targets[i];
        for (int64_t row = 0; row < target->rows; row++)
            memcpy(target->x + row * d, e->normed + (int64_t)target->token[row] * d,
                   (size_t)d * sizeof(float));
    }
}
