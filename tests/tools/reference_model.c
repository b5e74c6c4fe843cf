#include "tests/tools/reference_model.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/reference.h"

/* config.json's eos_token_id, which moira_model_config_load has no use for: an integer, or a list
 * whose first entry is taken; -1 when absent. */
static moira_status_t read_eos(const char *dir, int64_t *out_eos) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/config.json", dir) >= (int)sizeof(path))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "%s: path too long", dir);
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    if (!root)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, error.line, error.column, "%s",
                               error.text);
    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_array(eos)) eos = json_array_get(eos, 0);
    *out_eos = json_is_integer(eos) ? (int64_t)json_integer_value(eos) : -1;
    json_decref(root);
    return MOIRA_OK_STATUS;
}

/* A tensor of the checkpoint that must exist with the given shape (rank 1 when d1 is 0). */
static moira_status_t find_shaped(const moira_ref_model_t *m, const char *name, int64_t d0,
                                  int64_t d1, const moira_tensor_t **out) {
    MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->file, name, out));
    const moira_tensor_t *t = *out;
    int rank = d1 ? 2 : 1;
    if (t->rank != rank || t->shape[0] != d0 || (rank == 2 && t->shape[1] != d1) ||
        !moira_dtype_is_float(t->dtype)) {
        char shape[64];
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s: tensor %s: expected a float tensor [%lld%s%lld], got %s %s",
                                 moira_safetensors_path(m->file), name, (long long)d0,
                                 rank == 2 ? ", " : "", (long long)(rank == 2 ? d1 : 0),
                                 moira_dtype_name(t->dtype),
                                 moira_tensor_shape_str(t, shape, sizeof(shape)));
    }
    return MOIRA_OK_STATUS;
}

/* embed, final norm and lm_head; the vocabulary is the embedding's rows, which config.json's
 * vocab_size must match when it gives one. */
static moira_status_t find_outer(moira_ref_model_t *m) {
    int64_t d = m->config.hidden_size;
    MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->file, "model.embed_tokens.weight", &m->embed));
    m->vocab = m->embed->rank == 2 ? m->embed->shape[0] : 0;
    if (m->config.vocab_size > 0) m->vocab = m->config.vocab_size;
    if (m->vocab < 2)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s: vocabulary of %lld tokens",
                                 moira_safetensors_path(m->file), (long long)m->vocab);
    MOIRA_RETURN_IF_ERROR(find_shaped(m, "model.embed_tokens.weight", m->vocab, d, &m->embed));
    MOIRA_RETURN_IF_ERROR(find_shaped(m, "model.norm.weight", d, 0, &m->norm));
    return find_shaped(m, "lm_head.weight", m->vocab, d, &m->lm_head);
}

moira_status_t moira_ref_model_open(const char *dir, moira_ref_model_t *out_model) {
    moira_ref_model_t *m = out_model;
    memset(m, 0, sizeof(*m));
    MOIRA_RETURN_IF_ERROR(moira_model_config_load(dir, &m->config));
    moira_status_t status = read_eos(dir, &m->eos_token_id);
    if (!status) status = moira_safetensors_open(dir, &m->file);
    int64_t n_layers = m->config.num_hidden_layers;
    if (!status) {
        m->layers = calloc((size_t)n_layers, sizeof(*m->layers));
        if (!m->layers) status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "layer weights");
    }
    /* Layers 0..num_hidden_layers-1 only: the MTP layers after them are not part of the model. */
    for (int64_t l = 0; !status && l < n_layers; l++) {
        char prefix[48];
        snprintf(prefix, sizeof(prefix), "model.layers.%lld.", (long long)l);
        status = moira_layer_weights_find(m->file, prefix, &m->config, l, MOIRA_WEIGHTS_ALL,
                                          &m->layers[l]);
    }
    if (!status) status = find_outer(m);
    if (status) moira_ref_model_close(m);
    return status;
}

void moira_ref_model_close(moira_ref_model_t *model) {
    for (int64_t l = 0; model->layers && l < model->config.num_hidden_layers; l++)
        moira_layer_weights_free(&model->layers[l]);
    free(model->layers);
    moira_safetensors_close(model->file);
    memset(model, 0, sizeof(*model));
}

