/* `moira run`, in pieces: its arguments (cmd_run.c), where everything runs (run_place.c), the
 * model's weights, inputs and reference (run_model.c), and the summary it prints (run_report.c). */
#ifndef MOIRA_CLI_RUN_H
#define MOIRA_CLI_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "ops/random_weights.h"
#include "ops/weights.h"
#include "placement/plan.h"
#include "runtime/executor/executor.h"
#include "runtime/safetensors.h"

typedef struct run_args {
    const char *model, *weights, *backend, *inputs, *output;
    const char *topology, *plan, *record_profile;
    long long tokens, iters, seed;
    long long reserve_gib;     /* --reserve: GiB per device a plan made here leaves free */
    long long network_timeout; /* --network-timeout: seconds a rank waits for another (mpirun) */
    double home_cache_bytes;   /* latent caches the home keeps besides its weights (generate) */
    bool json;
    bool with_emulated; /* --with-emulated: plans made here may use emulated devices */
    bool data_parallel; /* --data-parallel: under mpirun every rank runs a batch of its own */
} run_args_t;

/* Where everything runs: the topology, the plan over it, the plan's targets bound to devices,
 * and each layer's home device. */
typedef struct run_placement {
    moira_topology_t topology;
    moira_plan_t plan;
    moira_exec_binding_t binding;
    moira_device_t *home;   /* borrowed: the home of every layer */
    moira_device_t **homes; /* owned array: `home` once per decoder layer */
    char source[160];       /* how the plan came about, for the summary */
} run_placement_t;

/* Refuses (INVALID_INPUT, exit 2, with the numbers) a placement whose host-memory devices (the
 * CPU ones and emulated ones) and home together need more than the host has available now, or
 * whose home device cannot hold its weights and `home_cache_bytes` of latent caches, so that a
 * model too large for this machine fails before reading a weight rather than minutes into
 * loading. */
moira_status_t run_check_host_memory(const run_placement_t *placement,
                                     const moira_model_config_t *model, double home_cache_bytes);

/* Decides where everything runs, before any weight is loaded:
 *   --backend D alone          every layer and every expert on D;
 *   --plan P                   P over --topology (default: this machine, discovered);
 *   otherwise                  a plan made here for a uniform load of `tokens` tokens over
 *                              --topology (default: this machine, discovered).
 * Homes are --backend, else cpu:0. A plan this machine cannot run is refused here (exit 2).
 * Caller frees *out with run_placement_free. */
moira_status_t run_place(const run_args_t *args, const moira_model_config_t *model, int64_t tokens,
                         run_placement_t *out);
void run_placement_free(run_placement_t *placement);

/* The executor's configuration for `weights` (one per decoder layer) of `model` where the
 * placement puts them, for batches of up to `max_tokens`; the rest of the fields zero. */
moira_exec_config_t run_exec_config(const moira_model_config_t *model,
                                    const moira_layer_weights_t *weights,
                                    const run_placement_t *placement, int64_t max_tokens);

/* The model on the host: its layers' weights (a checkpoint's, borrowed from the mapped file, or
 * seeded random ones), the batch and its positions, and the output. */
typedef struct run_model {
    moira_model_config_t config;
    moira_safetensors_t *checkpoint, *inputs_file; /* owned */
    int64_t n_layers;
    moira_layer_weights_t *layers;               /* owned array: point into checkpoint or random */
    moira_random_layer_t *random;                /* owned array when the weights are random */
    moira_tensor_t x, positions, out, reference; /* owned */
    moira_tensor_t *layer_inputs; /* owned array of n_layers [T, D]: each layer's input as run */
} run_model_t;

/* Refuses, before allocating anything, a model `moira run` cannot hold: GQA attention, or
 * weights larger than the host (random weights live there) or the home device. */
moira_status_t run_model_check_fits(const moira_model_config_t *model, const run_args_t *args,
                                    const moira_device_t *home);

/* The batch: --inputs' hidden_states, or `args->tokens` seeded random tokens; positions 0..T-1. */
moira_status_t run_model_load_inputs(run_model_t *model, const run_args_t *args);

/* Every layer's host weights, with a progress line on stderr while large ones load. */
moira_status_t run_model_load_weights(run_model_t *model, const run_args_t *args);

/* The fp64 reference of the whole model on the host, into model->reference. */
moira_status_t run_model_reference(run_model_t *model);

/* NMSE of `got` against `want` (same shapes, f32); NaN when either holds one. */
double run_model_nmse(const moira_tensor_t *got, const moira_tensor_t *want);

/* Every layer against the fp64 reference on the input the run gave it (layer_inputs): the
 * worst NMSE and its layer. Unlike the end-to-end comparison, a layer's error is not compounded
 * by the layers before it, nor by a near tie in a later router that rounding tipped the other
 * way (which DESIGN.md §4 allows). A layer over `limit` is measured again without the tokens
 * whose reference routing is a near tie within the limit's precision and that went wrong on their
 * own (such a token went to the other expert, as check allows too); *out_near_ties counts the
 * tokens so set aside in all layers. */
moira_status_t run_model_layer_check(const run_model_t *model, double limit, double *out_worst_nmse,
                                     int64_t *out_worst_layer, int *out_near_ties);

void run_model_release(run_model_t *model);

/* What an upload's progress line names: the verb printing it and the bytes expected in all. */
typedef struct run_progress_context {
    const char *verb; /* "run", "generate", ...; static */
    double total_bytes;
} run_progress_context_t;

/* A progress callback for weight uploads (moira_exec_progress_fn, moira_engine_progress_fn);
 * `context` is a run_progress_context_t. Prints to stderr only for large models. */
void run_progress(void *context, int64_t layers_done, int64_t layers, double bytes_uploaded);

/* The estimated bytes of every layer's weights. */
double run_model_weight_bytes(const moira_model_config_t *model);

/* What the run found, for the summary. */
typedef struct run_result {
    const run_args_t *args;
    const run_model_t *model;
    const run_placement_t *placement;
    const moira_exec_stats_t *stats;
    double load_s;
    double limit;             /* the least precise device's NMSE limit */
    const char *limit_device; /* the device whose precision set it */
    double layer_nmse;        /* the worst layer against the reference on its own input */
    int64_t worst_layer;
    int near_ties; /* tokens set aside as near ties in the layer check (run_model_layer_check) */
    double nmse;   /* the output against the end-to-end reference (informative) */
    bool agreed;   /* every layer and every device's check within their limits */
    int data_parallel_ranks; /* ranks that each ran a batch of their own (0: rank 0 alone) */
} run_result_t;

/* The readable summary: model, plan, the device table (experts held, tokens served, busy ms,
 * predicted ms), the layers and the reference check. */
void run_report_text(const run_result_t *result);

/* The same as JSON on stdout, for scripts. */
moira_status_t run_report_json(const run_result_t *result);

#endif
