/* The fp64 whole-model reference the generation tests compare the engine with (DESIGN.md §7): a
 * Hugging Face DeepSeek checkpoint directory run through ops/reference.h alone, with no engine, no
 * executor and no device code, so that a bug there cannot hide in both sides of a comparison.
 *
 * model: x = embed_tokens[ids] (widened to f32); every decoder layer 0..num_hidden_layers-1 by
 * moira_ref_layer in its naive (prefill) form over the whole sequence at positions 0..n-1;
 * rmsnorm(x, model.norm); logits = lm_head x for the last position, accumulated in double. The
 * checkpoint's MTP layers (indices num_hidden_layers..) are never read. */
#ifndef MOIRA_TESTS_TOOLS_REFERENCE_MODEL_H
#define MOIRA_TESTS_TOOLS_REFERENCE_MODEL_H

#include <stdint.h>

#include "ops/weights.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

/* An opened checkpoint. Owns `file` and `layers`; the tensor pointers are views into `file`. */
typedef struct moira_ref_model {
    moira_model_config_t config;
    moira_safetensors_t *file;     /* owned */
    moira_layer_weights_t *layers; /* owned; config.num_hidden_layers entries */
    const moira_tensor_t *embed;   /* borrowed from file; [vocab, D] */
    const moira_tensor_t *norm;    /* borrowed from file; [D] */
    const moira_tensor_t *lm_head; /* borrowed from file; [vocab, D] */
    int64_t vocab;                 /* rows of embed and lm_head */
    int64_t eos_token_id;          /* config.json's eos_token_id (the first of a list); -1 */
} moira_ref_model_t;

/* What one greedy step chose. */
typedef struct moira_ref_step {
    int32_t id;    /* argmax of the logits, the lower id on a tie */
    double gap;    /* top-1 logit minus top-2 logit */
    double sum_sq; /* sum of the logits' squares: the denominator of an NMSE against them */
} moira_ref_step_t;

/* Opens the checkpoint in `dir` (borrowed): config.json through moira_model_config_load, the
 * weights through moira_safetensors_open (index and shards, or one file) and
 * moira_layer_weights_find for every decoder layer, plus model.embed_tokens.weight,
 * model.norm.weight and lm_head.weight, shapes checked. Errors name the file or tensor. On error
 * `*out_model` holds nothing to close. */
moira_status_t moira_ref_model_open(const char *dir, moira_ref_model_t *out_model);

/* Releases everything open made. Accepts a zeroed struct. */
void moira_ref_model_close(moira_ref_model_t *model);

/* The logits of the last of the `n` tokens `ids` (each < vocab): `out_logits` (caller's, vocab
 * doubles) is overwritten, and when `out_hidden` is not NULL (caller's, hidden_size floats) it
 * receives that position's final normed hidden state, the input of lm_head. INVALID_ARGUMENT for
 * an id out of range or n < 1. */
moira_status_t moira_ref_model_logits(const moira_ref_model_t *model, const int32_t *ids, int64_t n,
                                      double *out_logits, float *out_hidden);

/* The greedy choice of a logit vector of `vocab` entries (at least 2). */
moira_ref_step_t moira_ref_greedy(const double *logits, int64_t vocab);

/* How far the chosen token is from being overtaken: the smallest relative error of the final
 * hidden state x (|dx| / |x|) that can make lm_head rank another token v at least as high as
 * `top`, min over v of (logit[top] - logit[v]) / (|w_top - w_v| |x|). An engine whose hidden
 * state is closer than this to the reference's picks the same token, so a step where an engine
 * of known precision differs is excusable only when its margin is below that precision (bf16
 * activations ~4e-3, f32 ~1e-6). `logits` and `hidden` are what moira_ref_model_logits gave.
 * Errors: OUT_OF_MEMORY. */
moira_status_t moira_ref_model_margin(const moira_ref_model_t *model, const double *logits,
                                      const float *hidden, int32_t top, double *out_margin);

#endif
