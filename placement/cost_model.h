/* The cost model: how long one MoE layer takes on a placement (DESIGN.md §5, issue #5).
 *
 * Per target: launch + max(compute, weight bytes touched / bandwidth) + activation transfer over
 * its link. Each figure is the measured one when `moira calibrate` gave it (moira_measured_t),
 * else the topology's; launch is 0 without calibration.
 *   launch           = the measured fixed cost of one layer's expert work on the target
 * The whole is multiplied by the target's time_scale when a recorded run's speeds say it ran
 * slower or faster than predicted (placement/speed.h).
 *   compute          = routed tokens x 6 D I flops / peak (the three expert matmuls)
 *   weights touched  = expected replicas read x expert bytes: loads are expected loads, so a
 *                      replica expecting l of the batch's T tokens is read with the probability
 *                      that at least one token routes to it, 1 - (1 - l/T)^T (1 from l = T on;
 *                      a 1-token batch reads an expert with probability l). In a large batch
 *                      that is 1 for all but the coldest experts; in decode it is what makes a
 *                      plan spread experts by where their reads are cheapest.
 *   link transfer    = routed tokens x D x 2 bytes (bf16 activations) x 2 (dispatch and combine)
 *                      / link bandwidth; none for CPU memory, whose activations are already there
 * Per layer: the slowest target, plus network time when experts span hosts. Tokens start evenly
 * spread over hosts, so a fraction (H-1)/H of the traffic into a host crosses the network. A token
 * goes to a host once however many of its experts the host holds (placement/network_cost.h: its
 * f32 row with the replicas and weights there, and the partial sum back): group g on host h
 * receives tokens_g x min(1, f x m) tokens, where tokens_g = load_g / m, m = k / topk_group
 * experts per selected group (k without groups), and f the share of g's load on h; no host
 * receives more tokens than the batch has. Keeping groups whole is what saves traffic. Network
 * time = the busiest host's inbound bytes / network bandwidth + latency. */
#ifndef MOIRA_PLACEMENT_COST_MODEL_H
#define MOIRA_PLACEMENT_COST_MODEL_H

#include <stdint.h>

#include "placement/topology.h"
#include "runtime/model_config.h"

/* A plain value. */
typedef struct moira_cost_model {
    double flops_per_token;  /* 6 D I */
    double expert_bytes;     /* one routed expert's weights in weight_dtype (fp8 + scales) */
    double activation_bytes; /* D x 2: one token's hidden state in bf16, one way */
    int64_t hidden;          /* D */
    moira_dtype_t weight_dtype;
    int64_t experts;                    /* E */
    int64_t experts_per_group;          /* E / n_group (E when there are no groups) */
    double experts_per_group_per_token; /* m = k / topk_group, at least 1 */
    int64_t experts_per_token;          /* k */
} moira_cost_model_t;

void moira_cost_model_init(const moira_model_config_t *model, moira_cost_model_t *out);

/* Microseconds one target needs for `tokens` routed tokens over `reads` replicas it reads (the
 * expected count: a sum of moira_cost_read_probability). A target with no tokens takes 0. */
double moira_cost_target_us(const moira_cost_model_t *cost, const moira_target_t *target,
                            double tokens, double reads);

/* The probability that a replica expecting `load` of a batch's `batch_tokens` tokens receives at
 * least one: 1 - (1 - load/T)^T, 0 without load, 1 from load >= T; load > 0 alone when the batch
 * size is unknown (0). */
double moira_cost_read_probability(double load, double batch_tokens);

/* Bytes a target's routed tokens move over its link to host memory (0 for CPU memory). */
double moira_cost_link_bytes(const moira_cost_model_t *cost, const moira_target_t *target,
                             double tokens);

/* What one layer's placement costs. */
typedef struct moira_layer_cost {
    double predicted_us; /* the home's time + slowest target + network */
    double home_us;      /* attention and the rest on the plan's home (0 when it names none) */
    double slowest_target_us;
    double network_us;
    double max_over_mean; /* max / mean routed tokens over the targets holding replicas */
    double link_bytes;    /* all targets' link traffic */
    double network_bytes; /* traffic between hosts */
    double tokens;        /* tokens in the batch: total load / k */
} moira_layer_cost_t;

/* Evaluates one layer: replica r holds expert replica_expert[r] on target replica_target[r] and
 * receives replica_load[r] tokens. `scratch` must hold 3 x n_targets + n_hosts x groups doubles
 * (borrowed; see moira_cost_scratch_doubles). */
void moira_cost_layer(const moira_cost_model_t *cost, const moira_topology_t *topology,
                      int n_replicas, const int *replica_target, const int32_t *replica_expert,
                      const double *replica_load, double *scratch, moira_layer_cost_t *out);

/* Doubles moira_cost_layer's scratch needs. */
size_t moira_cost_scratch_doubles(const moira_cost_model_t *cost, const moira_topology_t *topology);

#endif
