/* Expert load profiles (DESIGN.md §5): tokens routed to each expert of each MoE layer for one
 * batch. Read from YAML (validated with file:line:col) or synthesised (uniform or Zipf skew). */
#ifndef MOIRA_PLACEMENT_PROFILE_H
#define MOIRA_PLACEMENT_PROFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/model_config.h"
#include "runtime/status.h"

/* The largest token count a profile or plan may give one expert: far beyond any batch, small
 * enough that sums of counts stay exact in a double. */
#define MOIRA_MAX_TOKEN_COUNT 1e15

#define MOIRA_PROFILE_DEVICE_NAME_MAX 96

/* How fast one device ran the recorded batch: its busy time next to what the cost model
 * predicted for the same load, per batch. A plain value. */
typedef struct moira_profile_speed {
    char device[MOIRA_PROFILE_DEVICE_NAME_MAX]; /* a topology target's name */
    double busy_us, predicted_us;               /* both > 0 */
} moira_profile_speed_t;

/* Owns its arrays; release with moira_profile_free. */
typedef struct moira_profile {
    int64_t experts; /* loads per layer */
    int n_layers;
    int64_t *layers; /* owned: the model layer index of each profiled layer, ascending */
    double *load;    /* owned: n_layers x experts, row-major */
    int n_speeds;
    moira_profile_speed_t *speeds; /* owned: measured speeds (`speeds:`), NULL when none */
} moira_profile_t;

/* Appends a device's measured speed (a recorded run's). INVALID_ARGUMENT unless both times are
 * positive; the name is cut to fit. */
moira_status_t moira_profile_add_speed(moira_profile_t *profile, const char *device, double busy_us,
                                       double predicted_us);

/* Reads a profile and checks it against `model`: `model` (optional) names it, `experts` equals
 * n_routed_experts, every layer is an MoE layer of the model and appears once, each load list has
 * one non-negative count per expert; optional `speeds:` lists {device, busy_us, predicted_us}
 * (both positive), how fast each device ran the recorded batch. MoE layers the file leaves out get
 * the mean load of the layers it gives, so a profile of a few layers still plans a whole model.
 * Caller owns *out. Errors: NOT_FOUND, IO, INVALID_INPUT at file:line:col. */
moira_status_t moira_profile_load(const char *path, const moira_model_config_t *model,
                                  moira_profile_t *out);

/* As moira_profile_load, from text in memory. */
moira_status_t moira_profile_parse(const char *text, size_t len, const char *display_name,
                                   const moira_model_config_t *model, moira_profile_t *out);

/* Synthesises a profile for every MoE layer of `model` from a skew: "uniform" (every expert gets
 * tokens*k/E) or "zipf:S" (the expert of rank r gets a share proportional to 1/r^S; which expert
 * has which rank is a fixed pseudo-random permutation per layer, so hot experts differ between
 * layers). Loads are expected loads (fractions allowed: a 1-token batch over 256 experts with
 * k = 8 expects 1/32 token at each) summing to tokens*k per layer, none above `tokens` (a token
 * routes to an expert once): an expert the skew would give more gets the batch and the rest is
 * shared by the others in the skew's proportions. Deterministic. Errors: INVALID_ARGUMENT for an
 * unknown skew, S outside [0, 10], or a model with k above its expert count. Caller owns *out. */
moira_status_t moira_profile_synthesise(const moira_model_config_t *model, const char *skew,
                                        int64_t tokens, moira_profile_t *out);

/* The loads of model layer `layer`, or NULL when the profile has none. Borrowed. */
const double *moira_profile_layer_load(const moira_profile_t *profile, int64_t layer);

/* Writes `profile` as YAML (DESIGN.md §5) naming `model_name` (may be NULL), whole or not at all
 * (temporary file and rename); what `moira run --record-profile` records and `moira plan
 * --profile` reads back. Counts are written as whole numbers when they are. */
moira_status_t moira_profile_write(const moira_profile_t *profile, const char *model_name,
                                   const char *path);

/* The same YAML written into `out` (borrowed; typically an output of runtime/atomic_file that
 * the caller commits together with others); `path` only names the file in messages. */
moira_status_t moira_profile_write_stream(const moira_profile_t *profile, const char *model_name,
                                          const char *path, FILE *out);

void moira_profile_free(moira_profile_t *profile);

/* A profile of counts kept per model layer: `totals` [num_hidden_layers, n_routed_experts]
 * row-major (what the engine and the executor count), its MoE layers' rows. Caller frees *out. */
moira_status_t moira_profile_from_totals(const moira_model_config_t *model, const double *totals,
                                         moira_profile_t *out);

#endif
