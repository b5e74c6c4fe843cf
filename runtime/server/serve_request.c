/* A request shared by its connection and the engine loop (runtime/server/serve_request.h). */
#include "runtime/server/serve_request.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"

serve_request_t *serve_request_create(void) {
    serve_request_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->capacity = 256;
    r->text = malloc(r->capacity);
    if (!r->text) {
        free(r);
        return NULL;
    }
    r->text[0] = '\0';
    r->refs = 1;
    pthread_mutex_init(&r->lock, NULL);
    moira_monotonic_cond_init(&r->changed);
    return r;
}

void serve_request_retain(serve_request_t *r) {
    pthread_mutex_lock(&r->lock);
    r->refs++;
    pthread_mutex_unlock(&r->lock);
}

void serve_request_release(serve_request_t *r) {
    if (!r) return;
    pthread_mutex_lock(&r->lock);
    int refs = --r->refs;
    pthread_mutex_unlock(&r->lock);
    if (refs) return;
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->changed);
    free(r->prompt);
    for (int i = 0; i < SERVE_MAX_STOPS; i++)
        free(r->stop_strings[i]);
    free(r->text);
    free(r->error);
    free(r);
}

/* Grows the text for `len` more bytes; false when memory ran out (the text is then cut short,
 * which the error that follows reports). */
static bool reserve(serve_request_t *r, size_t len) {
    if (r->len + len + 1 <= r->capacity) return true;
    size_t capacity = r->capacity;
    while (capacity < r->len + len + 1)
        capacity *= 2;
    char *grown = realloc(r->text, capacity);
    if (!grown) return false;
    r->text = grown;
    r->capacity = capacity;
    return true;
}

void serve_request_append(serve_request_t *r, const char *text, size_t len,
                          int64_t completion_tokens) {
    pthread_mutex_lock(&r->lock);
    if (reserve(r, len)) {
        memcpy(r->text + r->len, text, len);
        r->len += len;
        r->text[r->len] = '\0';
    }
    r->completion_tokens = completion_tokens;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
}

void serve_request_finish(serve_request_t *r, const char *finish_reason, int64_t completion_tokens,
                          const char *error) {
    pthread_mutex_lock(&r->lock);
    r->finish_reason = finish_reason;
    r->completion_tokens = completion_tokens;
    /* Out of memory for the message leaves error NULL and finish_reason NULL: still a failure. */
    if (error) {
        r->finish_reason = NULL;
        if (!r->error) r->error = strdup(error);
    }
    r->done = true;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
}

void serve_request_refuse(serve_request_t *r, const char *why) {
    pthread_mutex_lock(&r->lock);
    r->unavailable = true;
    pthread_mutex_unlock(&r->lock);
    serve_request_finish(r, NULL, r->completion_tokens, why);
}

void serve_request_cancel(serve_request_t *r) {
    pthread_mutex_lock(&r->lock);
    r->cancelled = true;
    pthread_mutex_unlock(&r->lock);
}

bool serve_request_cancelled(serve_request_t *r) {
    pthread_mutex_lock(&r->lock);
    bool cancelled = r->cancelled;
    pthread_mutex_unlock(&r->lock);
    return cancelled;
}

void serve_request_wait_locked(serve_request_t *r, size_t sent, double timeout_s) {
    if (r->len > sent || r->done) return;
    struct timespec until = moira_monotonic_after(timeout_s);
    while (r->len <= sent && !r->done)
        if (pthread_cond_timedwait(&r->changed, &r->lock, &until) == ETIMEDOUT) return;
}
