/* Host-side weight sets: one decoder layer's tensors, found by their Hugging Face DeepSeek names.
 *
 * Every tensor pointer here is borrowed: it points at a view the safetensors file owns (or at a
 * tensor the caller built), valid while that file is open. The loader checks each shape against
 * the model config once, so the reference kernels and the device ops can trust what they get.
 * Weight matrices may be F32, F16, BF16, F8_E4M3, MXFP4 or INT8 (scales attached by the reader;
 * runtime/weight_format.h); norm weights and the correction bias may be any float type.
 *
 * Shapes, with D hidden_size, H num_attention_heads, E n_routed_experts, I moe_intermediate_size:
 *   q_proj [H*(nope+rope), D]            (q_lora_rank == 0)
 *   q_a_proj [q_lora_rank, D], q_a_layernorm [q_lora_rank], q_b_proj [H*(nope+rope), q_lora_rank]
 *   kv_a_proj_with_mqa [kv_lora_rank + rope, D], kv_a_layernorm [kv_lora_rank]
 *   kv_b_proj [H*(nope+v), kv_lora_rank], o_proj [D, H*v]
 *   gate [E, D], e_score_correction_bias [E], experts: gate_proj/up_proj [I, D], down_proj [D, I]
 *   shared experts: gate_proj/up_proj [I*n_shared, D], down_proj [D, I*n_shared]
 *   dense MLP: gate_proj/up_proj [intermediate_size, D], down_proj [D, intermediate_size] */
#ifndef MOIRA_OPS_WEIGHTS_H
#define MOIRA_OPS_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"
#include "runtime/tensor.h"

/* Multi-head latent attention (DESIGN.md §4, mla). Either q_proj, or q_a_proj + q_a_layernorm +
 * q_b_proj, is set, as the config's q_lora_rank says; the other stays NULL. */
typedef struct moira_mla_weights {
    const moira_tensor_t *q_proj;             /* borrowed; NULL with q_lora */
    const moira_tensor_t *q_a_proj;           /* borrowed; NULL without q_lora */
    const moira_tensor_t *q_a_layernorm;      /* borrowed; NULL without q_lora */
    const moira_tensor_t *q_b_proj;           /* borrowed; NULL without q_lora */
    const moira_tensor_t *kv_a_proj_with_mqa; /* borrowed */
    const moira_tensor_t *kv_a_layernorm;     /* borrowed */
    const moira_tensor_t *kv_b_proj;          /* borrowed */
    const moira_tensor_t *o_proj;             /* borrowed */
} moira_mla_weights_t;

/* One SwiGLU MLP: a dense layer's mlp, or the shared experts of an MoE layer. */
typedef struct moira_mlp_weights {
    const moira_tensor_t *gate_proj; /* borrowed; W1 [I, D] */
    const moira_tensor_t *up_proj;   /* borrowed; W3 [I, D] */
    const moira_tensor_t *down_proj; /* borrowed; W2 [D, I] */
} moira_mlp_weights_t;

/* An MoE block. The three expert arrays hold n_experts borrowed pointers each, expert e at index
 * e. The arrays themselves are owned by this struct when `owns_arrays` is set (the loader sets
 * it; moira_layer_weights_free frees them); a caller that builds the struct by hand may point
 * them at its own arrays and leave `owns_arrays` false. */
typedef struct moira_moe_weights {
    const moira_tensor_t *gate;                    /* borrowed; router W_g [E, D] */
    const moira_tensor_t *e_score_correction_bias; /* borrowed; [E], or NULL when absent */
    int64_t n_experts;                             /* E: length of each expert array */
    const moira_tensor_t **expert_gate_proj;       /* E borrowed pointers */
    const moira_tensor_t **expert_up_proj;         /* E borrowed pointers */
    const moira_tensor_t **expert_down_proj;       /* E borrowed pointers */
    bool owns_arrays;                              /* the three arrays were malloc'ed for us */
    moira_mlp_weights_t shared; /* all NULL when the config has no shared experts */
} moira_moe_weights_t;

/* One decoder layer. `is_moe` says which of `moe` and `mlp` is in use for this layer
 * (moira_model_config_is_moe_layer); the other stays zeroed. */
typedef struct moira_layer_weights {
    const moira_tensor_t *input_layernorm;          /* borrowed; [D] */
    const moira_tensor_t *post_attention_layernorm; /* borrowed; [D] */
    moira_mla_weights_t mla;
    bool is_moe;
    moira_moe_weights_t moe;
    moira_mlp_weights_t mlp; /* the dense MLP of layers below first_k_dense_replace */
} moira_layer_weights_t;

/* Which parts of a layer moira_layer_weights_find looks up; the golden data of one op holds only
 * that op's weights, so a caller asks only for what it will run. */
enum {
    MOIRA_WEIGHTS_MLA = 1u << 0,   /* self_attn.* */
    MOIRA_WEIGHTS_MOE = 1u << 1,   /* mlp.*: the MoE block, or the dense MLP for a dense layer */
    MOIRA_WEIGHTS_NORMS = 1u << 2, /* input_layernorm, post_attention_layernorm */
    MOIRA_WEIGHTS_GATE = 1u << 3,  /* the router alone (mlp.gate.*): moe with no expert arrays */
    MOIRA_WEIGHTS_ALL = MOIRA_WEIGHTS_MLA | MOIRA_WEIGHTS_MOE | MOIRA_WEIGHTS_NORMS,
};

/* Finds the weights of decoder layer `layer` in `file` under their Hugging Face names prefixed by
 * `prefix` ("" for bare names, "model.layers.3." in a checkpoint), for the parts in `parts`, and
 * checks every shape against `config`. Whether the layer's mlp is an MoE block or a dense MLP
 * follows moira_model_config_is_moe_layer(config, layer). `mlp.gate.e_score_correction_bias` is
 * optional; everything else the config implies is required.
 *
 * Errors: NOT_FOUND naming every missing tensor (the first few, then a count); INVALID_INPUT
 * naming the tensor, its expected and its actual shape (or a non-float dtype). `file`, `prefix`
 * and `config` are borrowed. On success the caller owns `*out_weights` and releases it with
 * moira_layer_weights_free; the tensors it points at stay owned by `file`. On failure
 * `*out_weights` is zeroed and holds nothing to free. */
moira_status_t moira_layer_weights_find(const moira_safetensors_t *file, const char *prefix,
                                        const moira_model_config_t *config, int64_t layer,
                                        unsigned parts, moira_layer_weights_t *out_weights);

/* Frees the arrays moira_layer_weights_find allocated (the expert pointer arrays) and zeroes the
 * struct. Never touches the tensors. Accepts a zeroed struct. */
void moira_layer_weights_free(moira_layer_weights_t *weights);

/* The shape checks the loader applies, for weight sets built by hand (tests, the executor). They
 * return INVALID_ARGUMENT naming the weight, the expected and the actual shape. */
moira_status_t moira_mla_weights_check(const moira_model_config_t *config,
                                       const moira_mla_weights_t *weights);
moira_status_t moira_moe_weights_check(const moira_model_config_t *config,
                                       const moira_moe_weights_t *weights);
/* `intermediate` is the MLP's I: intermediate_size for a dense layer. */
moira_status_t moira_mlp_weights_check(const moira_model_config_t *config, int64_t intermediate,
                                       const moira_mlp_weights_t *weights);

#endif
