/* What an MoE layer's exchange between hosts moves (runtime/executor/exchange.c): the wire rows
 * and the cost model's estimate of how many tokens cross to each host.
 *
 * A token goes to a host once however many of its experts that host holds: its normalised
 * activations (D f32) with the k replicas it goes to there and their weights (k int32 + k f32),
 * and comes back once as the host's partial sum (D f32). So a layer moves
 *   crossings x (dispatch row + return row) bytes,
 * where a crossing is a (token, other host) pair the token has an expert on. The expected
 * crossings from a host holding `tokens` tokens into host h follow the cost model's group rule
 * (placement/cost_model.h): group g of tokens_g = load_g / m tokens sends tokens_g x min(1, f x m)
 * of them to h, f being h's share of g's load. That is exact when a host holds every expert of a
 * token or none, and an estimate in between (a profile counts experts, not which share a token). */
#ifndef MOIRA_PLACEMENT_NETWORK_COST_H
#define MOIRA_PLACEMENT_NETWORK_COST_H

#include <stdint.h>

#include "placement/cost_model.h"
#include "placement/topology.h"

/* Bytes of one dispatched row and of one returned row. */
int64_t moira_network_dispatch_row_bytes(int64_t hidden, int64_t experts_per_token);
int64_t moira_network_return_row_bytes(int64_t hidden);

/* Doubles moira_network_crossings needs as scratch: n_hosts x groups. */
size_t moira_network_scratch_doubles(const moira_cost_model_t *cost,
                                     const moira_topology_t *topology);

/* The tokens expected to go to `host` out of `tokens` held elsewhere, by the group rule above:
 * `group_host_load` [hosts, groups] holds each host's load of each expert group. */
double moira_network_tokens_into(const moira_cost_model_t *cost, const double *group_host_load,
                                 int hosts, int host, double tokens);

/* Bytes one crossing moves out and back: a dispatched row and a returned one. */
static inline double moira_network_crossing_bytes(int64_t hidden, int64_t experts_per_token) {
    return (double)(moira_network_dispatch_row_bytes(hidden, experts_per_token) +
                    moira_network_return_row_bytes(hidden));
}

/* Expected crossings of one layer whose load (replica r of expert replica_expert[r] on target
 * replica_target[r] serving replica_load[r] assignments) all comes from tokens held by
 * `origin_host`: the tokens sent to every other host, summed. */
double moira_network_crossings(const moira_cost_model_t *cost, const moira_topology_t *topology,
                               int n_replicas, const int *replica_target,
                               const int32_t *replica_expert, const double *replica_load,
                               int origin_host, double *scratch);

#endif
