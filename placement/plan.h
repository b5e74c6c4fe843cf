/* Placement plans: where every expert replica of every MoE layer lives (DESIGN.md §5).
 *
 * A plan refers to its topology's targets by index in memory and by name in files. Plans are made
 * by the planner (planner.c), written and read as YAML or JSON with the same structure
 * (plan_io.c), validated against a topology when loaded, and drawn as SVG (plan_svg.c). */
#ifndef MOIRA_PLACEMENT_PLAN_H
#define MOIRA_PLACEMENT_PLAN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "placement/cost_model.h"
#include "placement/profile.h"
#include "placement/topology.h"
#include "runtime/atomic_file.h"
#include "runtime/model_config.h"

/* One MoE layer. Replicas are ordered by target index, then as placed. Arrays are owned. */
typedef struct moira_plan_layer {
    int64_t layer; /* the model's layer index */
    int n_replicas;
    int *replica_target;     /* owned: topology target index */
    int32_t *replica_expert; /* owned: logical expert */
    double *replica_load;    /* owned: tokens this replica receives */
    moira_layer_cost_t cost; /* what the cost model predicts (zeros when unknown) */
} moira_plan_layer_t;

/* A whole plan. Owns its layers; release with moira_plan_free. */
typedef struct moira_plan {
    char topology[MOIRA_TOPOLOGY_NAME_MAX];
    char model[MOIRA_MODEL_CONFIG_NAME_MAX];
    char home[MOIRA_TARGET_NAME_MAX]; /* the device of attention and the rest; "" when not named */
    int64_t experts;                  /* logical experts per layer */
    int64_t expert_bytes;             /* one replica's weights */
    int64_t slots;                    /* replicas per target per layer; 0 = only memory limits */
    int64_t redundant;                /* extra replicas per layer the planner was allowed */
    int n_layers;
    moira_plan_layer_t *layers; /* owned */
} moira_plan_t;

/* How to place. BALANCED is Moira's planner; the other two are the naive baselines tests and
 * benchmarks compare it with. */
typedef enum moira_plan_strategy {
    MOIRA_PLAN_BALANCED = 0,
    MOIRA_PLAN_ALL_CPU,      /* one replica per expert, spread over CPU NUMA memory */
    MOIRA_PLAN_FILL_FASTEST, /* one replica per expert, in expert order, fastest target first */
} moira_plan_strategy_t;

typedef struct moira_plan_options {
    int64_t redundant; /* extra replicas per layer (--redundant) */
    int64_t slots;     /* cap on replicas per target per layer (--slots); 0 = none */
    moira_plan_strategy_t strategy;
} moira_plan_options_t;

/* Plans every MoE layer of `model` on `topology` for the loads in `profile`. For each layer it
 * gives hot experts redundant replicas (kept only where they lower the prediction, so a larger
 * --redundant never predicts slower), places replicas to minimise the predicted layer time
 * (cost_model.h), and across hosts also tries keeping expert groups on one host (as EPLB's
 * hierarchical policy does), keeping whichever predicts faster. Memory and slots are hard caps.
 * Deterministic. All inputs are borrowed; caller owns *out. Errors: INVALID_INPUT when the
 * experts do not fit (bad input, exit 2), INVALID_ARGUMENT for options that make no sense. */
moira_status_t moira_plan_make(const moira_topology_t *topology, const moira_model_config_t *model,
                               const moira_profile_t *profile, const moira_plan_options_t *options,
                               moira_plan_t *out);

/* Gives the plan's replicas the loads of `profile` (borrowed): each expert's load split over its
 * replicas in the shares they had, evenly when they had none. For scoring a plan against a new
 * load; call moira_plan_evaluate after. Errors: INVALID_ARGUMENT when the profile has another
 * expert count or lacks one of the plan's layers. */
moira_status_t moira_plan_apply_profile(moira_plan_t *plan, const moira_profile_t *profile);

/* Whether any replica of the plan receives tokens (a hand-written plan may give no loads). */
bool moira_plan_has_load(const moira_plan_t *plan);

