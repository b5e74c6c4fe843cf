/* Seeded random checkpoints in the exact Hugging Face layout (DESIGN.md §5, "Model directory"):
 * what the end-to-end generation tests run, since no real DeepSeek checkpoint fits a test machine.
 *
 * A checkpoint is config.json (the DeepseekV3/V2 keys), generation_config.json, the weights under
 * their Hugging Face DeepSeek names (model.embed_tokens.weight, model.layers.N.*,
 * model.norm.weight, lm_head.weight, and the MTP layers' tensors at layer indices
 * num_hidden_layers.. when asked), either as one model.safetensors or split over
 * model-0000i-of-0000n.safetensors with model.safetensors.index.json, and optionally the tokenizer
 * files copied from a folder.
 *
 * Every tensor's values depend only on the seed and the tensor's name, never on the dtype or the
 * sharding: an fp8 checkpoint dequantises to the f32 checkpoint of the same seed within fp8's
 * rounding, so one can stand in for the other in a comparison. Scales keep activations near unit
 * size through the layers (projections uniform with variance gain^2 / fan-in, embeddings of unit
 * variance, norms near 1) and make the logits spread wide enough that greedy decoding has a clear
 * top token at most steps. */
#ifndef MOIRA_OPS_RANDOM_CHECKPOINT_H
#define MOIRA_OPS_RANDOM_CHECKPOINT_H

#include <stdint.h>

#include "runtime/dtype.h"
#include "runtime/model_config.h"
#include "runtime/status.h"

/* The model family a checkpoint claims to be: it picks model_type, architectures and the other
 * keys Hugging Face's config classes write for it. */
typedef enum moira_checkpoint_family {
    MOIRA_CHECKPOINT_DEEPSEEK_V3 = 0, /* "deepseek_v3", DeepseekV3ForCausalLM */
    MOIRA_CHECKPOINT_DEEPSEEK_V2 = 1, /* "deepseek_v2", DeepseekV2ForCausalLM */
} moira_checkpoint_family_t;

/* What to write. A plain value; the pointers in it are borrowed for the duration of the write. */
typedef struct moira_random_checkpoint_spec {
    /* The model's shape, written key by key into config.json. vocab_size must be set (> 0),
     * max_position_embeddings and rope_scaling are written as given, name and weight_dtype are
     * not written (the dtype follows `dtype` below). Must pass moira_model_config_validate. */
    moira_model_config_t config;
    moira_checkpoint_family_t family;
    /* MOIRA_DTYPE_F32, MOIRA_DTYPE_BF16 or MOIRA_DTYPE_F8_E4M3 (DeepSeek-V3's layout: 2-D
     * projections and experts fp8 with f32 weight_scale_inv per 128x128 block; embeddings, norms,
     * router, lm_head and the MTP layer's eh_proj and head bf16; the correction bias f32). */
    moira_dtype_t dtype;
    int n_shards;          /* 1: one model.safetensors; 2..99999: shards plus the index */
    uint64_t seed;         /* the same seed gives the same values on every machine */
    int mtp_layers;        /* num_nextn_predict_layers: MTP layers written after the decoder */
    int64_t bos_token_id;  /* config.json and generation_config.json, unless `tokenizer` */
    int64_t eos_token_id;  /* config.json and generation_config.json, unless `tokenizer` */
    double temperature;    /* generation_config.json; 0 writes do_sample false */
    double top_p;          /* generation_config.json */
    double logit_gain;     /* lm_head's gain: the logits' standard deviation (0: the default 8) */
    const char *tokenizer; /* borrowed; folder holding tokenizer.json and tokenizer_config.json to
                              copy (their bos_token and eos_token ids then replace the two
                              above), or NULL for none */
} moira_random_checkpoint_spec_t;

/* The presets of `moira-test-checkpoint --preset`: "v3-tiny" (DeepSeek-V3's shape in miniature:
 * sigmoid routing with groups and a correction bias, q_lora, YaRN, one dense layer, one shared
 * expert, the real vocabulary of 129280) and "v2-lite" (DeepSeek-V2-Lite's real sizes: softmax
 * routing, no q_lora, hidden 2048, 64 experts top-6, two shared, vocabulary 102400). Both BF16,
 * one shard, seed 0, no MTP. Errors: INVALID_ARGUMENT naming the known presets. */
moira_status_t moira_random_checkpoint_preset(const char *name,
                                              moira_random_checkpoint_spec_t *out_spec);

/* Writes the checkpoint `spec` describes into the new directory `dir` (borrowed). `dir` must not
 * exist, or be an empty directory; its parent must exist. Everything is written into a temporary
 * directory beside it and renamed into place at the end, so `dir` either appears whole or is
 * left as it was. Memory: one shard's tensors at a time.
 *
 * Errors: INVALID_ARGUMENT for a spec that makes no model (naming the field) or a `dir` that
 * exists and is not an empty directory; NOT_FOUND for a tokenizer folder without its files;
 * INVALID_INPUT when the tokenizer's ids do not fit vocab_size; IO naming the path the system
 * refused; OUT_OF_MEMORY. */
moira_status_t moira_random_checkpoint_write(const moira_random_checkpoint_spec_t *spec,
                                             const char *dir);

#endif
