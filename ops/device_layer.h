/* One decoder layer's weights resident on one device, and the model-level ops composed from the
 * device ops of ops/op.h: gate, moe, mla (prefill and absorbed decode) and the decoder layer.
 *
 * Every weight of a layer lives in one device buffer. Routed experts are packed [E, I, D] so the
 * grouped FFN runs all of them in one launch; fp8 weights carry their block scales behind the
 * matrices. The composed ops run on one queue and return when the device is done, owning their
 * temporaries: each records the layer's program (ops/layer_program.h) once over a workspace of its
 * own and replays it; the executor and the engine keep their programs and replay them. */
#ifndef MOIRA_OPS_DEVICE_LAYER_H
#define MOIRA_OPS_DEVICE_LAYER_H

#include <stdbool.h>

#include "ops/op.h"
#include "ops/weights.h"
#include "runtime/model_config.h"

typedef struct moira_device_layer {
    moira_device_t *device; /* borrowed */
    moira_buffer_t *buffer; /* owned: every weight below is a window of it */
    bool has_norms, has_mla, has_moe, has_dense_mlp;
    moira_dtensor_t input_norm, post_norm;
    /* Attention. q_proj when q_lora_rank is null, else q_a_proj + q_a_norm + q_b_proj. */
    moira_dtensor_t q_proj, q_a_proj, q_a_norm, q_b_proj;
    moira_dtensor_t kv_a_proj, kv_a_norm, kv_b_proj, o_proj;
    /* MoE: router, packed routed experts, shared experts (NULL buffers when absent). */
    moira_dtensor_t gate, gate_bias;
    moira_dtensor_t experts_w1, experts_w3, experts_w2;
    moira_dtensor_t shared_w1, shared_w3, shared_w2;
    /* Dense SwiGLU MLP (layers below first_k_dense_replace). */
    moira_dtensor_t mlp_w1, mlp_w3, mlp_w2;
} moira_device_layer_t;

/* Copies a layer's host weights to `device`. Matrices keep their stored dtype unless
 * `weight_dtype` is a float type other than the stored one, in which case they are converted
 * (rounded to nearest even; fp8 gets fresh 128x128 block scales). Norm weights and biases become
 * f32. `host` is borrowed for the call. Caller releases `out_layer` with
 * moira_device_layer_release. */
moira_status_t moira_device_layer_upload(moira_device_t *device, moira_queue_t *queue,
                                         const moira_model_config_t *config,
                                         const moira_layer_weights_t *host, int weight_dtype,
                                         moira_device_layer_t *out_layer);

/* Pass as `weight_dtype` to keep every matrix in its stored dtype. */
#define MOIRA_WEIGHT_DTYPE_AS_STORED (-1)

void moira_device_layer_release(moira_device_layer_t *layer);

/* The latent cache of absorbed MLA decode: per position, c (kv_lora_rank) and the roped k_pe. */
typedef struct moira_mla_cache {
    moira_buffer_t *buffer; /* owned */
    moira_dtensor_t c;      /* f32 or bf16 [capacity, kv_lora_rank] */
    moira_dtensor_t k_pe;   /* the same dtype [capacity, qk_rope_head_dim] */
    int64_t capacity;
    int64_t length; /* positions 0 .. length-1 are filled */
} moira_mla_cache_t;

/* A cache of `dtype` (F32, or BF16 where moira_device_supports(device,
 * MOIRA_OP_MLA_DECODE_ATTENTION, MOIRA_DTYPE_BF16); ops/op.h). Caller releases it. */
moira_status_t moira_mla_cache_create(moira_device_t *device, const moira_model_config_t *config,
                                      int64_t capacity, moira_dtype_t dtype,
                                      moira_mla_cache_t *out_cache);
void moira_mla_cache_release(moira_mla_cache_t *cache);

/* Device bytes moira_mla_cache_create allocates for `capacity` positions of `dtype`. */
size_t moira_mla_cache_bytes(const moira_model_config_t *config, int64_t capacity,
                             moira_dtype_t dtype);

/* Positions first .. first+rows-1 of a cache as c and k_pe views: one sequence's slot of a cache
 * that several sequences share (the engine and the executor keep one per layer). */
void moira_mla_cache_window(const moira_mla_cache_t *cache, int64_t first, int64_t rows,
                            moira_dtensor_t *out_c, moira_dtensor_t *out_k_pe);

/* The gate's parameters from a model config. */
moira_gate_params_t moira_gate_params_from_config(const moira_model_config_t *config);

/* Routes x [T, D] (f32 device tensor): topk_idx i32 [T, k], topk_weight f32 [T, k], and when
 * `selection` is not NULL the biased, group-masked scores f32 [T, E]. Blocks until done. */
moira_status_t moira_gate_run(moira_queue_t *queue, const moira_model_config_t *config,
                              const moira_device_layer_t *layer, const moira_dtensor_t *x,
                              const moira_dtensor_t *topk_idx, const moira_dtensor_t *topk_weight,
                              const moira_dtensor_t *selection);

/* y = beta * y + moe(x): gate, dispatch, grouped FFN, combine, shared experts. Blocks. */
moira_status_t moira_moe_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *y, float beta);

/* y = beta * y + mla(x) for tokens at `positions` (i32 [T]). With `cache` NULL: the naive prefill
 * form over these T tokens alone. With a cache: the absorbed form, appending the tokens' latents
 * at cache positions length .. length+T-1 (positions must be those) and attending over the whole
 * cache. Blocks until done. */
moira_status_t moira_mla_run(moira_queue_t *queue, const moira_model_config_t *config,
                             const moira_device_layer_t *layer, const moira_dtensor_t *x,
                             const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                             const moira_dtensor_t *y, float beta);

/* out = decoder_layer(x) (DESIGN.md §4): attention as moira_mla_run (cache may be NULL), then MoE
 * or the dense MLP by the layer index. `out` must not alias x. Blocks until done. */
moira_status_t moira_layer_run(moira_queue_t *queue, const moira_model_config_t *config,
                               int64_t layer_index, const moira_device_layer_t *layer,
                               const moira_dtensor_t *x, const moira_dtensor_t *positions,
                               moira_mla_cache_t *cache, const moira_dtensor_t *out);

/* Runs tokens one at a time through `cache` (absorbed decode), as serving does: the attention
 * alone (`whole_layer` false: out = mla(x)) or the whole decoder layer. Token i of x [T, D] goes
 * at positions[i], which must continue the cache (cache->length, +1, ...). Blocks. */
moira_status_t moira_decode_tokens(moira_queue_t *queue, const moira_model_config_t *config,
                                   int64_t layer_index, const moira_device_layer_t *layer,
                                   bool whole_layer, const moira_dtensor_t *x,
                                   const moira_dtensor_t *positions, moira_mla_cache_t *cache,
                                   const moira_dtensor_t *out);

/* A contiguous 2-D f32 or i32 view of `buffer` at `offset`. */
moira_dtensor_t moira_dtensor_2d(moira_buffer_t *buffer, size_t offset, moira_dtype_t dtype,
                                 int64_t rows, int64_t cols);

#endif
