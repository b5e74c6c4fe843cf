/* The generation engine: a whole DeepSeek-style model on one device, stepping sequences of
 * tokens to next-token logits.
 *
 * A step takes new tokens of up to max_sequences sequences together (a prompt's chunk of one, or
 * one token of each decoding sequence, or a mix): the embedding rows are gathered on the host,
 * every decoder layer's recorded program replays on the device (each sequence appending to its own
 * per-layer latent cache), and the final norm and lm_head run on the last row of each sequence.
 * The device is waited for once per step. Everything a step touches is allocated when the engine
 * is created, so a step allocates no host or device memory. */
#ifndef MOIRA_RUNTIME_ENGINE_ENGINE_H
#define MOIRA_RUNTIME_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/device.h"
#include "runtime/engine/model_files.h"
#include "runtime/executor/executor.h"

typedef struct moira_engine moira_engine_t;

/* Called while weights upload: layers done of all, bytes uploaded so far. */
typedef void (*moira_engine_progress_fn)(void *context, int64_t done, int64_t of, double bytes);

/* Where a plan puts the model (the executor's inputs, all borrowed; they outlive the engine):
 * each layer's attention, router and shared experts on its home device, the routed experts on the
 * devices the plan names. */
typedef struct moira_engine_placement {
    const moira_topology_t *topology;
    const moira_plan_t *plan;
    const moira_exec_binding_t *binding;
    moira_device_t *const *homes; /* one per decoder layer */
} moira_engine_placement_t;

typedef struct moira_engine_options {
    int64_t max_rows;  /* tokens in one step; prompts are prefilled in chunks of this (256) */
    int max_sequences; /* sequences stepped together (8) */
    int64_t context;   /* tokens one sequence may hold (max_position_embeddings, at most 4096) */
    /* The latent caches' dtype: MOIRA_DTYPE_F32 (the default, 0) or MOIRA_DTYPE_BF16, which halves
     * them and the bytes decode attention reads, at bf16's precision limit. A device (every home
     * device, with a placement) must keep such caches (moira_device_supports for
     * MOIRA_OP_MLA_DECODE_ATTENTION), else the engine is refused as UNSUPPORTED. */
    moira_dtype_t cache_dtype;
    moira_engine_progress_fn progress; /* optional */
    void *progress_context;
    /* Optional: run the layers where a plan puts them; the device given to moira_engine_create
     * then holds only the final norm and lm_head. NULL: everything on that device. */
    const moira_engine_placement_t *placement;
    /* Count the tokens routed to each expert of each MoE layer, every step
     * (moira_engine_expert_load); costs a read of each MoE layer's routing per step. */
    bool record_expert_load;
} moira_engine_options_t;

/* New tokens of one sequence for a step: ids[0..n) continue what it holds. */
typedef struct moira_engine_input {
    int sequence;       /* 0 .. max_sequences-1; each at most once per step */
    const int32_t *ids; /* borrowed for the call */
    int64_t n;
} moira_engine_input_t;

/* Uploads the model's weights to `device` (borrowed; outlives the engine) and lays out its caches
 * and workspaces. Refuses, before anything is uploaded, a model that does not fit the device's
 * memory (INVALID_INPUT with the numbers). `model` is borrowed and must outlive the engine.
 * `options` may be NULL for the defaults. Caller destroys *out. */
moira_status_t moira_engine_create(const moira_model_files_t *model, moira_device_t *device,
                                   const moira_engine_options_t *options, moira_engine_t **out);

void moira_engine_destroy(moira_engine_t *engine);

/* Runs the inputs' tokens through the model and returns the next-token logits of each input's
 * sequence, f32 [n_inputs, vocab] in input order, borrowed until the next step. Blocks. */
moira_status_t moira_engine_step(moira_engine_t *engine, const moira_engine_input_t *inputs,
                                 int n_inputs, const float **out_logits);

/* Empties a sequence's caches so it can start again. */
void moira_engine_reset(moira_engine_t *engine, int sequence);

/* Keeps only the first `length` tokens of a sequence (an earlier turn's prefix that a new
 * prompt repeats); the rest of its cache is overwritten by later steps. */
void moira_engine_truncate(moira_engine_t *engine, int sequence, int64_t length);

/* Tokens the sequence holds. */
int64_t moira_engine_length(const moira_engine_t *engine, int sequence);

/* The options in effect (defaults filled in). */
const moira_engine_options_t *moira_engine_options(const moira_engine_t *engine);

int64_t moira_engine_vocab(const moira_engine_t *engine);

/* Tokens routed to each expert since the engine was created: [num_hidden_layers, n_routed_experts]
 * row-major (dense layers' rows stay 0), borrowed; NULL unless record_expert_load was set.
 * Read it between steps. With a placement the executor's routing is counted (each assignment to
 * an expert, as `moira run --record-profile` records it). */
const double *moira_engine_expert_load(const moira_engine_t *engine);

/* With a placement, the executor's measurements summed over every step (each expert device's busy
 * time among them), borrowed; NULL on one device. Read it between steps. */
const moira_exec_stats_t *moira_engine_placement_stats(const moira_engine_t *engine);

/* Across hosts (mpirun, one rank per host; runtime/executor/executor.h): rank 0 leads and
 * generates; on any other rank the engine only serves its host's experts, in
 * moira_engine_follow, until rank 0's engine is destroyed. Leads is true in one process. */
bool moira_engine_leads(const moira_engine_t *engine);

/* The context a sequence gets: `requested` when positive, else the model's
 * max_position_embeddings, at most 4096. */
int64_t moira_engine_context(const moira_model_config_t *config, int64_t requested);
moira_status_t moira_engine_follow(moira_engine_t *engine);

/* On rank 0, once it has no more steps to run: releases the other ranks and brings their
 * devices' figures into moira_engine_placement_stats (moira_executor_release). Destroying the
 * engine does it too. */
void moira_engine_release(moira_engine_t *engine);

#endif
