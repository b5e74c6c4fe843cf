/* Measurements: what each target did in an MoE layer next to what the cost model predicts for
 * the same load, so a run shows predicted against measured per device and per layer. */
#include <stdlib.h>
#include <string.h>

#include "placement/network_cost.h"
#include "runtime/executor/executor_internal.h"

/* The prediction uses the load the layer really saw, so predicted and measured compare like with
 * like. */
void moira_exec_measure_layer(moira_executor_t *e, const exec_layer_t *layer,
                              moira_exec_layer_stats_t *stats) {
    const moira_plan_layer_t *plan = layer->plan;
    moira_layer_cost_t cost;
    /* What this rank's routing and the rows it served put on each replica. */
    for (int r = 0; r < plan->n_replicas; r++)
        layer->routed_load[r] = layer->replica_rows[r] + layer->sent_rows[r];
    moira_cost_layer(&e->cost, e->topology, plan->n_replicas, plan->replica_target,
                     plan->replica_expert, layer->routed_load, e->cost_scratch, &cost);
    if (e->exchange.cluster) {
        /* The network cost of the tokens this rank owns: their load alone. */
        for (int r = 0; r < plan->n_replicas; r++)
            layer->routed_load[r] -= layer->received_rows[r];
        double crossings = moira_network_crossings(
            &e->cost, e->topology, plan->n_replicas, plan->replica_target, plan->replica_expert,
            layer->routed_load, e->exchange.host, e->network_scratch);
        int64_t d = e->model->hidden_size, k = e->model->num_experts_per_tok;
        double bytes = crossings * (double)(moira_network_dispatch_row_bytes(d, k) +
                                            moira_network_return_row_bytes(d));
        stats->predicted_network_bytes += bytes;
        /* Out and back: the bytes over the network's bandwidth, and its latency twice. */
        if (bytes > 0 && e->topology->network_gbs > 0)
            stats->predicted_network_us +=
                bytes / (e->topology->network_gbs * 1e3) + 2 * e->topology->network_latency_us;
    }
    stats->predicted_us += cost.predicted_us;
    stats->plan_predicted_us = plan->cost.predicted_us;
    for (int i = 0; i < e->n_targets; i++) {
        exec_target_t *target = &e->targets[i];
        moira_exec_target_stats_t *s = &e->stats.targets[i];
        int active = 0;
        for (int r = 0; r < plan->n_replicas; r++)
            active += layer->replica_exec[r] == i && layer->replica_rows[r] > 0;
        s->predicted_us +=
            moira_cost_target_us(&e->cost, target->info, (double)target->assignments, active);
        s->assignments += target->assignments;
        s->tokens += target->rows;
        if (target->rows == 0) continue;
        size_t rows = (size_t)target->rows, row_bytes = (size_t)target->hidden * sizeof(float);
        s->busy_s += target->stage_s;
        s->bytes_to_device += (double)(rows * row_bytes + 2 * rows * (size_t)target->top_k * 4);
        s->bytes_from_device += (double)(rows * row_bytes);
    }
}

moira_status_t moira_exec_stats_add_speeds(const moira_exec_stats_t *stats,
                                           const moira_topology_t *topology,
                                           moira_profile_t *profile) {
    double forwards = stats->forwards > 0 ? (double)stats->forwards : 1;
    for (int i = 0; i < stats->n_targets; i++) {
        const moira_exec_target_stats_t *t = &stats->targets[i];
        if (t->busy_s > 0 && t->predicted_us > 0)
            MOIRA_RETURN_IF_ERROR(
                moira_profile_add_speed(profile, topology->targets[t->target].name,
                                        t->busy_s * 1e6 / forwards, t->predicted_us / forwards));
    }
    return MOIRA_OK_STATUS;
}

/* Borrowed, so a report reads the numbers without copying the arrays. */
const moira_exec_stats_t *moira_executor_stats(const moira_executor_t *e) {
    return &e->stats;
}

/* Keeps what describes the executor (targets, layers, homes, check results); zeroes the rest. */
void moira_executor_reset_stats(moira_executor_t *e) {
    moira_exec_stats_t *s = &e->stats;
    e->stats_reset_pending = e->exchange.cluster != NULL;
    s->forwards = 0;
    s->tokens = 0;
    s->wall_s = 0;
    s->home_bytes = 0;
    for (int i = 0; i < e->n_targets; i++) {
        moira_exec_target_stats_t *t = &s->targets[i];
        t->assignments = t->tokens = 0;
        t->busy_s = t->bytes_to_device = t->bytes_from_device = 0;
        t->predicted_us = t->modelled_us = 0;
        double us = 0;
        e->targets[i].modelled_base_us = moira_queue_modelled_us(e->targets[i].queue, &us) ? us : 0;
    }
    for (int l = 0; l < s->n_layers; l++) {
        moira_exec_layer_stats_t *layer = &s->layers[l];
        layer->wall_s = layer->home_s = layer->experts_s = layer->predicted_us = 0;
        layer->network_bytes = layer->exchange_s = layer->predicted_network_bytes = 0;
        layer->predicted_network_us = 0;
    }
}

/* In the planner's own profile form, so `moira plan --profile` reads what a run saw. */
moira_status_t moira_executor_observed_profile(const moira_executor_t *e, moira_profile_t *out) {
    memset(out, 0, sizeof(*out));
    int n = 0;
    for (int64_t l = 0; l < e->n_layers; l++)
        n += e->layers[l].is_moe;
    out->experts = e->model->n_routed_experts;
    out->layers = calloc((size_t)n + 1, sizeof(int64_t));
    out->load = calloc((size_t)n * (size_t)out->experts + 1, sizeof(double));
    if (!out->layers || !out->load) {
        moira_profile_free(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "profile: out of memory");
    }
    for (int64_t l = 0; l < e->n_layers; l++) {
        const exec_layer_t *layer = &e->layers[l];
        if (!layer->is_moe) continue;
        out->layers[out->n_layers] = l;
        memcpy(out->load + (size_t)out->n_layers * (size_t)out->experts, layer->expert_load,
               (size_t)out->experts * sizeof(double));
        out->n_layers++;
    }
    return MOIRA_OK_STATUS;
}

void moira_executor_add_expert_load(const moira_executor_t *e, double *totals) {
    int64_t experts = e->model->n_routed_experts;
    for (int64_t l = 0; l < e->n_layers; l++) {
        const exec_layer_t *layer = &e->layers[l];
        if (!layer->is_moe) continue;
        for (int64_t x = 0; x < experts; x++)
            totals[l * experts + x] += layer->expert_load[x];
    }
}
