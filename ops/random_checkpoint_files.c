/* The JSON files of a random checkpoint, as Hugging Face's DeepseekV3Config / DeepseekV2Config and
 * GenerationConfig save them (sorted keys, two-space indent), and the tokenizer files copied in. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/random_checkpoint_internal.h"
#include "runtime/atomic_file.h"

/* Values are typed decimals (2.5, 1e-06, 0.707): 15 significant digits print them as typed, where
 * jansson's default 17 would print 1e-06 as 9.9999999999999995e-07. */
#define JSON_FLAGS (JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15))

/* Pairs of (key, value) set one after another; a NULL value (jansson's allocation failure) is
 * remembered and reported once at the end, which keeps the long key lists below flat. */
typedef struct builder {
    json_t *object;
    bool failed;
} builder_t;

static void set(builder_t *b, const char *key, json_t *value) {
    if (!value || json_object_set_new(b->object, key, value) != 0) b->failed = true;
}

static void set_int(builder_t *b, const char *key, int64_t value) {
    set(b, key, json_integer((json_int_t)value));
}

static void set_real(builder_t *b, const char *key, double value) {
    set(b, key, json_real(value));
}

/* The rope_scaling object, or null without one. */
static json_t *rope_scaling_json(const moira_rope_scaling_t *r) {
    if (!r->enabled) return json_null();
    builder_t b = {.object = json_object()};
    if (!b.object) return NULL;
    set(&b, "type", json_string("yarn"));
    set_real(&b, "factor", r->factor);
    set_int(&b, "original_max_position_embeddings", r->original_max_position_embeddings);
    set_real(&b, "beta_fast", r->beta_fast);
    set_real(&b, "beta_slow", r->beta_slow);
    set_real(&b, "mscale", r->mscale);
    set_real(&b, "mscale_all_dim", r->mscale_all_dim);
    if (b.failed) json_decref(b.object);
    return b.failed ? NULL : b.object;
}

/* DeepSeek-V3's quantization_config for 128x128-block fp8 weights. */
static json_t *quantization_json(void) {
    return json_pack("{s:s, s:s, s:s, s:[i,i]}", "activation_scheme", "dynamic", "fmt", "e4m3",
                     "quant_method", "fp8", "weight_block_size", 128, 128);
}

/* How Hugging Face's DeepSeek code picks experts, by scoring function and groups. */
static const char *topk_method(const moira_model_config_t *c) {
    if (c->scoring_func == MOIRA_SCORING_FUNC_SIGMOID) return "noaux_tc";
    return c->n_group > 1 ? "group_limited_greedy" : "greedy";
}

/* The keys every DeepSeek config.json carries that change nothing Moira computes; written so the
 * file reads like the real ones and engines see the keys they must ignore. */
