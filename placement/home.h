/* The home device (DESIGN.md §5 `home:`): where attention, the router, shared experts, dense
 * layers and the latent cache run, chosen by the cost model, and its share of each layer's time. */
#ifndef MOIRA_PLACEMENT_HOME_H
#define MOIRA_PLACEMENT_HOME_H

#include "placement/plan.h"
#include "placement/topology.h"
#include "runtime/model_config.h"

/* Microseconds the home needs for decoder layer `layer` over `tokens` tokens on target `home`:
 * launch + max(its weights (moira_model_layer_bytes' rest) / bandwidth, 2 x their parameters x
 * tokens / peak). CPU memory as home is the whole host's CPU memory (the cpu device uses every
 * core and node): the host's NUMA targets' bandwidths and peaks summed. Calibrated figures
 * (measured home_launch_us and home_tflops; for CPU memory the host's first NUMA node's) win;
 * launch is 0 without them. A measured home_attention_tflops adds the attention's FLOPs
 * (moira_home_attention_flops) at that rate on top. */
double moira_home_layer_us(const moira_topology_t *topology, int home,
                           const moira_model_config_t *model, int64_t layer, double tokens);

/* FLOPs of causal attention over a prefill of `tokens` tokens: every head scores each query
 * against it and the tokens before it (qk_nope + qk_rope dims) and sums their values (v dims):
 * heads x (qk + v) x T x (T + 1). What grows with the square of the batch. */
double moira_home_attention_flops(const moira_model_config_t *model, double tokens);

/* The target of the first host whose home time over all layers for `tokens` is least among those
 * with memory for the home's weights (plus the 3% headroom); CPU memory on a tie. -1 when none
 * holds them. */
int moira_home_choose(const moira_topology_t *topology, const moira_model_config_t *model,
                      double tokens);

/* Names `home` the plan's home and recomputes every layer's prediction with the home's time in
 * it (moira_plan_evaluate does the same for a plan that names one). */
void moira_plan_set_home(moira_plan_t *plan, const moira_topology_t *topology,
                         const moira_model_config_t *model, int home);

#endif