/* Recomputes every layer's cost from its replicas (after loading a hand-written plan). */
void moira_plan_evaluate(moira_plan_t *plan, const moira_topology_t *topology,
                         const moira_model_config_t *model);

/* Replicas a target may hold per layer: its memory less its reserve over (MoE layers x expert
 * bytes), capped by `slots` when positive. */
int64_t moira_plan_target_capacity(const moira_target_t *target, int64_t moe_layers,
                                   int64_t expert_bytes, int64_t slots);

/* Plan-wide figures: means over layers of max_over_mean and predicted time, and per-token link
 * and network bytes for one pass through all MoE layers. */
typedef struct moira_plan_summary {
    double replicas_per_layer; /* experts plus the redundant replicas the planner chose to use */
    double max_over_mean;
    double predicted_us_per_layer;
    double link_bytes_per_token;
    double network_bytes_per_token;
} moira_plan_summary_t;

void moira_plan_summarise(const moira_plan_t *plan, moira_plan_summary_t *out);

/* Bytes of expert weights a target holds over all layers. */
int64_t moira_plan_target_used_bytes(const moira_plan_t *plan, int target);

/* Checks a plan against its topology: names match, every expert of every layer has a replica,
 * no target holds more than its memory (or than `slots` per layer). Used after loading and as
 * a self-check after planning. `path` locates messages (may be NULL). */
moira_status_t moira_plan_validate(const moira_plan_t *plan, const moira_topology_t *topology,
                                   const char *path);

/* Checks a loaded plan against the model it is to run: the same number of experts and expert
 * bytes, and exactly the model's MoE layers. `path` names the plan in messages. */
moira_status_t moira_plan_check_model(const moira_plan_t *plan, const moira_model_config_t *model,
                                      const char *path);

/* Writes a plan as YAML (libyaml's emitter) or JSON, whole or not at all (temporary file and
 * rename). `path` "-" writes to stdout. */
moira_status_t moira_plan_write(const moira_plan_t *plan, const moira_topology_t *topology,
                                const char *path, bool json);

/* Writes a plan to an open stream. */
moira_status_t moira_plan_write_stream(const moira_plan_t *plan, const moira_topology_t *topology,
                                       FILE *out, bool json);

/* Reads a plan (YAML or JSON) and validates it against `topology`. `model` (borrowed, may be
 * NULL) gives the expert count and size when the file leaves them out, as hand-written plans
 * may (DESIGN §5); without it the file must give them. Caller owns *out. Errors: NOT_FOUND, IO,
 * INVALID_INPUT at file:line:col. */
moira_status_t moira_plan_load_for_model(const char *path, const moira_topology_t *topology,
                                         const moira_model_config_t *model, moira_plan_t *out);

/* As moira_plan_load_for_model, from text in memory. */
moira_status_t moira_plan_parse_for_model(const char *text, size_t len, const char *display_name,
                                          const moira_topology_t *topology,
                                          const moira_model_config_t *model, moira_plan_t *out);

/* moira_plan_load_for_model without a model: the file gives the expert count and size. */
moira_status_t moira_plan_load(const char *path, const moira_topology_t *topology,
                               moira_plan_t *out);

/* As moira_plan_load, from text in memory. */
moira_status_t moira_plan_parse(const char *text, size_t len, const char *display_name,
                                const moira_topology_t *topology, moira_plan_t *out);

/* Draws the plan: targets as columns, layers as rows, cells shaded by each target's predicted
 * time in that layer (the busiest target of the plan is darkest) and labelled with replica
 * counts, memory bars on top. Written whole or not at all. */
moira_status_t moira_plan_write_svg(const moira_plan_t *plan, const moira_topology_t *topology,
                                    const moira_model_config_t *model, const char *path);

/* Draws the plan into an open stream (for writing it together with other outputs). */
moira_status_t moira_plan_write_svg_stream(const moira_plan_t *plan,
                                           const moira_topology_t *topology,
                                           const moira_model_config_t *model, FILE *out);

void moira_plan_free(moira_plan_t *plan);

#endif
