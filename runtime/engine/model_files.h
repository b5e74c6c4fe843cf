/* A model directory as Hugging Face ships it, opened for generation: config.json (checked for
 * what Moira implements), the weights (one file or shards with their index, memory-mapped), the
 * tokenizer and chat template, and generation_config.json's sampling defaults. */
#ifndef MOIRA_RUNTIME_ENGINE_MODEL_FILES_H
#define MOIRA_RUNTIME_ENGINE_MODEL_FILES_H

#include <stdbool.h>

#include "ops/weights.h"
#include "runtime/engine/sampler.h"
#include "runtime/text/tokenizer.h"

typedef struct moira_model_files {
    char *dir; /* owned copy of the path */
    moira_model_config_t config;
    moira_safetensors_t *weights;  /* owned: every shard, mapped */
    const moira_tensor_t *embed;   /* borrowed from weights: [vocab, D] */
    const moira_tensor_t *norm;    /* borrowed: the final norm [D] */
    const moira_tensor_t *lm_head; /* borrowed: [vocab, D] (embed when the embeddings are tied) */
    int64_t vocab;
    moira_layer_weights_t *layers; /* owned: num_hidden_layers; the MTP layers are not opened */
    moira_tokenizer_t *tokenizer;  /* owned; NULL when opened without it */
    moira_sampling_t defaults;     /* generation_config.json, else greedy-free HF defaults */
    int32_t eos_ids[4];            /* generation stops at any of these */
    int n_eos;
} moira_model_files_t;

/* Opens `dir`. Refuses, naming what is missing, a model Moira does not implement: model_type
 * other than deepseek_v2 / deepseek_v3 (deepseek_v32's indexer, deepseek_v4), attention other than
 * MLA, an embedding or lm_head whose vocabulary disagrees with config.json, a missing tensor or
 * shard. `with_tokenizer` also loads tokenizer.json and tokenizer_config.json. Errors carry the
 * file (and line:col where there is one) and exit code 2. Caller closes *out. */
moira_status_t moira_model_files_open(const char *dir, bool with_tokenizer,
                                      moira_model_files_t *out);

void moira_model_files_close(moira_model_files_t *files);

/* Bytes of the weights the devices will hold: every decoder layer, the final norm and lm_head
 * (the embedding stays mapped on the host). */
double moira_model_files_device_bytes(const moira_model_files_t *files);

#endif