/* x [n, D] = embed rows of ids, then every decoder layer in place, then the final norm. */
static moira_status_t hidden_states(const moira_ref_model_t *m, const int32_t *ids, int64_t n,
                                    moira_tensor_t *x) {
    int64_t d = m->config.hidden_size;
    for (int64_t t = 0; t < n; t++)
        moira_tensor_row_to_f32(m->embed, ids[t], (float *)x->data + t * d);
    for (int64_t l = 0; l < m->config.num_hidden_layers; l++) {
        moira_status_t status = moira_ref_layer(&m->config, l, &m->layers[l], x, NULL, x, false);
        if (status) return moira_status_annotate(status, "decoder layer %lld", (long long)l);
    }
    return moira_ref_rmsnorm(x, m->norm, m->config.rms_norm_eps, x);
}

moira_status_t moira_ref_model_logits(const moira_ref_model_t *model, const int32_t *ids, int64_t n,
                                      double *out_logits, float *out_hidden) {
    if (n < 1) return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "reference: no tokens to run");
    for (int64_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= model->vocab)
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "reference: token %lld is id %d, outside the vocabulary of "
                                     "%lld",
                                     (long long)t, ids[t], (long long)model->vocab);
    int64_t d = model->config.hidden_size;
    moira_tensor_t x;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(n, d, &x));
    float *row = malloc((size_t)d * sizeof(*row));
    moira_status_t status =
        row ? MOIRA_OK_STATUS : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "reference: logits");
    if (!status) status = hidden_states(model, ids, n, &x);
    const float *last = (const float *)x.data + (n - 1) * d;
    for (int64_t v = 0; !status && v < model->vocab; v++) {
        moira_tensor_row_to_f32(model->lm_head, v, row);
        double acc = 0;
        for (int64_t i = 0; i < d; i++)
            acc += (double)row[i] * (double)last[i];
        out_logits[v] = acc;
    }
    if (!status && out_hidden) memcpy(out_hidden, last, (size_t)d * sizeof(*last));
    free(row);
    moira_tensor_release(&x);
    return status;
}

moira_ref_step_t moira_ref_greedy(const double *logits, int64_t vocab) {
    int64_t best = 0, second = -1;
    double sum_sq = logits[0] * logits[0];
    for (int64_t v = 1; v < vocab; v++) {
        sum_sq += logits[v] * logits[v];
        if (logits[v] > logits[best]) {
            second = best;
            best = v;
        } else if (second < 0 || logits[v] > logits[second]) {
            second = v;
        }
    }
    return (moira_ref_step_t){
        .id = (int32_t)best, .gap = logits[best] - logits[second], .sum_sq = sum_sq};
}

moira_status_t moira_ref_model_margin(const moira_ref_model_t *model, const double *logits,
                                      const float *hidden, int32_t top, double *out_margin) {
    int64_t d = model->config.hidden_size;
    float *w_top = malloc((size_t)d * sizeof(*w_top)), *w = malloc((size_t)d * sizeof(*w));
    if (!w_top || !w) {
        free(w_top);
        free(w);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "reference: margin");
    }
    double x_norm = 0, margin = INFINITY;
    for (int64_t i = 0; i < d; i++)
        x_norm += (double)hidden[i] * hidden[i];
    x_norm = sqrt(x_norm);
    moira_tensor_row_to_f32(model->lm_head, top, w_top);
    for (int64_t v = 0; v < model->vocab; v++) {
        if (v == top) continue;
        moira_tensor_row_to_f32(model->lm_head, v, w);
        double diff = 0;
        for (int64_t i = 0; i < d; i++)
            diff += ((double)w_top[i] - w[i]) * ((double)w_top[i] - w[i]);
        /* Equal rows tie whatever the error: no margin at all. */
        double m = diff > 0 && x_norm > 0 ? (logits[top] - logits[v]) / (sqrt(diff) * x_norm) : 0;
        if (m < margin) margin = m;
    }
    free(w_top);
    free(w);
    *out_margin = margin;
    return MOIRA_OK_STATUS;
}
