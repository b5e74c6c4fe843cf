/* A sequence's output, token by token (runtime/engine/completion.h). */
#include "runtime/engine/completion.h"

#include <stdlib.h>
#include <string.h>

struct moira_completion {
    const moira_model_files_t *model; /* borrowed */
    moira_completion_params_t params;
    moira_sampler_t sampler;    /* owned scratch, reseeded by each start */
    moira_detokenizer_t *detok; /* owned */
    moira_token_ids_t ids;      /* owned; emptied by each start */
    char *text;                 /* owned: the text so far, NUL-terminated */
    size_t len, capacity;       /* of text */
    size_t emitted;             /* bytes already given to on_text */
    size_t hold;                /* trailing bytes held back: they could start a stop string */
    moira_completion_text_fn on_text;
    void *context;
    bool cancelled, finished;
    const char *finish_reason;
};

moira_status_t moira_completion_create(const moira_model_files_t *model, moira_completion_t **out) {
    *out = NULL;
    moira_completion_t *c = calloc(1, sizeof(*c));
    if (!c) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "completion: out of memory");
    c->model = model;
    c->capacity = 4096;
    c->text = malloc(c->capacity);
    moira_sampling_t greedy = {.top_p = 1};
    moira_status_t status =
        c->text ? moira_sampler_init(&c->sampler, &greedy, (int32_t)model->vocab)
                : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "completion: out of memory");
    if (!status) status = moira_detokenizer_create(model->tokenizer, false, &c->detok);
    if (status) {
        moira_completion_destroy(c);
        return status;
    }
    *out = c;
    return MOIRA_OK_STATUS;
}

void moira_completion_destroy(moira_completion_t *c) {
    if (!c) return;
    moira_sampler_free(&c->sampler);
    moira_detokenizer_free(c->detok);
    moira_token_ids_free(&c->ids);
    free(c->text);
    free(c);
}

moira_status_t moira_completion_start(moira_completion_t *c, const moira_completion_params_t *p,
                                      moira_completion_text_fn on_text, void *context) {
    if (p->max_tokens < 1)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "max_tokens must be >= 1, got %lld",
                                 (long long)p->max_tokens);
    MOIRA_RETURN_IF_ERROR(moira_sampler_reseed(&c->sampler, &p->sampling));
    const char *rest;
    size_t rest_len;
    moira_detokenizer_finish(c->detok, &rest, &rest_len); /* forgets a cancelled output's tail */
    c->params = *p;
    c->ids.count = 0;
    c->len = c->emitted = c->hold = 0;
    c->text[0] = '\0';
    for (int i = 0; i < p->n_stops; i++)
        if (strlen(p->stops[i]) > c->hold + 1) c->hold = strlen(p->stops[i]) - 1;
    c->on_text = on_text;
    c->context = context;
    c->cancelled = c->finished = false;
    c->finish_reason = "length";
    return MOIRA_OK_STATUS;
}

static moira_status_t append(moira_completion_t *c, const char *text, size_t len) {
    if (c->len + len + 1 > c->capacity) {
        size_t capacity = c->capacity;
        while (capacity < c->len + len + 1)
            capacity *= 2;
        char *grown = realloc(c->text, capacity);
        if (!grown) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
        c->text = grown;
        c->capacity = capacity;
    }
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = '\0';
    return MOIRA_OK_STATUS;
}

/* Streams what can no longer be part of a stop string, ending on a character boundary. */
static void emit(moira_completion_t *c, bool all) {
    size_t safe = all ? c->len : (c->len > c->hold ? c->len - c->hold : 0);
    while (safe > c->emitted && safe < c->len && ((unsigned char)c->text[safe] & 0xC0) == 0x80)
        safe--;
    if (safe <= c->emitted) return;
    if (c->on_text && !c->cancelled)
        c->cancelled = !c->on_text(c->context, c->text + c->emitted, safe - c->emitted);
    c->emitted = safe;
}

/* Cuts the text at the first stop string that appears in it; true when one did. Only the tail
 * that the newest piece could complete is searched. */
static bool cut_at_stop(moira_completion_t *c, size_t new_bytes) {
    size_t best = c->len;
    for (int i = 0; i < c->params.n_stops; i++) {
        size_t n = strlen(c->params.stops[i]);
        if (!n || n > c->len) continue;
        size_t from = c->len - new_bytes >= n ? c->len - new_bytes - n + 1 : 0;
        /* memmem, not strstr: a token may decode to a NUL byte, which must not hide what follows. */
        const char *hit = memmem(c->text + from, c->len - from, c->params.stops[i], n);
        if (hit && (size_t)(hit - c->text) < best) best = (size_t)(hit - c->text);
    }
    if (best == c->len) return false;
    c->len = best;
    c->text[best] = '\0';
    if (c->emitted > best) c->emitted = best;
    return true;
}

static bool is_eos(const moira_model_files_t *model, int32_t id) {
    for (int i = 0; i < model->n_eos; i++)
        if (model->eos_ids[i] == id) return true;
    return false;
}

/* Ends the output: the rest of its text goes out. */
static void finish(moira_completion_t *c, const char *reason, bool *finished) {
    c->finish_reason = reason;
    c->finished = *finished = true;
    emit(c, true);
}

moira_status_t moira_completion_next(moira_completion_t *c, const float *logits, int32_t *next,
                                     bool *finished) {
    *finished = c->finished;
    if (c->finished) return MOIRA_OK_STATUS;
    int32_t id = moira_sampler_next(&c->sampler, logits);
    MOIRA_RETURN_IF_ERROR(moira_token_ids_push(&c->ids, id));
    if (!c->params.ignore_eos && is_eos(c->model, id)) {
        finish(c, "stop", finished);
        return MOIRA_OK_STATUS;
    }
    /* The embedding may have more rows than the tokenizer has tokens (DeepSeek-V3 pads 128815
     * tokens to 129280 rows); such an id has no text, as Hugging Face decodes it. */
    const char *piece = "";
    size_t len = 0;
    if (id < moira_tokenizer_vocab_size(c->model->tokenizer))
        MOIRA_RETURN_IF_ERROR(moira_detokenizer_push(c->detok, id, &piece, &len));
    MOIRA_RETURN_IF_ERROR(append(c, piece, len));
    if (cut_at_stop(c, len) || (emit(c, false), c->cancelled)) {
        finish(c, "stop", finished);
        return MOIRA_OK_STATUS;
    }
    if ((int64_t)c->ids.count == c->params.max_tokens) {
        const char *rest;
        moira_detokenizer_finish(c->detok, &rest, &len);
        MOIRA_RETURN_IF_ERROR(append(c, rest, len));
        finish(c, cut_at_stop(c, len) ? "stop" : "length", finished);
        return MOIRA_OK_STATUS;
    }
    *next = id;
    return MOIRA_OK_STATUS;
}

const int32_t *moira_completion_ids(const moira_completion_t *c, int64_t *count) {
    *count = (int64_t)c->ids.count;
    return c->ids.ids;
}

const char *moira_completion_text(const moira_completion_t *c, size_t *len) {
    *len = c->len;
    return c->text;
}

const char *moira_completion_finish_reason(const moira_completion_t *c) {
    return c->finish_reason;
}
