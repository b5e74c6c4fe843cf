/* The generation loop for one sequence (runtime/engine/generation.h). */
#include "runtime/engine/generation.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"
#include "runtime/engine/completion.h"

/* The prompt's uncached tokens in chunks of the engine's step size; the last chunk's logits
 * choose the first generated token. */
static moira_status_t prefill(moira_engine_t *engine, int sequence,
                              const moira_generation_request_t *r, const float **logits) {
    int64_t chunk = moira_engine_options(engine)->max_rows;
    for (int64_t at = r->cached; at < r->n_prompt; at += chunk) {
        int64_t n = r->n_prompt - at < chunk ? r->n_prompt - at : chunk;
        moira_engine_input_t in = {.sequence = sequence, .ids = r->prompt + at, .n = n};
        MOIRA_RETURN_IF_ERROR(moira_engine_step(engine, &in, 1, logits));
    }
    return MOIRA_OK_STATUS;
}

static moira_status_t check_request(const moira_engine_t *engine, int sequence,
                                    const moira_generation_request_t *r) {
    int64_t context = moira_engine_options(engine)->context;
    if (r->n_prompt < 1)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "the prompt holds no tokens");
    if (r->cached < 0 || r->cached >= r->n_prompt ||
        moira_engine_length(engine, sequence) != r->cached)
        return moira_status_make(MOIRA_CODE_INTERNAL, "generation: cache holds %lld, asked %lld",
                                 (long long)moira_engine_length(engine, sequence),
                                 (long long)r->cached);
    if (r->n_prompt + r->max_tokens > context)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "the prompt's %lld tokens and up to %lld new ones exceed the "
                                 "context of %lld tokens",
                                 (long long)r->n_prompt, (long long)r->max_tokens,
                                 (long long)context);
    return MOIRA_OK_STATUS;
}

/* Decodes until the completion finishes: eos, a stop string, a cancelled stream or max_tokens. */
static moira_status_t decode(moira_engine_t *engine, const moira_model_files_t *model, int sequence,
                             const moira_generation_request_t *r, moira_completion_t *completion,
                             const float *logits, moira_generation_result_t *out) {
    for (;;) {
        if (r->on_logits)
            MOIRA_RETURN_IF_ERROR(r->on_logits(r->logits_context, logits, model->vocab));
        int32_t id;
        bool finished;
        MOIRA_RETURN_IF_ERROR(moira_completion_next(completion, logits, &id, &finished));
        if (finished) return MOIRA_OK_STATUS;
        moira_engine_input_t in = {.sequence = sequence, .ids = &id, .n = 1};
        MOIRA_RETURN_IF_ERROR(moira_engine_step(engine, &in, 1, &logits));
        out->decode_tokens++;
    }
}

/* The completion's output, copied into the caller's result. */
static moira_status_t take_output(const moira_completion_t *completion,
                                  moira_generation_result_t *out) {
    int64_t count;
    const int32_t *ids = moira_completion_ids(completion, &count);
    for (int64_t i = 0; i < count; i++)
        MOIRA_RETURN_IF_ERROR(moira_token_ids_push(&out->ids, ids[i]));
    const char *text = moira_completion_text(completion, &out->text_len);
    out->text = malloc(out->text_len + 1);
    if (!out->text) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    memcpy(out->text, text, out->text_len + 1);
    out->finish_reason = moira_completion_finish_reason(completion);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_generate(moira_engine_t *engine, const moira_model_files_t *model,
                              int sequence, const moira_generation_request_t *r,
                              moira_generation_text_fn on_text, void *context,
                              moira_generation_result_t *out) {
    memset(out, 0, sizeof(*out));
    MOIRA_RETURN_IF_ERROR(check_request(engine, sequence, r));
    moira_completion_t *completion = NULL;
    MOIRA_RETURN_IF_ERROR(moira_completion_create(model, &completion));
    moira_completion_params_t params = {.max_tokens = r->max_tokens,
                                        .stops = r->stops,
                                        .n_stops = r->n_stops,
                                        .sampling = r->sampling};
    moira_status_t status = moira_completion_start(completion, &params, on_text, context);
    const float *logits = NULL;
    double start = moira_now_seconds();
    if (!status) status = prefill(engine, sequence, r, &logits);
    double prefilled = moira_now_seconds();
    out->prefill_s = prefilled - start;
    out->prefill_tokens = r->n_prompt - r->cached;
    if (!status) status = decode(engine, model, sequence, r, completion, logits, out);
    out->decode_s = moira_now_seconds() - prefilled;
    if (!status) status = take_output(completion, out);
    moira_completion_destroy(completion);
    return status;
}

void moira_generation_result_free(moira_generation_result_t *result) {
    moira_token_ids_free(&result->ids);
    free(result->text);
    memset(result, 0, sizeof(*result));
}
