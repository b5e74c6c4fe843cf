/* Memory the planner keeps free of experts on each target (DESIGN.md §5): the home's weights,
 * workspaces, programs and allocator slack, plus what the user asks for (--reserve). */
#ifndef MOIRA_PLACEMENT_RESERVE_H
#define MOIRA_PLACEMENT_RESERVE_H

#include "placement/topology.h"
#include "runtime/model_config.h"

/* The share of every target's memory kept for workspaces, programs and allocator slack. */
#define MOIRA_RESERVE_HEADROOM 0.03

/* Bytes of decoder layer `layer`'s matrices stored as `dtype`, split into the routed experts
 * (*out_experts) and everything else the home device holds (*out_rest: attention, router,
 * shared experts or the dense MLP; norms and biases are negligible). */
void moira_model_layer_bytes(const moira_model_config_t *model, int64_t layer, moira_dtype_t dtype,
                             double *out_experts, double *out_rest);

/* The home's weights over all layers (the `rest` of moira_model_layer_bytes). */
double moira_model_home_bytes(const moira_model_config_t *model);

/* Sets every target's reserve_bytes: MOIRA_RESERVE_HEADROOM of its memory, plus `extra_bytes`
 * (--reserve), plus the home's weights on target `home` (home.h), or shared out by memory over
 * the first host's CPU memory when the home is CPU memory (or -1: not chosen). Capped at the
 * target's memory. */
void moira_topology_reserve(moira_topology_t *topology, const moira_model_config_t *model,
                            double extra_bytes, int home);

#endif