static void set_bookkeeping(builder_t *b, const moira_random_checkpoint_spec_t *spec) {
    bool v3 = spec->family == MOIRA_CHECKPOINT_DEEPSEEK_V3;
    set(b, "architectures",
        json_pack("[s]", v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"));
    set(b, "model_type", json_string(v3 ? "deepseek_v3" : "deepseek_v2"));
    set(b, "attention_bias", json_false());
    set_real(b, "attention_dropout", 0.0);
    set_real(b, "aux_loss_alpha", 0.001);
    set_int(b, "bos_token_id", spec->bos_token_id);
    set_int(b, "eos_token_id", spec->eos_token_id);
    set_int(b, "ep_size", 1);
    set(b, "hidden_act", json_string("silu"));
    set_real(b, "initializer_range", 0.02);
    set_int(b, "pretraining_tp", 1);
    set(b, "seq_aux", json_true());
    set(b, "tie_word_embeddings", json_false());
    set(b, "topk_method", json_string(topk_method(&spec->config)));
    set(b, "transformers_version", json_string("4.46.3"));
    set(b, "use_cache", json_true());
    if (v3 || spec->mtp_layers > 0) set_int(b, "num_nextn_predict_layers", spec->mtp_layers);
}

/* The keys that shape the model (DESIGN.md §5's list), and the dtype keys. */
static void set_shape(builder_t *b, const moira_random_checkpoint_spec_t *spec) {
    const moira_model_config_t *c = &spec->config;
    set_int(b, "vocab_size", c->vocab_size);
    set_int(b, "hidden_size", c->hidden_size);
    set_int(b, "intermediate_size", c->intermediate_size);
    set_int(b, "moe_intermediate_size", c->moe_intermediate_size);
    set_int(b, "n_routed_experts", c->n_routed_experts);
    set_int(b, "n_shared_experts", c->n_shared_experts);
    set_int(b, "num_experts_per_tok", c->num_experts_per_tok);
    set_int(b, "n_group", c->n_group);
    set_int(b, "topk_group", c->topk_group);
    set(b, "scoring_func", json_string(moira_scoring_func_name(c->scoring_func)));
    set(b, "norm_topk_prob", json_boolean(c->norm_topk_prob));
    set_real(b, "routed_scaling_factor", c->routed_scaling_factor);
    set_int(b, "num_hidden_layers", c->num_hidden_layers);
    set_int(b, "first_k_dense_replace", c->first_k_dense_replace);
    set_int(b, "moe_layer_freq", c->moe_layer_freq);
    set_int(b, "num_attention_heads", c->num_attention_heads);
    set_int(b, "num_key_value_heads", c->num_attention_heads);
    set(b, "q_lora_rank", c->q_lora_rank > 0 ? json_integer(c->q_lora_rank) : json_null());
    set_int(b, "kv_lora_rank", c->kv_lora_rank);
    set_int(b, "qk_nope_head_dim", c->qk_nope_head_dim);
    set_int(b, "qk_rope_head_dim", c->qk_rope_head_dim);
    set_int(b, "v_head_dim", c->v_head_dim);
    set_int(b, "max_position_embeddings", c->max_position_embeddings);
    set_real(b, "rope_theta", c->rope_theta);
    set(b, "rope_scaling", rope_scaling_json(&c->rope_scaling));
    set_real(b, "rms_norm_eps", c->rms_norm_eps);
    if (c->capacity_factor > 0) set_real(b, "capacity_factor", c->capacity_factor);
    set(b, "torch_dtype", json_string(spec->dtype == MOIRA_DTYPE_F32 ? "float32" : "bfloat16"));
    if (spec->dtype == MOIRA_DTYPE_F8_E4M3) set(b, "quantization_config", quantization_json());
}

/* DeepSeek-V3's generation_config.json with the spec's sampling defaults. */
static json_t *generation_json(const moira_random_checkpoint_spec_t *spec) {
    builder_t b = {.object = json_object()};
    if (!b.object) return NULL;
    set(&b, "_from_model_config", json_true());
    set_int(&b, "bos_token_id", spec->bos_token_id);
    set_int(&b, "eos_token_id", spec->eos_token_id);
    set(&b, "do_sample", json_boolean(spec->temperature > 0));
    set_real(&b, "temperature", spec->temperature);
    set_real(&b, "top_p", spec->top_p);
    set(&b, "transformers_version", json_string("4.46.3"));
    if (b.failed) json_decref(b.object);
    return b.failed ? NULL : b.object;
}

static bool dump_json(FILE *out, void *context) {
    return json_dumpf(context, out, JSON_FLAGS) == 0 && fputc('\n', out) != EOF;
}

moira_status_t moira_ckpt_write_json(const char *dir, const char *name, json_t *root) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: path too long", dir);
    return moira_write_file_atomically(path, dump_json, root);
}

moira_status_t moira_ckpt_write_configs(const moira_random_checkpoint_spec_t *spec,
                                        const char *dir) {
    builder_t b = {.object = json_object()};
    if (b.object) {
        set_bookkeeping(&b, spec);
        set_shape(&b, spec);
    }
    json_t *generation = generation_json(spec);
    moira_status_t status = MOIRA_OK_STATUS;
    if (!b.object || b.failed || !generation)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot build config.json");
    if (!status) status = moira_ckpt_write_json(dir, "config.json", b.object);
    if (!status) status = moira_ckpt_write_json(dir, "generation_config.json", generation);
    json_decref(b.object);
    json_decref(generation);
    return status;
}

/* The largest id a tokenizer.json can produce: its model's vocabulary and its added tokens. */
static json_int_t max_token_id(json_t *root) {
    json_int_t max_id = -1;
    const char *key;
    json_t *value;
    json_object_foreach(json_object_get(json_object_get(root, "model"), "vocab"), key, value) {
        if (json_is_integer(value) && json_integer_value(value) > max_id)
            max_id = json_integer_value(value);
    }
    size_t i;
    json_array_foreach(json_object_get(root, "added_tokens"), i, value) {
        json_t *id = json_object_get(value, "id");
        if (json_is_integer(id) && json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    return max_id;
}

/* The id of the special token tokenizer_config.json names under `key` (a string, or an
 * AddedToken object with "content"), looked up among tokenizer.json's added tokens and then its
 * vocabulary; *out_id is left alone when there is none. */
static void special_id(json_t *tokenizer, json_t *tokenizer_config, const char *key,
                       int64_t *out_id) {
    json_t *token = json_object_get(tokenizer_config, key);
    const char *content = json_is_object(token)
                              ? json_string_value(json_object_get(token, "content"))
                              : json_string_value(token);
    if (!content) return;
    size_t i;
    json_t *added;
    json_array_foreach(json_object_get(tokenizer, "added_tokens"), i, added) {
        const char *text = json_string_value(json_object_get(added, "content"));
        json_t *id = json_object_get(added, "id");
        if (text && !strcmp(text, content) && json_is_integer(id)) {
            *out_id = json_integer_value(id);
            return;
        }
    }
    json_t *id =
        json_object_get(json_object_get(json_object_get(tokenizer, "model"), "vocab"), content);
    if (json_is_integer(id)) *out_id = json_integer_value(id);
}

static json_t *load_json_file(const char *from, const char *name, moira_status_t *out_status) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/%s", from, name) >= (int)sizeof(path)) {
        *out_status = moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: path too long", from);
        return NULL;
    }
    if (access(path, F_OK) != 0) {
        *out_status = moira_status_make(errno == ENOENT ? MOIRA_CODE_NOT_FOUND : MOIRA_CODE_IO,
                                        "%s: %s", path, strerror(errno));
        return NULL;
    }
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    if (!root)
        *out_status = moira_status_at(MOIRA_CODE_INVALID_INPUT, path, error.line, error.column,
                                      "%s", error.text);
    return root;
}

moira_status_t moira_ckpt_read_tokenizer(const char *from, int64_t vocab_size, int64_t *io_bos,
                                         int64_t *io_eos) {
    moira_status_t status = MOIRA_OK_STATUS;
    json_t *tokenizer = load_json_file(from, "tokenizer.json", &status);
    json_t *config = status ? NULL : load_json_file(from, "tokenizer_config.json", &status);
    /* An embedding of vocab_size rows cannot serve a tokenizer with ids past it: the engine would
     * index out of the table, so such a pair is refused here rather than written. */
    json_int_t max_id = tokenizer ? max_token_id(tokenizer) : -1;
    if (!status && max_id >= vocab_size)
        status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                   "%s/tokenizer.json: the tokenizer has ids up to %lld; "
                                   "vocab_size %lld is too small",
                                   from, (long long)max_id, (long long)vocab_size);
    if (!status) {
        special_id(tokenizer, config, "bos_token", io_bos);
        special_id(tokenizer, config, "eos_token", io_eos);
    }
    json_decref(tokenizer);
    json_decref(config);
    return status;
}

static bool copy_stream(FILE *out, void *context) {
    FILE *in = context;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n) return false;
    return !ferror(in);
}

/* Copies FROM/NAME to DIR/NAME byte for byte. */
static moira_status_t copy_file(const char *from, const char *dir, const char *name) {
    char src[4096], dst[4096];
    if (snprintf(src, sizeof(src), "%s/%s", from, name) >= (int)sizeof(src) ||
        snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= (int)sizeof(dst))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: path too long", from);
    FILE *in = fopen(src, "rb");
    if (!in)
        return moira_status_make(errno == ENOENT ? MOIRA_CODE_NOT_FOUND : MOIRA_CODE_IO, "%s: %s",
                                 src, strerror(errno));
    moira_status_t status = moira_write_file_atomically(dst, copy_stream, in);
    fclose(in);
    return status;
}

moira_status_t moira_ckpt_copy_tokenizer(const char *from, const char *dir) {
    MOIRA_RETURN_IF_ERROR(copy_file(from, dir, "tokenizer.json"));
    return copy_file(from, dir, "tokenizer_config.json");
}
