/* EPLB's hierarchical policy (deepseek-ai/EPLB, rebalance_experts_hierarchical), written anew in C
 * as the peer Moira's planner is measured against: expert groups packed onto nodes, hot experts
 * replicated within each node, replicas packed onto GPUs, all by token count. Used by
 * `moira bench plan` and by the tests that check Moira is at least as balanced. */
#ifndef MOIRA_PLACEMENT_EPLB_PEER_H
#define MOIRA_PLACEMENT_EPLB_PEER_H

#include <stdint.h>

#include "runtime/status.h"

/* Places one layer. `load` has `experts` counts; `replicas` physical experts in all (experts plus
 * redundant), `groups` expert groups, `nodes` x `gpus_per_node` GPUs; replicas, groups and GPUs
 * must divide as EPLB requires. On success out_gpu_load (nodes x gpus_per_node, caller-owned)
 * holds each GPU's tokens. Returns max / mean GPU load in *out_max_over_mean. */
moira_status_t moira_eplb_hierarchical(const double *load, int experts, int replicas, int groups,
                                       int nodes, int gpus_per_node, double *out_gpu_load,
                                       double *out_max_over_mean);

#endif
