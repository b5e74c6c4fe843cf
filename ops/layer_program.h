/* A decoder layer recorded once as a program (DESIGN.md §3): the list of op launches of the
 * layer, over a workspace laid out once for the largest batch, replayed for each batch with that
 * batch's sizes and no allocation.
 *
 * This file holds the decoder-layer recipe, the only one in Moira:
 *
 *   attention  normed = rmsnorm(x, input_layernorm); x += mla(normed);
 *              normed = rmsnorm(x, post_attention_layernorm)
 *   router     topk_idx, topk_weight = gate(normed)                       (MoE layers)
 *   experts    x += sum_j topk_weight[j] * expert_{topk_idx[j]}(normed)   (MoE layers)
 *   shared     x += shared_experts(normed), or x += mlp(normed) in a dense layer
 *
 * The residual stream x is updated in place. A single device replays every part; the executor
 * replays attention and router on a layer's home device, runs the experts part on the devices
 * holding them, and the shared part on the home again.
 *
 * Rows are tokens of one or more sequences. Attention is causal within a sequence: each sequence
 * either carries a latent cache (the absorbed form: its rows are appended at positions past ..
 * past+rows-1 and attend over the whole cache), or none (the naive form over its own rows).
 * Everything else runs over all rows at once. */
#ifndef MOIRA_OPS_LAYER_PROGRAM_H
#define MOIRA_OPS_LAYER_PROGRAM_H

#include <stdbool.h>
#include <stdint.h>

#include "ops/device_layer.h"

/* Parts of a layer, combined as a mask when replaying. */
enum {
    MOIRA_LAYER_ATTENTION = 1u << 0,
    MOIRA_LAYER_ROUTER = 1u << 1,
    MOIRA_LAYER_EXPERTS = 1u << 2,
    MOIRA_LAYER_SHARED = 1u << 3,
    MOIRA_LAYER_ALL = 0xfu,
};

/* What one program computes. */
typedef enum moira_program_kind {
    MOIRA_PROGRAM_DECODER_LAYER = 0, /* the recipe above, over `x` in place */
    MOIRA_PROGRAM_MLA,               /* y = beta * y + mla(x): the attention op alone */
    MOIRA_PROGRAM_MOE,               /* y = beta * y + moe(x): router, experts, shared experts */
} moira_program_kind_t;

/* The tensors a program is recorded against: f32 [max_tokens, D] activations and i32
 * [max_tokens] positions, all borrowed device tensors that outlive the program. Only the first
 * T rows are touched by a replay of T tokens. */
typedef struct moira_program_io {
    moira_dtensor_t x;         /* decoder layer: the residual stream; mla/moe: the input */
    moira_dtensor_t y;         /* mla/moe: the output (must not alias x); unused by a layer */
    moira_dtensor_t positions; /* i32 [max_tokens] */
    float beta;                /* mla/moe: y = beta * y + ... */
} moira_program_io_t;

/* One sequence of a batch: rows first_row .. first_row+rows-1. With a cache (c f32 [capacity,
 * kv_lora_rank], k_pe f32 [capacity, qk_rope_head_dim], borrowed), `past` rows of it are filled
 * and the sequence's positions must be past, past+1, ...; the replay fills the next `rows` rows.
 * Without one (cache_c.buffer NULL), attention sees only the sequence's own rows. */
typedef struct moira_program_sequence {
    int64_t first_row, rows;
    int64_t past;
    moira_dtensor_t cache_c, cache_pe;
} moira_program_sequence_t;

typedef struct moira_layer_program moira_layer_program_t;

/* Bytes of workspace a program of `kind` for layer `layer_index` needs at `max_tokens`. Programs
 * that run one after another on one queue may share one workspace. */
size_t moira_layer_program_workspace_bytes(const moira_model_config_t *config,
                                           moira_program_kind_t kind, int64_t layer_index,
                                           int64_t max_tokens);

/* The largest workspace any decoder layer of the model needs at `max_tokens`: what one
 * workspace shared by all of a device's layer programs must hold. */
size_t moira_layer_programs_workspace_bytes(const moira_model_config_t *config, int64_t max_tokens);

/* Records the launches of `kind` for decoder layer `layer_index` with weights `layer` (borrowed;
 * outlives the program) over `io` and the workspace at `workspace_offset` of `workspace`
 * (borrowed; at least moira_layer_program_workspace_bytes from there). Caller frees *out with
 * moira_layer_program_free. */
moira_status_t moira_layer_program_record(const moira_model_config_t *config,
                                          moira_program_kind_t kind, int64_t layer_index,
                                          const moira_device_layer_t *layer,
                                          const moira_program_io_t *io, moira_buffer_t *workspace,
                                          size_t workspace_offset, int64_t max_tokens,
                                          moira_layer_program_t **out);

void moira_layer_program_free(moira_layer_program_t *program);

/* Enqueues the launches of the parts in `parts` for `tokens` rows split into `n_sequences`
 * sequences (which must cover rows 0..tokens-1 in order). Allocates nothing and does not wait:
 * the caller finishes the queue once per step. */
moira_status_t moira_layer_program_replay(const moira_layer_program_t *program,
                                          moira_queue_t *queue, unsigned parts, int64_t tokens,
                                          const moira_program_sequence_t *sequences,
                                          int n_sequences);

/* The router's outputs and the post-attention activations for `tokens` rows, for the executor
 * to route them: normed f32 [T, D], topk_idx i32 [T, k], topk_weight f32 [T, k]. */
void moira_layer_program_routing(const moira_layer_program_t *program, int64_t tokens,
                                 moira_dtensor_t *normed, moira_dtensor_t *topk_idx,
                                 moira_dtensor_t *topk_weight);

/* The number of launches recorded (for tests and --verbose). */
int moira_layer_program_launches(const moira_layer_program_t *program);

#endif
