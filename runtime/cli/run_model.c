/* `moira run`: the model on the host - its weights, the batch, the reference (runtime/cli/run.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/reference.h"
#include "placement/reserve.h"
#include "runtime/cli/run.h"

/* Models whose weights exceed this get a progress line while they load and upload. */
#define PROGRESS_MIN_BYTES (256.0 * 1048576.0)

/* Random weights own their tensors; a checkpoint's are views of the mapped file. */
void run_model_release(run_model_t *m) {
    for (int64_t l = 0; l < m->n_layers; l++) {
        if (m->random)
            moira_random_layer_release(&m->random[l]);
        else if (m->layers)
            moira_layer_weights_free(&m->layers[l]);
    }
    free(m->random);
    free(m->layers);
    if (m->checkpoint) moira_safetensors_close(m->checkpoint);
    if (m->inputs_file) moira_safetensors_close(m->inputs_file);
    moira_tensor_release(&m->x);
    moira_tensor_release(&m->positions);
    moira_tensor_release(&m->out);
    moira_tensor_release(&m->reference);
    for (int64_t l = 0; m->layer_inputs && l < m->n_layers; l++)
        moira_tensor_release(&m->layer_inputs[l]);
    free(m->layer_inputs);
    memset(m, 0, sizeof(*m));
}

/* An estimate from the config alone, for the progress line before anything is loaded. */
double run_model_weight_bytes(const moira_model_config_t *c) {
    double total = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        double experts = 0, rest = 0;
        moira_model_layer_bytes(c, l, c->weight_dtype, &experts, &rest);
        total += experts + rest;
    }
    return total;
}

/* A full DeepSeek model with random weights would otherwise be killed by the kernel half way. */
moira_status_t run_model_check_fits(const moira_model_config_t *c, const run_args_t *a,
                                    const moira_device_t *home) {
    if (c->attention != MOIRA_ATTENTION_MLA)
        return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                                 "%s uses GQA attention; moira run executes MLA models (its MoE "
                                 "layers can still be planned with moira plan)",
                                 c->name);
    double total = 0, home_need = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        double experts = 0, rest = 0;
        moira_model_layer_bytes(c, l, c->weight_dtype, &experts, &rest);
        total += experts + rest;
        home_need += rest;
    }
    double host = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    double home_memory = (double)moira_device_info(home)->memory_bytes;
    /* Random weights live on the host, besides the devices; a checkpoint is mapped, not copied. */
    double host_need = a->weights ? 0 : total;
    if (host_need > host || (home_memory > 0 && home_need > home_memory))
        return moira_status_make(
            MOIRA_CODE_INVALID_ARGUMENT,
            "%s needs %.1f GiB of %s weights%s (%.1f GiB of them besides the routed experts on "
            "%s); the host has %.1f GiB and %s %.1f GiB (try a smaller model such as "
            "configs/models/moira-tiny.yaml)",
            c->name, total / (1 << 30), moira_dtype_name(c->weight_dtype),
            a->weights ? "" : " (random ones are made on the host)", home_need / (1 << 30),
            moira_device_info(home)->name, host / (1 << 30), moira_device_info(home)->name,
            home_memory / (1 << 30));
    return MOIRA_OK_STATUS;
}

/* The batch decides the token count the plan is made for, so it is read before placement. */
/* input_ids I32/I64 [T] (or [1, T]) through the checkpoint's model.embed_tokens.weight into
 * x: what `moira run` feeds its layers when the inputs are token ids rather than activations. */
static moira_status_t embed_input_ids(run_model_t *m, const run_args_t *a,
                                      const moira_tensor_t *ids) {
    int64_t t = ids->rank == 2 && ids->shape[0] == 1 ? ids->shape[1] : ids->shape[0];
    bool shaped = ids->rank == 1 || (ids->rank == 2 && ids->shape[0] == 1);
    bool typed = ids->dtype == MOIRA_DTYPE_I32 || ids->dtype == MOIRA_DTYPE_I64;
    if (!shaped || !typed || t < 1 || t > (1 << 20))
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, a->inputs, 0, 0,
                               "input_ids must be I32 or I64 [T] (or [1, T]) with 1 <= T <= %d",
                               1 << 20);
    if (!a->weights)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s holds input_ids: --weights must name the checkpoint whose "
                                 "model.embed_tokens.weight embeds them",
                                 a->inputs);
    MOIRA_RETURN_IF_ERROR(moira_safetensors_open(a->weights, &m->checkpoint));
    const moira_tensor_t *embed = NULL;
    MOIRA_RETURN_IF_ERROR(
        moira_safetensors_find(m->checkpoint, "model.embed_tokens.weight", &embed));
    int64_t d = m->config.hidden_size;
    if (embed->rank != 2 || embed->shape[1] != d)
        return moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                 "%s: model.embed_tokens.weight must be [vocab, %lld]", a->weights,
                                 (long long)d);
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->x));
    for (int64_t i = 0; i < t; i++) {
        int64_t id = ids->dtype == MOIRA_DTYPE_I32 ? ((const int32_t *)ids->data)[i]
                                                   : ((const int64_t *)ids->data)[i];
        if (id < 0 || id >= embed->shape[0])
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, a->inputs, 0, 0,
                                   "input_ids[%lld] = %lld is outside the vocabulary (0 to %lld)",
                                   (long long)i, (long long)id, (long long)embed->shape[0] - 1);
        moira_tensor_row_to_f32(embed, id, (float *)m->x.data + i * d);
    }
    return MOIRA_OK_STATUS;
}

