/* Generating text for one sequence: prefill the prompt in chunks, then decode token by token
 * with a sampler, streaming the text as characters complete, until an end-of-sequence token, a
 * stop string or the token limit. `moira generate` and `moira chat` run this. */
#ifndef MOIRA_RUNTIME_ENGINE_GENERATION_H
#define MOIRA_RUNTIME_ENGINE_GENERATION_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/engine/completion.h"
#include "runtime/engine/engine.h"

/* Receives text as it completes; returning false stops generation (finish reason "stop"). */
typedef moira_completion_text_fn moira_generation_text_fn;

/* Receives the logits [vocab] (borrowed for the call) each token was chosen from, in order. */
typedef moira_status_t (*moira_generation_logits_fn)(void *context, const float *logits,
                                                     int64_t vocab);

typedef struct moira_generation_request {
    const int32_t *prompt; /* borrowed */
    int64_t n_prompt;
    int64_t max_tokens;
    const char *const *stops; /* borrowed; n_stops strings that end generation when they appear */
    int n_stops;
    moira_sampling_t sampling;
    /* Tokens of the prompt already in the sequence's cache from an earlier turn (their ids equal
     * the prompt's first `cached` ids): only the rest is prefilled. */
    int64_t cached;
    moira_generation_logits_fn on_logits; /* optional */
    void *logits_context;
} moira_generation_request_t;

typedef struct moira_generation_result {
    moira_token_ids_t ids; /* owned: the generated ids (the eos id included when it ended so) */
    char *text;            /* owned, NUL-terminated: the generated text up to any stop string */
    size_t text_len;
    const char *finish_reason; /* "stop" or "length"; static */
    double prefill_s, decode_s;
    int64_t prefill_tokens, decode_tokens;
} moira_generation_result_t;

/* Generates for `sequence` of `engine`, whose cache must hold exactly request->cached tokens.
 * `on_text` (may be NULL) streams the text. Caller frees *out with
 * moira_generation_result_free, also on error. */
moira_status_t moira_generate(moira_engine_t *engine, const moira_model_files_t *model,
                              int sequence, const moira_generation_request_t *request,
                              moira_generation_text_fn on_text, void *context,
                              moira_generation_result_t *out);

void moira_generation_result_free(moira_generation_result_t *result);

#endif
