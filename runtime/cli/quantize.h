/* `moira quantize`'s work on one checkpoint: which tensors become MXFP4 or INT8, the quantised
 * copies, and the weight error per layer. Private to runtime/cli/. */
#ifndef MOIRA_CLI_QUANTIZE_H
#define MOIRA_CLI_QUANTIZE_H

#include <stdio.h>

#include "runtime/safetensors.h"

/* Per decoder layer: the squared error and squared size of its quantised weights. */
typedef struct quantize_layer_error {
    double err2, ref2, max_abs;
    int matrices;
} quantize_layer_error_t;

/* A checkpoint's tensors as they will be written: views of the source, or quantised copies and
 * their scales. */
typedef struct quantized_checkpoint {
    moira_named_tensor_t *out; /* owned array; names borrowed from the source or `names` */
    size_t n_out;
    moira_tensor_t *owned; /* owned: quantised tensors and their scales */
    size_t n_owned;
    char **names; /* owned: the scale tensors' names */
    size_t n_names;
    quantize_layer_error_t *layers; /* owned: one per layer index seen (n_layers) */
    int n_layers;
    int n_quantized;   /* matrices, experts and projections */
    int n_projections; /* of them, dense projections */
    int n_kept;        /* projections the format cannot store, written as they were */
} quantized_checkpoint_t;

/* Whether `name` is a routed expert's projection (model.layers.N.mlp.experts.E.*_proj.weight). */
bool quantize_is_expert_weight(const char *name);

/* Whether `name` is a dense projection quantised without --experts-only (attention projections
 * but kv_b_proj, shared experts, a dense layer's MLP). */
bool quantize_is_projection_weight(const char *name);

/* Quantises every routed expert weight of `source` to `dtype` (MXFP4 or INT8), and unless
 * `experts_only` every dense projection the format can store, leaving the other tensors as they
 * are (a quantised weight's fp8 weight_scale_inv is dropped with it). `source` is borrowed
 * and must stay open while `out` is used. Errors name the tensor: a source that holds tensors
 * Moira does not read, or an expert row MXFP4 cannot hold (not a multiple of 32), is
 * INVALID_INPUT. Caller releases `out` with quantized_checkpoint_release. */
moira_status_t quantize_checkpoint(const moira_safetensors_t *source, moira_dtype_t dtype,
                                   bool experts_only, quantized_checkpoint_t *out);

void quantized_checkpoint_release(quantized_checkpoint_t *q);

#endif
