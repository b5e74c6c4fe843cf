/* Model config: the shape of a DeepSeek-style MoE model, read from Moira's YAML or from a Hugging
 * Face config.json as is (DESIGN.md §5).
 *
 * Keys are the Hugging Face DeepSeek names. Moira adds weight_dtype, capacity_factor, name and
 * attention. Unknown keys are ignored, because real config.json files carry many that do not
 * change the math (architectures, auto_map, bos_token_id, ...). Every problem in a file is a
 * MOIRA_CODE_INVALID_INPUT status located at the offending value as file:line:col.
 *
 * A config is a plain value: it owns no memory, may be copied with `=`, and needs no cleanup. */
#ifndef MOIRA_RUNTIME_MODEL_CONFIG_H
#define MOIRA_RUNTIME_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/status.h"

/* How router logits become scores. The values equal ops/op.h's moira_scoring_t (SOFTMAX 0,
 * SIGMOID 1) so a config's value can be passed to the gate op as is; the names differ because
 * runtime/ must not include ops/ and both headers may be included by one file. */
typedef enum moira_scoring_func {
    MOIRA_SCORING_FUNC_SOFTMAX = 0,
    MOIRA_SCORING_FUNC_SIGMOID = 1,
} moira_scoring_func_t;

/* The attention a model's layers use. Moira computes MLA (DESIGN.md §4). GQA models (Qwen3-MoE)
 * are described so that their MoE layers can be planned and benchmarked; their attention fields
 * are num_attention_heads, num_key_value_heads and head_dim, and the MLA fields are 0. */
typedef enum moira_attention {
    MOIRA_ATTENTION_MLA = 0,
    MOIRA_ATTENTION_GQA = 1,
} moira_attention_t;

/* rope_scaling of type yarn. `enabled` is false when the key is absent or null; the other fields
 * then hold the defaults below and mean nothing. */
typedef struct moira_rope_scaling {
    bool enabled;
    double factor;
    int64_t original_max_position_embeddings;
    double beta_fast;      /* default 32 */
    double beta_slow;      /* default 1 */
    double mscale;         /* default 1 */
    double mscale_all_dim; /* default 0: the softmax scale is not changed */
} moira_rope_scaling_t;

/* Where one value was read: 1-based line and column, 0 when it did not come from a file. */
typedef struct moira_config_mark {
    int32_t line;
    int32_t column;
} moira_config_mark_t;

#define MOIRA_MODEL_CONFIG_NAME_MAX 64
#define MOIRA_MODEL_CONFIG_MARK_SLOTS 48

typedef struct moira_model_config {
    char name[MOIRA_MODEL_CONFIG_NAME_MAX]; /* `name:`, else the file's or folder's name */
    int64_t hidden_size;                    /* D */
    int64_t moe_intermediate_size;          /* I, per routed or shared expert */
    int64_t intermediate_size;              /* dense MLP of layers below first_k_dense_replace */
    int64_t n_routed_experts;               /* E */
    int64_t n_shared_experts;               /* 0 when absent or null */
    int64_t num_experts_per_tok;            /* k */
    int64_t n_group;                        /* 1 when absent or null: no groups */
    int64_t topk_group;                     /* n_group when absent or null: keep every group */
    int64_t num_hidden_layers;
    int64_t first_k_dense_replace; /* 0 when absent */
    int64_t moe_layer_freq;        /* 1 when absent; layer l is MoE when l % freq == 0 */
    int64_t num_attention_heads;   /* H */
    int64_t q_lora_rank;           /* 0 when absent or null: q_proj instead of q_a/q_b */
    int64_t kv_lora_rank;
    int64_t qk_nope_head_dim;
    int64_t qk_rope_head_dim;
    int64_t v_head_dim;
    int64_t num_key_value_heads;     /* GQA only; num_attention_heads when absent */
    int64_t head_dim;                /* GQA only; hidden_size / num_attention_heads when absent */
    int64_t max_position_embeddings; /* 2048 when absent, as Hugging Face's DeepseekV3Config */
    int64_t vocab_size;              /* 0 when absent; informational (Moira runs no embedding) */
    moira_attention_t attention;
    moira_scoring_func_t scoring_func; /* softmax when absent, as Hugging Face */
    bool norm_topk_prob;               /* false when absent */
    double routed_scaling_factor;      /* 1 when absent */
    double rope_theta;                 /* 10000 when absent */
    double rms_norm_eps;               /* 1e-6 when absent */
    double capacity_factor;            /* 0 when absent: unlimited */
    moira_rope_scaling_t rope_scaling;
    moira_dtype_t weight_dtype; /* see moira_model_config_load for how it is chosen */
    /* Set with a `moira quantize` quantization_config: the routed experts are expert_dtype (MXFP4
     * or INT8) while the other weights are weight_dtype. See moira_model_config_expert_dtype. */
    bool experts_quantized;
    moira_dtype_t expert_dtype;
    /* Private: where each value was read, so that moira_model_config_validate can point at it.
     * Ignored by moira_model_config_equal. */
    moira_config_mark_t marks[MOIRA_MODEL_CONFIG_MARK_SLOTS];
} moira_model_config_t;

