#include "placement/cost_model.h"
#include "placement/network_cost.h"

#include <math.h>
#include <string.h>

void moira_cost_model_init(const moira_model_config_t *model, moira_cost_model_t *out) {
    memset(out, 0, sizeof(*out));
    out->flops_per_token = 6.0 * (double)model->hidden_size * (double)model->moe_intermediate_size;
    out->expert_bytes =
        (double)moira_model_config_expert_bytes(model, moira_model_config_expert_dtype(model));
    out->activation_bytes = 2.0 * (double)model->hidden_size;
    out->hidden = model->hidden_size;
    out->weight_dtype = model->weight_dtype;
    out->experts = model->n_routed_experts;
    int64_t groups = model->n_group > 1 ? model->n_group : 1;
    out->experts_per_group = model->n_routed_experts / groups;
    out->experts_per_token = model->num_experts_per_tok;
    double m = groups > 1 && model->topk_group > 0
                   ? (double)model->num_experts_per_tok / (double)model->topk_group
                   : 1.0;
    out->experts_per_group_per_token = m < 1 ? 1 : m;
}

double moira_cost_link_bytes(const moira_cost_model_t *cost, const moira_target_t *target,
                             double tokens) {
    if (target->kind == MOIRA_TARGET_NUMA) return 0;
    return tokens * cost->activation_bytes * 2.0;
}

double moira_cost_read_probability(double load, double batch_tokens) {
    if (!(load > 0)) return 0;
    if (!(batch_tokens > 0) || load >= batch_tokens) return 1;
    return -expm1(batch_tokens * log1p(-load / batch_tokens));
}

double moira_cost_target_us(const moira_cost_model_t *cost, const moira_target_t *target,
                            double tokens, double active_replicas) {
    if (tokens <= 0 && active_replicas <= 0) return 0;
    double peak = moira_target_peak_tflops(target, cost->weight_dtype);
    double bandwidth = moira_target_bandwidth_gbs(target), link = moira_target_link_gbs(target);
    double compute_us = peak > 0 ? tokens * cost->flops_per_token / (peak * 1e6) : 1e30;
    double memory_us =
        bandwidth > 0 ? active_replicas * cost->expert_bytes / (bandwidth * 1e3) : 1e30;
    double link_us = link > 0 ? moira_cost_link_bytes(cost, target, tokens) / (link * 1e3) : 0;
    double scale = target->time_scale > 0 ? target->time_scale : 1;
    return scale * (target->measured.launch_us + (compute_us > memory_us ? compute_us : memory_us) +
                    link_us);
}

size_t moira_cost_scratch_doubles(const moira_cost_model_t *cost,
                                  const moira_topology_t *topology) {
    int64_t groups = cost->experts_per_group > 0 ? cost->experts / cost->experts_per_group : 1;
    return 3 * (size_t)topology->n_targets + (size_t)topology->n_hosts * (size_t)groups + 1;
}

/* Inbound network bytes of the busiest host, from group-on-host loads (see the header). */
static void network_traffic(const moira_cost_model_t *cost, const moira_topology_t *topology,
                            const double *group_host_load, double tokens, double *out_total,
                            double *out_busiest) {
    *out_total = 0;
    *out_busiest = 0;
    int hosts = topology->n_hosts;
    if (hosts < 2) return;
    double remote = (double)(hosts - 1) / hosts;
    double crossing = moira_network_crossing_bytes(cost->hidden, cost->experts_per_token);
    for (int h = 0; h < hosts; h++) {
        double host_bytes =
            moira_network_tokens_into(cost, group_host_load, hosts, h, tokens) * crossing * remote;
        *out_total += host_bytes;
        if (host_bytes > *out_busiest) *out_busiest = host_bytes;
    }
}

void moira_cost_layer(const moira_cost_model_t *cost, const moira_topology_t *topology,
                      int n_replicas, const int *replica_target, const int32_t *replica_expert,
                      const double *replica_load, double *scratch, moira_layer_cost_t *out) {
    memset(out, 0, sizeof(*out));
    int n_targets = topology->n_targets;
    int64_t groups = cost->experts / cost->experts_per_group;
    double *tokens = scratch, *active = scratch + n_targets, *held = scratch + 2 * n_targets;
    double *group_host_load = scratch + 3 * n_targets;
    memset(scratch, 0, moira_cost_scratch_doubles(cost, topology) * sizeof(double));
    double total_load = 0;
    for (int r = 0; r < n_replicas; r++)
        total_load += replica_load[r];
    double batch = cost->experts_per_token > 0 ? total_load / cost->experts_per_token : 0;
    for (int r = 0; r < n_replicas; r++) {
        int t = replica_target[r];
        tokens[t] += replica_load[r];
        held[t] += 1;
        active[t] += moira_cost_read_probability(replica_load[r], batch);
        int64_t g = replica_expert[r] / cost->experts_per_group;
        group_host_load[(size_t)topology->targets[t].host * groups + g] += replica_load[r];
    }
    double max_tokens = 0, sum_tokens = 0;
    int holders = 0;
    for (int t = 0; t < n_targets; t++) {
        const moira_target_t *target = &topology->targets[t];
        double us = moira_cost_target_us(cost, target, tokens[t], active[t]);
        if (us > out->slowest_target_us) out->slowest_target_us = us;
        out->link_bytes += moira_cost_link_bytes(cost, target, tokens[t]);
        if (held[t] > 0) {
            holders++;
            sum_tokens += tokens[t];
            if (tokens[t] > max_tokens) max_tokens = tokens[t];
        }
    }
    double busiest = 0;
    network_traffic(cost, topology, group_host_load, batch, &out->network_bytes, &busiest);
    if (busiest > 0)
        out->network_us = busiest / (topology->network_gbs * 1e3) + topology->network_latency_us;
    out->predicted_us = out->slowest_target_us + out->network_us;
    out->max_over_mean = sum_tokens > 0 ? max_tokens / (sum_tokens / holders) : 1.0;
    out->tokens = cost->experts_per_token > 0 ? total_load / cost->experts_per_token : 0;
}
