/* Opening a Hugging Face model directory for generation (runtime/engine/model_files.h). */
#include "runtime/engine/model_files.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_PATH 4096

static moira_status_t join(const char *dir, const char *name, char *out) {
    int n = snprintf(out, MAX_PATH, "%s/%s", dir, name);
    if (n < 0 || n >= MAX_PATH)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: path too long", dir);
    return MOIRA_OK_STATUS;
}

/* A JSON file, or NULL when it does not exist and `optional`. Syntax errors name line:col. */
static moira_status_t load_json(const char *dir, const char *name, bool optional, json_t **out) {
    char path[MAX_PATH];
    *out = NULL;
    MOIRA_RETURN_IF_ERROR(join(dir, name, path));
    struct stat st;
    if (stat(path, &st) != 0) {
        if (optional) return MOIRA_OK_STATUS;
        return moira_status_make(MOIRA_CODE_NOT_FOUND, "%s: no such file", path);
    }
    if (!S_ISREG(st.st_mode))
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s: not a regular file", path);
    json_error_t error;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &error);
    if (!*out)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s:%d:%d: %s", path, error.line,
                                 error.column, error.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s:1:1: expected a JSON object", path);
    }
    return MOIRA_OK_STATUS;
}

/* What Moira implements: DeepSeek-V2/V3 (and R1, V2.5, V3.1, which share them) with MLA.
 * deepseek_v32 adds an indexer (sparse attention) and deepseek_v4 a new architecture: running
 * them as V3 would be wrong, not approximate, so they are refused. */
static moira_status_t check_architecture(const char *dir, json_t *config,
                                         const moira_model_config_t *parsed) {
    const char *type = json_string_value(json_object_get(config, "model_type"));
    if (!type)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s/config.json: no model_type (Moira generates with "
                                 "deepseek_v2 and deepseek_v3 models)",
                                 dir);
    if (!strcmp(type, "deepseek_v32") || json_object_get(config, "index_topk"))
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s/config.json: model_type %s needs DeepSeek Sparse Attention's "
                                 "indexer (index_topk, index_n_heads), which Moira does not "
                                 "implement",
                                 dir, type);
    if (strcmp(type, "deepseek_v2") && strcmp(type, "deepseek_v3"))
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s/config.json: model_type %s is not implemented (Moira "
                                 "generates with deepseek_v2 and deepseek_v3 models)",
                                 dir, type);
    if (parsed->attention != MOIRA_ATTENTION_MLA || parsed->kv_lora_rank <= 0)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s/config.json: generation needs multi-head latent attention "
                                 "(kv_lora_rank); GQA attention is not implemented",
                                 dir);
    return MOIRA_OK_STATUS;
}

/* One more id generation stops at (ids outside the vocabulary could never be generated). */
static void add_eos_id(moira_model_files_t *m, json_int_t id) {
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos_ids[i] == id) return;
    if (m->n_eos < (int)(sizeof(m->eos_ids) / sizeof(m->eos_ids[0])) && id >= 0 && id < m->vocab)
        m->eos_ids[m->n_eos++] = (int32_t)id;
}

/* eos_token_id may be a number or a list (generation_config.json often gives several). */
static void add_eos(moira_model_files_t *m, json_t *value) {
    if (json_is_integer(value)) {
        add_eos_id(m, json_integer_value(value));
    } else if (json_is_array(value)) {
        size_t i;
        json_t *item;
        json_array_foreach(value, i, item) add_eos(m, item);
    }
}

/* generation_config.json's sampling defaults; Hugging Face's own defaults where it is silent
 * (temperature 1, top_p 1, top_k 50 only when do_sample names it). */
