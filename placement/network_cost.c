/* The exchange's wire rows and the expected crossings of a layer (placement/network_cost.h). */
#include "placement/network_cost.h"

#include <string.h>

int64_t moira_network_dispatch_row_bytes(int64_t hidden, int64_t experts_per_token) {
    return (hidden + 2 * experts_per_token) * 4;
}

int64_t moira_network_return_row_bytes(int64_t hidden) {
    return hidden * 4;
}

/* Groups of the model: E / experts per group (1 without groups). */
static int64_t group_count(const moira_cost_model_t *cost) {
    return cost->experts_per_group > 0 ? cost->experts / cost->experts_per_group : 1;
}

size_t moira_network_scratch_doubles(const moira_cost_model_t *cost,
                                     const moira_topology_t *topology) {
    return (size_t)topology->n_hosts * (size_t)group_count(cost) + 1;
}

double moira_network_tokens_into(const moira_cost_model_t *cost, const double *group_host_load,
                                 int hosts, int host, double tokens) {
    int64_t groups = group_count(cost);
    /* Experts a token has in each group it picks; without groups, the one group holds all k. */
    double m = groups > 1 ? cost->experts_per_group_per_token : (double)cost->experts_per_token;
    if (m < 1) m = 1;
    double into = 0;
    for (int64_t g = 0; g < groups; g++) {
        double group_load = 0;
        for (int o = 0; o < hosts; o++)
            group_load += group_host_load[(size_t)o * groups + g];
        double on_host = group_host_load[(size_t)host * groups + g];
        if (on_host <= 0) continue;
        double share = on_host / group_load * m;
        into += group_load / m * (share < 1 ? share : 1);
    }
    /* A token with experts in several of the host's groups still goes there once. */
    return into < tokens ? into : tokens;
}

/* Group loads per host first, then each other host's expected tokens by the rule above. */
double moira_network_crossings(const moira_cost_model_t *cost, const moira_topology_t *topology,
                               int n_replicas, const int *replica_target,
                               const int32_t *replica_expert, const double *replica_load,
                               int origin_host, double *scratch) {
    int64_t groups = group_count(cost);
    memset(scratch, 0, moira_network_scratch_doubles(cost, topology) * sizeof(double));
    double load = 0;
    for (int r = 0; r < n_replicas; r++) {
        int host = topology->targets[replica_target[r]].host;
        int64_t g = replica_expert[r] / cost->experts_per_group;
        scratch[(size_t)host * groups + g] += replica_load[r];
        load += replica_load[r];
    }
    /* The origin's tokens: its load over k. */
    double tokens = cost->experts_per_token > 0 ? load / (double)cost->experts_per_token : 0;
    double crossings = 0;
    for (int h = 0; h < topology->n_hosts; h++)
        if (h != origin_host)
            crossings += moira_network_tokens_into(cost, scratch, topology->n_hosts, h, tokens);
    return crossings;
}
