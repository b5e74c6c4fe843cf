/* The reference implementations: DESIGN.md §4's math written as plainly as possible on host
 * tensors, single-threaded, every dot product and softmax accumulated in double. Every backend is
 * compared against these, so they favour being obviously right over being fast.
 *
 * Conventions for every function here:
 * - Activations (`x`, `out`) are contiguous F32 tensors [T, N]; `out` is allocated by the caller
 *   with exactly the expected shape and is overwritten. `out` may be the same tensor as `x`.
 * - Weights are borrowed and may be F32, F16, BF16 or F8_E4M3 (with block scales); they are read
 *   row by row through moira_tensor_row_to_f32. Norm weights and biases may be any float type.
 * - `positions` is I32 [T], or NULL for 0..T-1. Attention is causal on positions: key s is
 *   visible to query t when positions[s] <= positions[t].
 * - rmsnorm eps is the config's rms_norm_eps for every norm (input, post-attention, q_a, kv_a).
 * - Wrong shapes, dtypes or config values are INVALID_ARGUMENT naming the function and operand;
 *   nothing is written to the outputs then. Temporaries are freed on every path. */
#ifndef MOIRA_OPS_REFERENCE_H
#define MOIRA_OPS_REFERENCE_H

#include <stdbool.h>
#include <stdint.h>

#include "ops/weights.h"
#include "runtime/model_config.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

/* y = x * rsqrt(mean(x^2) + eps) * w, per row. x f32 [T, N], weight [N], out f32 [T, N]. */
moira_status_t moira_ref_rmsnorm(const moira_tensor_t *x, const moira_tensor_t *weight, double eps,
                                 moira_tensor_t *out);

/* The router of DESIGN.md §4, with the config's scoring_func, n_group, topk_group,
 * norm_topk_prob, routed_scaling_factor and capacity_factor. x f32 [T, D], gate_weight [E, D],
 * bias [E] or NULL. Writes out_topk_idx I32 [T, k] (descending selection score, ties to the
 * lower index; -1 for assignments dropped by the capacity factor), out_topk_weight F32 [T, k]
 * (0 where dropped; the others are not renormalised) and, when not NULL, out_selection F32 [T, E]
 * (the biased scores with -inf for experts of groups not kept). */
moira_status_t moira_ref_gate(const moira_model_config_t *config, const moira_tensor_t *x,
                              const moira_tensor_t *gate_weight, const moira_tensor_t *bias,
                              moira_tensor_t *out_topk_idx, moira_tensor_t *out_topk_weight,
                              moira_tensor_t *out_selection);

/* A dense SwiGLU MLP: out = W2 (silu(W1 x) * (W3 x)). The intermediate size is the weights'.
 * x f32 [T, D], out f32 [T, D]. */
moira_status_t moira_ref_mlp(const moira_mlp_weights_t *weights, const moira_tensor_t *x,
                             moira_tensor_t *out);

/* An MoE block: gate (with the block's correction bias), every assignment through its expert's
 * SwiGLU FFN, combined with the routing weights, plus the shared experts when the config has them.
 * Weights are checked with moira_moe_weights_check. x f32 [T, D], out f32 [T, D]. */
moira_status_t moira_ref_moe(const moira_model_config_t *config, const moira_moe_weights_t *weights,
                             const moira_tensor_t *x, moira_tensor_t *out);

/* MLA in its naive (prefill) form: per-head k_nope and v expanded from the latent through
 * kv_b_proj, RoPE (with YaRN) on q_pe and k_pe, causal softmax attention, o_proj. No residual and
 * no input norm: x is the already normalised input. x f32 [T, D], out f32 [T, D]. */
moira_status_t moira_ref_mla(const moira_model_config_t *config, const moira_mla_weights_t *weights,
                             const moira_tensor_t *x, const moira_tensor_t *positions,
                             moira_tensor_t *out);

/* MLA in its absorbed (decode) form: tokens one at a time, the cache holding only each token's
 * normalised latent c (kv_lora_rank) and roped k_pe (qk_rope_head_dim); kv_b_proj's k part is
 * folded into the query and its v part applied to the attention's latent output. Same operands
 * and result as moira_ref_mla (for non-decreasing positions, the order a decoder sees tokens). */
moira_status_t moira_ref_mla_absorbed(const moira_model_config_t *config,
                                      const moira_mla_weights_t *weights, const moira_tensor_t *x,
                                      const moira_tensor_t *positions, moira_tensor_t *out);

/* One decoder layer: h = x + mla(rmsnorm(x, input_layernorm));
 * out = h + moe(rmsnorm(h, post_attention_layernorm)), or the dense MLP when `layer` is below
 * first_k_dense_replace (weights->is_moe must agree with the config). `absorbed` picks the MLA
 * form. x f32 [T, D], out f32 [T, D]. */
moira_status_t moira_ref_layer(const moira_model_config_t *config, int64_t layer,
                               const moira_layer_weights_t *weights, const moira_tensor_t *x,
                               const moira_tensor_t *positions, moira_tensor_t *out, bool absorbed);

/* Marks in tie[T] the tokens whose routing in this MoE layer is a near tie in the reference:
 * DESIGN.md §4's top-k rule (the k-th and next selection scores, or the kept and next group's,
 * closer than `window` relative) on the router input the reference computes itself from x. A
 * device that computes attention in a narrower type may route such a token to the other expert,
 * a legitimate result that changes the token's output wholesale. All false for a dense layer.
 * x f32 [T, D], positions I32 [T] (as moira_ref_layer takes them). */
moira_status_t moira_ref_layer_near_ties(const moira_model_config_t *config,
                                         const moira_layer_weights_t *weights,
                                         const moira_tensor_t *x, const moira_tensor_t *positions,
                                         float window, bool *tie);

/* The NMSE of got against ref ([rows, cols] f32) without the rows that are near ties and over
 * `limit` on their own; *out_excluded counts those rows. */
double moira_nmse_without_ties(const float *got, const float *ref, int64_t rows, int64_t cols,
                               const bool *tie, double limit, int *out_excluded);

#endif
