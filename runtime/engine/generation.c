/* The generation loop for one sequence (runtime/engine/generation.h). */
#include "runtime/engine/generation.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"

/* The generated text, and how much of it has been streamed. Held-back bytes could still turn
 * out to start a stop string. */
typedef struct text_stream {
    char *text;
    size_t len, capacity, emitted, hold;
    moira_generation_text_fn on_text;
    void *context;
    bool cancelled;
} text_stream_t;

static moira_status_t append(text_stream_t *s, const char *text, size_t len) {
    if (s->len + len + 1 > s->capacity) {
        size_t capacity = s->capacity ? s->capacity : 256;
        while (capacity < s->len + len + 1)
            capacity *= 2;
        char *grown = realloc(s->text, capacity);
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
        s->text = grown;
        s->capacity = capacity;
    }
    memcpy(s->text + s->len, text, len);
    s->len += len;
    s->text[s->len] = '\0';
    return MOIRA_OK_STATUS;
}

/* Streams what can no longer be part of a stop string, ending on a character boundary. */
static void emit(text_stream_t *s, bool all) {
    size_t safe = all ? s->len : (s->len > s->hold ? s->len - s->hold : 0);
    while (safe > s->emitted && safe < s->len && ((unsigned char)s->text[safe] & 0xC0) == 0x80)
        safe--;
    if (safe <= s->emitted) return;
    if (s->on_text && !s->cancelled)
        s->cancelled = !s->on_text(s->context, s->text + s->emitted, safe - s->emitted);
    s->emitted = safe;
}

/* Cuts the text at the first stop string that appears in it; true when one did. Only the tail
 * that the newest piece could complete is searched. */
static bool cut_at_stop(text_stream_t *s, const moira_generation_request_t *r, size_t new_bytes) {
    size_t best = s->len;
    for (int i = 0; i < r->n_stops; i++) {
        size_t n = strlen(r->stops[i]);
        if (!n || n > s->len) continue;
        size_t from = s->len - new_bytes >= n ? s->len - new_bytes - n + 1 : 0;
        const char *hit = strstr(s->text + from, r->stops[i]);
        if (hit && (size_t)(hit - s->text) < best) best = (size_t)(hit - s->text);
    }
    if (best == s->len) return false;
    s->len = best;
    s->text[best] = '\0';
    if (s->emitted > best) s->emitted = best;
    return true;
}

static bool is_eos(const moira_model_files_t *model, int32_t id) {
    for (int i = 0; i < model->n_eos; i++)
        if (model->eos_ids[i] == id) return true;
    return false;
}

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

/* Decodes until eos, a stop string, a cancelled stream or max_tokens. */
static moira_status_t decode(moira_engine_t *engine, const moira_model_files_t *model, int sequence,
                             const moira_generation_request_t *r, moira_sampler_t *sampler,
                             moira_detokenizer_t *detok, text_stream_t *stream, const float *logits,
                             moira_generation_result_t *out) {
    out->finish_reason = "length";
    for (int64_t i = 0; i < r->max_tokens; i++) {
        if (r->on_logits)
            MOIRA_RETURN_IF_ERROR(r->on_logits(r->logits_context, logits, model->vocab));
        int32_t id = moira_sampler_next(sampler, logits);
        MOIRA_RETURN_IF_ERROR(moira_token_ids_push(&out->ids, id));
        if (is_eos(model, id)) {
            out->finish_reason = "stop";
            return MOIRA_OK_STATUS;
        }
        /* The embedding may have more rows than the tokenizer has tokens (DeepSeek-V3 pads
         * 128815 tokens to 129280 rows); such an id has no text, as Hugging Face decodes it. */
        const char *piece = "";
        size_t len = 0;
        if (id < moira_tokenizer_vocab_size(model->tokenizer))
            MOIRA_RETURN_IF_ERROR(moira_detokenizer_push(detok, id, &piece, &len));
        MOIRA_RETURN_IF_ERROR(append(stream, piece, len));
        if (cut_at_stop(stream, r, len) || (emit(stream, false), stream->cancelled)) {
            out->finish_reason = "stop";
            return MOIRA_OK_STATUS;
        }
        if (i + 1 == r->max_tokens) break;
        moira_engine_input_t in = {.sequence = sequence, .ids = &id, .n = 1};
        MOIRA_RETURN_IF_ERROR(moira_engine_step(engine, &in, 1, &logits));
        out->decode_tokens++;
    }
    const char *rest;
    size_t len;
    moira_detokenizer_finish(detok, &rest, &len);
    MOIRA_RETURN_IF_ERROR(append(stream, rest, len));
    if (cut_at_stop(stream, r, len)) out->finish_reason = "stop";
    return MOIRA_OK_STATUS;
}

moira_status_t moira_generate(moira_engine_t *engine, const moira_model_files_t *model,
                              int sequence, const moira_generation_request_t *r,
                              moira_generation_text_fn on_text, void *context,
                              moira_generation_result_t *out) {
    memset(out, 0, sizeof(*out));
    MOIRA_RETURN_IF_ERROR(check_request(engine, sequence, r));
    text_stream_t stream = {.on_text = on_text, .context = context};
    for (int i = 0; i < r->n_stops; i++)
        if (strlen(r->stops[i]) > stream.hold + 1) stream.hold = strlen(r->stops[i]) - 1;
    moira_sampler_t sampler;
    MOIRA_RETURN_IF_ERROR(moira_sampler_init(&sampler, &r->sampling, (int32_t)model->vocab));
    moira_detokenizer_t *detok = NULL;
    moira_status_t status = moira_detokenizer_create(model->tokenizer, false, &detok);
    if (!status) status = append(&stream, "", 0);
    const float *logits = NULL;
    double start = moira_now_seconds();
    if (!status) status = prefill(engine, sequence, r, &logits);
    double prefilled = moira_now_seconds();
    out->prefill_s = prefilled - start;
    out->prefill_tokens = r->n_prompt - r->cached;
    if (!status) status = decode(engine, model, sequence, r, &sampler, detok, &stream, logits, out);
    out->decode_s = moira_now_seconds() - prefilled;
    if (!status) emit(&stream, true);
    moira_detokenizer_free(detok);
    moira_sampler_free(&sampler);
    out->text = stream.text;
    out->text_len = stream.len;
    return status;
}

void moira_generation_result_free(moira_generation_result_t *result) {
    moira_token_ids_free(&result->ids);
    free(result->text);
    memset(result, 0, sizeof(*result));
}
