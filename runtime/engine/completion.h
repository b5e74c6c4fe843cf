/* One sequence's output as it is generated: the next token sampled from each step's logits, ids
 * turned into text, the text cut at a stop string, an end-of-sequence id or the token limit, and
 * streamed as soon as it can no longer turn out to start a stop string.
 *
 * moira_generate runs one completion to its end; the server keeps one per batch slot and feeds it
 * a step at a time. A completion's buffers are allocated when it is created and reused by every
 * start, growing only when an output is longer than any before, so a token allocates nothing. */
#ifndef MOIRA_RUNTIME_ENGINE_COMPLETION_H
#define MOIRA_RUNTIME_ENGINE_COMPLETION_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/engine/model_files.h"
#include "runtime/engine/sampler.h"

typedef struct moira_completion moira_completion_t;

/* Receives text as it completes; returning false ends the completion (finish reason "stop"). */
typedef bool (*moira_completion_text_fn)(void *context, const char *text, size_t len);

typedef struct moira_completion_params {
    int64_t max_tokens;       /* >= 1 */
    const char *const *stops; /* borrowed until the completion finishes; n_stops strings */
    int n_stops;
    moira_sampling_t sampling;
    bool ignore_eos; /* run to max_tokens through end-of-sequence ids (benchmarks) */
} moira_completion_params_t;

/* A completion for `model` (borrowed; outlives it). Caller destroys *out. */
moira_status_t moira_completion_create(const moira_model_files_t *model, moira_completion_t **out);

void moira_completion_destroy(moira_completion_t *completion);

/* Starts a new output, forgetting the last one. `on_text` (may be NULL) receives the text.
 * Errors: INVALID_ARGUMENT for sampling parameters out of range or max_tokens < 1. */
moira_status_t moira_completion_start(moira_completion_t *completion,
                                      const moira_completion_params_t *params,
                                      moira_completion_text_fn on_text, void *context);

/* Chooses the next token from `logits` [vocab] (borrowed) and adds its text. Sets *finished when
 * the output is complete (its text then all streamed); otherwise *next is the id the engine must
 * be fed to produce the following logits. */
moira_status_t moira_completion_next(moira_completion_t *completion, const float *logits,
                                     int32_t *next, bool *finished);

/* The ids chosen so far (an end-of-sequence id included when it ended so), borrowed. */
const int32_t *moira_completion_ids(const moira_completion_t *completion, int64_t *count);

/* The text so far, up to any stop string, NUL-terminated and borrowed. */
const char *moira_completion_text(const moira_completion_t *completion, size_t *len);

/* "stop" (an end-of-sequence id, a stop string or a cancelled stream) or "length"; static. */
const char *moira_completion_finish_reason(const moira_completion_t *completion);

#endif