static moira_status_t read_generation_config(moira_model_files_t *m) {
    m->defaults = (moira_sampling_t){.temperature = 1.0, .top_p = 1.0, .top_k = 0, .seed = 0};
    json_t *gen = NULL;
    MOIRA_RETURN_IF_ERROR(load_json(m->dir, "generation_config.json", true, &gen));
    if (!gen) return MOIRA_OK_STATUS;
    json_t *v;
    if ((v = json_object_get(gen, "temperature")) && json_is_number(v))
        m->defaults.temperature = json_number_value(v);
    if ((v = json_object_get(gen, "top_p")) && json_is_number(v))
        m->defaults.top_p = json_number_value(v);
    if ((v = json_object_get(gen, "top_k")) && json_is_integer(v))
        m->defaults.top_k = (int32_t)json_integer_value(v);
    if ((v = json_object_get(gen, "do_sample")) && json_is_false(v)) m->defaults.temperature = 0;
    add_eos(m, json_object_get(gen, "eos_token_id"));
    json_decref(gen);
    if (!(m->defaults.temperature >= 0) || !(m->defaults.top_p > 0 && m->defaults.top_p <= 1) ||
        m->defaults.top_k < 0)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s/generation_config.json: temperature %g, top_p %g or top_k "
                                 "%d is out of range",
                                 m->dir, m->defaults.temperature, m->defaults.top_p,
                                 m->defaults.top_k);
    return MOIRA_OK_STATUS;
}

/* A [vocab, D] float matrix named `name`, whose vocabulary must agree with config.json. */
static moira_status_t find_vocab_matrix(moira_model_files_t *m, const char *name,
                                        const moira_tensor_t **out) {
    MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->weights, name, out));
    const moira_tensor_t *t = *out;
    bool float_type = t->dtype == MOIRA_DTYPE_F32 || t->dtype == MOIRA_DTYPE_F16 ||
                      t->dtype == MOIRA_DTYPE_BF16 || t->dtype == MOIRA_DTYPE_F8_E4M3;
    if (t->rank != 2 || t->shape[1] != m->config.hidden_size || !float_type)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s: %s must be a float [vocab, %lld] matrix", m->dir, name,
                                 (long long)m->config.hidden_size);
    if (m->config.vocab_size > 0 && t->shape[0] != m->config.vocab_size)
        return moira_status_make(
            MOIRA_CODE_INVALID_INPUT, "%s: %s has %lld rows but config.json's vocab_size is %lld",
            m->dir, name, (long long)t->shape[0], (long long)m->config.vocab_size);
    return MOIRA_OK_STATUS;
}

/* Embedding, final norm and lm_head; lm_head falls back to the embedding when tied. */
static moira_status_t find_model_tensors(moira_model_files_t *m, bool tied) {
    MOIRA_RETURN_IF_ERROR(find_vocab_matrix(m, "model.embed_tokens.weight", &m->embed));
    m->vocab = m->embed->shape[0];
    if (tied && !moira_safetensors_has(m->weights, "lm_head.weight"))
        m->lm_head = m->embed;
    else
        MOIRA_RETURN_IF_ERROR(find_vocab_matrix(m, "lm_head.weight", &m->lm_head));
    if (m->lm_head->shape[0] != m->vocab)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s: lm_head.weight has %lld rows, the embedding %lld", m->dir,
                                 (long long)m->lm_head->shape[0], (long long)m->vocab);
    MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->weights, "model.norm.weight", &m->norm));
    if (m->norm->rank != 1 || m->norm->shape[0] != m->config.hidden_size)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s: model.norm.weight must be [%lld]",
                                 m->dir, (long long)m->config.hidden_size);
    return MOIRA_OK_STATUS;
}

