/* `moira quantize`'s work on one checkpoint: which tensors become MXFP4 or INT8 (the plan, made
 * without quantising anything), then the output written shard by shard with a few tensors
 * quantised at a time, and the weight error per layer. Private to runtime/cli/. */
#ifndef MOIRA_CLI_QUANTIZE_H
#define MOIRA_CLI_QUANTIZE_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/safetensors.h"
#include "runtime/threadpool.h"

/* Per decoder layer: the squared error and squared size of its quantised weights. */
typedef struct quantize_layer_error {
    double err2, ref2, max_abs;
    int matrices;
} quantize_layer_error_t;

typedef enum quantize_kind {
    QUANTIZE_AS_IS,  /* the source tensor, written as it is */
    QUANTIZE_WEIGHT, /* a quantised copy of `src`; its scales are the next entry */
    QUANTIZE_SCALE,  /* the scales of the entry before */
} quantize_kind_t;

/* One tensor of the output, in the order it is written. */
typedef struct quantize_entry {
    const char *name;          /* borrowed from the source, or from the plan's names */
    const moira_tensor_t *src; /* borrowed: the source tensor (for a scale: its weight's) */
    moira_tensor_t desc;       /* dtype and shape of what is written; data NULL */
    quantize_kind_t kind;
    int layer; /* decoder layer of a quantised weight, 0 for names without one */
} quantize_entry_t;

/* What a checkpoint becomes. */
typedef struct quantize_plan {
    quantize_entry_t *entries; /* owned */
    size_t n_entries;
    char **names; /* owned: the scale tensors' names */
    size_t n_names;
    int n_layers;      /* layer error slots needed: 1 + the largest layer of a quantised weight */
    int n_quantized;   /* matrices, experts and projections */
    int n_projections; /* of them, dense projections */
    int n_kept;        /* projections the format cannot store, written as they were */
} quantize_plan_t;

/* Whether `name` is a routed expert's projection (model.layers.N.mlp.experts.E.*_proj.weight). */
bool quantize_is_expert_weight(const char *name);

/* Whether `name` is a dense projection quantised without --experts-only (attention projections
 * but kv_b_proj, shared experts, a dense layer's MLP). */
bool quantize_is_projection_weight(const char *name);

/* Plans `source`'s tensors in `dtype` (MXFP4 or INT8): every routed expert weight, and unless
 * `experts_only` every dense projection the format can store, quantised; the other tensors as
 * they are (a quantised weight's fp8 weight_scale_inv is dropped with it). `source` is borrowed
 * and must stay open while the plan is used. Errors name the tensor: a source that holds tensors
 * Moira does not read, or an expert row MXFP4 cannot hold (not a multiple of 32), is
 * INVALID_INPUT. Caller releases `out` with quantize_plan_release. */
moira_status_t quantize_plan_make(const moira_safetensors_t *source, moira_dtype_t dtype,
                                  bool experts_only, quantize_plan_t *out);

void quantize_plan_release(quantize_plan_t *plan);

/* Writes the plan's tensors into the folder `dir`: model.safetensors when they fit in
 * `max_shard_bytes`, else shards model-0000I-of-0000N.safetensors of at most that much (a weight
 * and its scales never split; a larger tensor gets a shard of its own) and
 * model.safetensors.index.json. Weights are quantised a few at a time over `pool`'s threads and
 * freed once written, so memory holds only those; `errors` (plan->n_layers slots, zeroed by the
 * caller) gets each layer's weight error. */
moira_status_t quantize_write(const quantize_plan_t *plan, moira_dtype_t dtype, const char *dir,
                              uint64_t max_shard_bytes, moira_threadpool_t *pool,
                              quantize_layer_error_t *errors);

#endif