moira_status_t run_model_load_inputs(run_model_t *m, const run_args_t *a) {
    int64_t d = m->config.hidden_size, t = a->tokens;
    const moira_tensor_t *given = NULL;
    const moira_tensor_t *ids = NULL;
    if (a->inputs) {
        MOIRA_RETURN_IF_ERROR(moira_safetensors_open(a->inputs, &m->inputs_file));
        if (!moira_safetensors_has(m->inputs_file, "hidden_states") &&
            moira_safetensors_has(m->inputs_file, "input_ids"))
            MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->inputs_file, "input_ids", &ids));
        if (!ids)
            MOIRA_RETURN_IF_ERROR(moira_safetensors_find(m->inputs_file, "hidden_states", &given));
        if (given && (given->dtype != MOIRA_DTYPE_F32 || given->rank != 2 || given->shape[1] != d ||
                      given->shape[0] < 1 || given->shape[0] > (1 << 20)))
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, a->inputs, 0, 0,
                                   "hidden_states must be F32 [T, %lld] with 1 <= T <= %d",
                                   (long long)d, 1 << 20);
    }
    if (ids) {
        MOIRA_RETURN_IF_ERROR(embed_input_ids(m, a, ids));
        t = m->x.shape[0];
    } else {
        if (given) t = given->shape[0];
        MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->x));
        if (given)
            memcpy(m->x.data, given->data, moira_tensor_nbytes(&m->x));
        else
            moira_random_fill_uniform(m->x.data, (size_t)(t * d), (uint64_t)a->seed + 99, -1, 1);
    }
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->out));
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &m->reference));
    int64_t shape[1] = {t};
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc(MOIRA_DTYPE_I32, 1, shape, &m->positions));
    for (int64_t i = 0; i < t; i++)
        ((int32_t *)m->positions.data)[i] = (int32_t)i;
    return MOIRA_OK_STATUS;
}

/* Host weights only; the executor uploads them where the plan says. */
/* On a terminal one line rewritten in place; in a log a line per tenth of the layers, so the log
 * stays readable. `bytes` < 0 leaves the byte count out. */
static void progress_line(const char *verb, const char *what, int64_t done, int64_t of,
                          double bytes, double total) {
    bool terminal = isatty(STDERR_FILENO);
    if (!terminal && done != 1 && done != of && 10 * done / of == 10 * (done - 1) / of) return;
    fprintf(stderr, "%smoira %s: %s, layer %lld of %lld", terminal ? "\r" : "", verb, what,
            (long long)done, (long long)of);
    if (bytes >= 0)
        fprintf(stderr, " (%.2f of ~%.2f GiB)", bytes / 1073741824.0, total / 1073741824.0);
    else
        fprintf(stderr, " (~%.2f GiB in all)", total / 1073741824.0);
    if (!terminal || done == of) fputc('\n', stderr);
}