/* Every decoder layer below num_hidden_layers; the MTP layers after them are never opened. */
static moira_status_t find_layers(moira_model_files_t *m) {
    int64_t n = m->config.num_hidden_layers;
    m->layers = calloc((size_t)n, sizeof(*m->layers));
    if (!m->layers) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int64_t l = 0; l < n; l++) {
        char prefix[48];
        snprintf(prefix, sizeof(prefix), "model.layers.%lld.", (long long)l);
        moira_status_t status = moira_layer_weights_find(m->weights, prefix, &m->config, l,
                                                         MOIRA_WEIGHTS_ALL, &m->layers[l]);
        if (status) return moira_status_annotate(status, "%s", m->dir);
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t open_files(const char *dir, bool with_tokenizer, moira_model_files_t *m) {
    m->dir = strdup(dir);
    if (!m->dir) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return moira_status_make(MOIRA_CODE_NOT_FOUND,
                                 "%s: not a model directory (config.json, safetensors weights "
                                 "and tokenizer files, as Hugging Face ships a model)",
                                 dir);
    json_t *config = NULL;
    MOIRA_RETURN_IF_ERROR(load_json(dir, "config.json", false, &config));
    moira_status_t status = moira_model_config_load(dir, &m->config);
    if (!status) status = check_architecture(dir, config, &m->config);
    bool tied = json_is_true(json_object_get(config, "tie_word_embeddings"));
    json_t *eos = json_incref(json_object_get(config, "eos_token_id"));
    json_decref(config);
    if (!status) status = moira_safetensors_open(dir, &m->weights);
    if (!status) status = find_model_tensors(m, tied);
    if (!status) status = find_layers(m);
    if (!status) add_eos(m, eos);
    json_decref(eos);
    if (!status) status = read_generation_config(m);
    if (!status && with_tokenizer) status = moira_tokenizer_load(dir, &m->tokenizer);
    if (!status && m->tokenizer) {
        add_eos_id(m, moira_tokenizer_eos_id(m->tokenizer));
        if (moira_tokenizer_vocab_size(m->tokenizer) > m->vocab)
            status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                       "%s/tokenizer.json: %d tokens, more than the embedding's "
                                       "%lld rows",
                                       dir, moira_tokenizer_vocab_size(m->tokenizer),
                                       (long long)m->vocab);
    }
    return status;
}

moira_status_t moira_model_files_open(const char *dir, bool with_tokenizer,
                                      moira_model_files_t *out) {
    memset(out, 0, sizeof(*out));
    moira_status_t status = open_files(dir, with_tokenizer, out);
    if (status) moira_model_files_close(out);
    return status;
}

void moira_model_files_close(moira_model_files_t *m) {
    for (int64_t l = 0; m->layers && l < m->config.num_hidden_layers; l++)
        moira_layer_weights_free(&m->layers[l]);
    free(m->layers);
    if (m->tokenizer) moira_tokenizer_free(m->tokenizer);
    if (m->weights) moira_safetensors_close(m->weights);
    free(m->dir);
    memset(m, 0, sizeof(*m));
}

/* The bytes a set of weights takes where it is stored (fp8 scales included). */
static double tensor_bytes(const moira_tensor_t *t) {
    return t ? (double)moira_tensor_nbytes(t) : 0;
}

static double mlp_bytes(const moira_mlp_weights_t *w) {
    return tensor_bytes(w->gate_proj) + tensor_bytes(w->up_proj) + tensor_bytes(w->down_proj);
}

double moira_model_files_device_bytes(const moira_model_files_t *m) {
    double total = tensor_bytes(m->lm_head) + tensor_bytes(m->norm);
    for (int64_t l = 0; l < m->config.num_hidden_layers; l++) {
        const moira_layer_weights_t *w = &m->layers[l];
        const moira_mla_weights_t *a = &w->mla;
        total += tensor_bytes(w->input_layernorm) + tensor_bytes(w->post_attention_layernorm) +
                 tensor_bytes(a->q_proj) + tensor_bytes(a->q_a_proj) + tensor_bytes(a->q_b_proj) +
                 tensor_bytes(a->kv_a_proj_with_mqa) + tensor_bytes(a->kv_b_proj) +
                 tensor_bytes(a->o_proj) + mlp_bytes(&w->mlp) + mlp_bytes(&w->moe.shared) +
                 tensor_bytes(w->moe.gate);
        for (int64_t e = 0; w->is_moe && e < w->moe.n_experts; e++)
            total += tensor_bytes(w->moe.expert_gate_proj[e]) +
                     tensor_bytes(w->moe.expert_up_proj[e]) +
                     tensor_bytes(w->moe.expert_down_proj[e]);
    }
    return total;
}