/* Reads a model config from `path`: Moira's YAML, a Hugging Face config.json, or a folder holding
 * a config.json (a downloaded Hugging Face model). The result is validated. On error
 * `*out_config` is unspecified.
 *
 * weight_dtype, when the file does not give it, follows what the checkpoint ships: an fp8
 * quantization_config (quant_method fp8, weight_block_size [128, 128]) gives fp8_e4m3, else
 * torch_dtype (or dtype) bfloat16/float16/float32 gives bf16/f16/f32, else f32 (the golden test
 * data stores f32 weights and names no dtype). `moira quantize`'s quant_method mxfp4 or int8
 * leaves weight_dtype to torch_dtype (the dtype of the weights it did not quantise; the quantised
 * ones carry their format in the checkpoint). Other quantization methods are an error unless
 * weight_dtype is given, since Moira could not read such weights.
 *
 * `path` is borrowed. Errors: NOT_FOUND when the file does not exist, IO when it cannot be read,
 * INVALID_INPUT with file:line:col for anything wrong inside it. */
moira_status_t moira_model_config_load(const char *path, moira_model_config_t *out_config);

/* Parses a config from memory, as moira_model_config_load does after reading the file.
 * `display_name` names the text in messages and, without a `name:` key, gives the model's name
 * (its basename without extension); it may be NULL ("<input>"). `text` need not be
 * NUL-terminated. All pointers are borrowed. */
moira_status_t moira_model_config_parse_string(const char *text, size_t len,
                                               const char *display_name,
                                               moira_model_config_t *out_config);

/* The built-in model that `moira run` uses with no arguments: DeepSeek-V3's shape in miniature
 * (sigmoid scoring with groups, a shared expert, q_lora, YaRN, a dense first layer) small enough
 * to run in seconds on two cores. configs/models/moira-tiny.yaml holds the same values. */
void moira_model_config_default(moira_model_config_t *out_config);

/* Checks that a config describes a model Moira can run: sizes positive, experts divisible into
 * groups, k within what the groups allow, a known scoring function, rope_scaling of type yarn,
 * and so on. Values read from a file are located there; `path` names it (may be NULL). Configs
 * built in code get messages without a location. */
moira_status_t moira_model_config_validate(const moira_model_config_t *config, const char *path);

/* Whether two configs describe the same model (every field but the source marks). */
bool moira_model_config_equal(const moira_model_config_t *a, const moira_model_config_t *b);

/* Bytes of one routed expert's weights stored as `dtype` (any weight format): gate_proj and
 * up_proj [I, D] and down_proj [D, I], each with its scales (runtime/weight_format.h): fp8_e4m3's
 * f32 per 128x128 block (DeepSeek-V3's weight_scale_inv), mxfp4's E8M0 byte per 32 inputs,
 * int8's f32 per row. */
int64_t moira_model_config_expert_bytes(const moira_model_config_t *config, moira_dtype_t dtype);

/* The format the routed experts are stored in: expert_dtype when experts_quantized, else
 * weight_dtype. What a replica's bytes are sized by. */
moira_dtype_t moira_model_config_expert_dtype(const moira_model_config_t *config);

/* Whether decoder layer `layer` (0-based) has an MoE block rather than a dense MLP, by the rule of
 * the Hugging Face DeepSeek code: layer >= first_k_dense_replace and layer % moe_layer_freq == 0.
 * False for layers out of range. */
bool moira_model_config_is_moe_layer(const moira_model_config_t *config, int64_t layer);

/* Number of MoE layers in the model. */
int64_t moira_model_config_moe_layer_count(const moira_model_config_t *config);

/* The attention softmax scale (DESIGN.md §4): (qk_nope_head_dim + qk_rope_head_dim)^-0.5 for MLA,
 * times m^2 when rope_scaling has a nonzero mscale_all_dim, m = 0.1 * mscale_all_dim * ln(factor)
 * + 1 (1 when factor <= 1). head_dim^-0.5 for GQA. */
double moira_model_config_attention_scale(const moira_model_config_t *config);

/* The config spelling of a scoring function ("softmax", "sigmoid"). Static storage. */
const char *moira_scoring_func_name(moira_scoring_func_t scoring_func);

#endif