moira_status_t run_model_load_weights(run_model_t *m, const run_args_t *a) {
    const moira_model_config_t *c = &m->config;
    m->n_layers = c->num_hidden_layers;
    m->layers = calloc((size_t)m->n_layers, sizeof(*m->layers));
    if (!m->layers)
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot allocate %lld layers",
                                 (long long)m->n_layers);
    m->layer_inputs = calloc((size_t)m->n_layers, sizeof(*m->layer_inputs));
    if (!m->layer_inputs) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int64_t l = 0; l < m->n_layers; l++)
        MOIRA_RETURN_IF_ERROR(
            moira_tensor_alloc_f32(m->x.shape[0], c->hidden_size, &m->layer_inputs[l]));
    if (a->weights) {
        if (!m->checkpoint) /* input_ids may have opened it for the embedding */
            MOIRA_RETURN_IF_ERROR(moira_safetensors_open(a->weights, &m->checkpoint));
    } else {
        m->random = calloc((size_t)m->n_layers, sizeof(*m->random));
        if (!m->random) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    double total = run_model_weight_bytes(c);
    for (int64_t l = 0; l < m->n_layers; l++) {
        if (total >= PROGRESS_MIN_BYTES)
            progress_line("run", m->checkpoint ? "reading weights" : "making random weights", l + 1,
                          m->n_layers, -1, total);
        if (m->checkpoint) {
            char prefix[48];
            snprintf(prefix, sizeof(prefix), "model.layers.%lld.", (long long)l);
            MOIRA_RETURN_IF_ERROR(moira_layer_weights_find(m->checkpoint, prefix, c, l,
                                                           MOIRA_WEIGHTS_ALL, &m->layers[l]));
        } else {
            MOIRA_RETURN_IF_ERROR(
                moira_random_layer_create(c, l, (uint64_t)a->seed, c->weight_dtype, &m->random[l]));
            m->layers[l] = m->random[l].weights;
        }
    }
    return MOIRA_OK_STATUS;
}

/* Quiet for small models, so tests and the default run print no noise. */
void run_progress(void *context, int64_t layers_done, int64_t layers, double bytes_uploaded) {
    const run_progress_context_t *c = context;
    if (c->total_bytes >= PROGRESS_MIN_BYTES)
        progress_line(c->verb, "uploading weights", layers_done, layers, bytes_uploaded,
                      c->total_bytes);
}

/* The fp64 reference shares no code with the executor: what a user can trust. */
moira_status_t run_model_reference(run_model_t *m) {
    moira_tensor_t tmp;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(m->x.shape[0], m->x.shape[1], &tmp));
    memcpy(m->reference.data, m->x.data, moira_tensor_nbytes(&m->x));
    moira_status_t status = MOIRA_OK_STATUS;
    for (int64_t l = 0; l < m->n_layers && !status; l++) {
        status = moira_ref_layer(&m->config, l, &m->layers[l], &m->reference, &m->positions, &tmp,
                                 false);
        if (!status) memcpy(m->reference.data, tmp.data, moira_tensor_nbytes(&tmp));
    }
    moira_tensor_release(&tmp);
    return status;
}

/* DESIGN.md §4's NMSE; a NaN on either side makes it NaN, which no limit accepts. */
double run_model_nmse(const moira_tensor_t *got, const moira_tensor_t *want) {
    const float *a = got->data, *b = want->data;
    double num = 0, den = 0;
    for (int64_t i = 0; i < moira_tensor_numel(want); i++) {
        double diff = (double)a[i] - (double)b[i];
        num += diff * diff;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? num / den : num;
}

/* Layer l's output is layer l+1's recorded input (the last one's is the model output). */
moira_status_t run_model_layer_check(const run_model_t *m, double limit, double *out_worst_nmse,
                                     int64_t *out_worst_layer, int *out_near_ties) {
    *out_worst_nmse = 0;
    *out_worst_layer = 0;
    *out_near_ties = 0;
    int64_t t = m->x.shape[0], d = m->x.shape[1];
    moira_tensor_t want;
    MOIRA_RETURN_IF_ERROR(moira_tensor_alloc_f32(t, d, &want));
    bool *tie = calloc((size_t)t, sizeof(*tie));
    moira_status_t status =
        tie ? MOIRA_OK_STATUS : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int64_t l = 0; l < m->n_layers && !status; l++) {
        status = moira_ref_layer(&m->config, l, &m->layers[l], &m->layer_inputs[l], &m->positions,
                                 &want, false);
        const moira_tensor_t *got = l + 1 < m->n_layers ? &m->layer_inputs[l + 1] : &m->out;
        double nmse = status ? 0 : run_model_nmse(got, &want);
        if (!status && nmse > limit && isfinite(nmse)) {
            int excluded = 0;
            status = moira_ref_layer_near_ties(&m->config, &m->layers[l], &m->layer_inputs[l],
                                               &m->positions, sqrtf((float)limit), tie);
            if (!status)
                nmse = moira_nmse_without_ties(got->data, want.data, t, d, tie, limit, &excluded);
            *out_near_ties += excluded;
        }
        if (!(nmse <= *out_worst_nmse)) { /* a NaN, once seen, stays the worst */
            *out_worst_nmse = nmse;
            *out_worst_layer = l;
        }
    }
    free(tie);
    moira_tensor_release(&want);
    return status;
}
