/* The named shapes of `moira-test-checkpoint --preset`: real DeepSeek configurations, one in
 * miniature and one at its real size, so the engine is tested on the keys and proportions it will
 * meet. */
#include <stdio.h>
#include <string.h>

#include "ops/random_checkpoint.h"

/* What both presets share: DeepSeek's attention and rope defaults, one bf16 shard, seed 0. */
static void common(moira_random_checkpoint_spec_t *s) {
    memset(s, 0, sizeof(*s));
    moira_model_config_t *c = &s->config;
    moira_model_config_default(c); /* every field set; the presets override the shape */
    c->moe_layer_freq = 1;
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6;
    c->capacity_factor = 0.0;
    c->max_position_embeddings = 163840;
    c->rope_scaling.enabled = true;
    c->rope_scaling.factor = 40.0;
    c->rope_scaling.original_max_position_embeddings = 4096;
    c->rope_scaling.beta_fast = 32.0;
    c->rope_scaling.beta_slow = 1.0;
    s->dtype = MOIRA_DTYPE_BF16;
    s->n_shards = 1;
    s->top_p = 0.95;
}

/* DeepSeek-V3 in miniature: sigmoid routing over groups with a correction bias, q_lora, YaRN
 * (factor 40, mscale_all_dim 1), one dense layer then MoE, one shared expert, the real
 * vocabulary and special ids (bos 0, eos 1), so the real tokenizer fits. */
static void v3_tiny(moira_random_checkpoint_spec_t *s) {
    common(s);
    moira_model_config_t *c = &s->config;
    snprintf(c->name, sizeof(c->name), "v3-tiny");
    c->vocab_size = 129280;
    c->hidden_size = 64;
    c->intermediate_size = 160;
    c->moe_intermediate_size = 32;
    c->n_routed_experts = 16;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 4;
    c->n_group = 4;
    c->topk_group = 2;
    c->scoring_func = MOIRA_SCORING_FUNC_SIGMOID;
    c->norm_topk_prob = true;
    c->routed_scaling_factor = 2.5;
    c->num_hidden_layers = 3;
    c->first_k_dense_replace = 1;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 4;
    c->q_lora_rank = 48;
    c->kv_lora_rank = 32;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = 8;
    c->v_head_dim = 16;
    c->rope_scaling.mscale = 1.0;
    c->rope_scaling.mscale_all_dim = 1.0;
    s->family = MOIRA_CHECKPOINT_DEEPSEEK_V3;
    s->bos_token_id = 0;
    s->eos_token_id = 1;
    s->temperature = 0.6;
}

/* DeepSeek-V2-Lite's real sizes (its config.json): softmax routing without groups or bias, no
 * q_lora, 64 experts top-6 with two shared, a dense first layer of 10944, YaRN with mscale 0.707.
 * Two layers unless asked for more: a whole layer of experts is 1.1 GB in bf16. */
static void v2_lite(moira_random_checkpoint_spec_t *s) {
    common(s);
    moira_model_config_t *c = &s->config;
    snprintf(c->name, sizeof(c->name), "v2-lite");
    c->vocab_size = 102400;
    c->hidden_size = 2048;
    c->intermediate_size = 10944;
    c->moe_intermediate_size = 1408;
    c->n_routed_experts = 64;
    c->n_shared_experts = 2;
    c->num_experts_per_tok = 6;
    c->n_group = 1;
    c->topk_group = 1;
    c->scoring_func = MOIRA_SCORING_FUNC_SOFTMAX;
    c->norm_topk_prob = false;
    c->routed_scaling_factor = 1.0;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 1;
    c->num_attention_heads = 16;
    c->num_key_value_heads = 16;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->rope_scaling.mscale = 0.707;
    c->rope_scaling.mscale_all_dim = 0.707;
    s->family = MOIRA_CHECKPOINT_DEEPSEEK_V2;
    s->bos_token_id = 100000;
    s->eos_token_id = 100001;
    s->temperature = 0.3;
}

moira_status_t moira_random_checkpoint_preset(const char *name,
                                              moira_random_checkpoint_spec_t *out_spec) {
    if (!strcmp(name, "v3-tiny"))
        v3_tiny(out_spec);
    else if (!strcmp(name, "v2-lite"))
        v2_lite(out_spec);
    else
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "unknown preset \"%s\" (known: v3-tiny, v2-lite)", name);
    return MOIRA_OK_STATUS;
}
