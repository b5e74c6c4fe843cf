/* One HTTP request's generation, shared by the connection that asked for it and the engine loop
 * that runs it: the prompt and parameters (fixed once submitted), the text produced so far, and
 * how it ended. The connection waits on it and reads the text as it grows; the engine loop
 * appends and finishes; either side may be first to let go (reference counted). */
#ifndef MOIRA_RUNTIME_SERVER_SERVE_REQUEST_H
#define MOIRA_RUNTIME_SERVER_SERVE_REQUEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/engine/completion.h"

#define SERVE_MAX_STOPS 4

typedef struct serve_request {
    /* Fixed before submission. */
    int32_t *prompt; /* owned */
    int64_t n_prompt;
    moira_completion_params_t params;    /* stops point into stop_strings */
    char *stop_strings[SERVE_MAX_STOPS]; /* owned */
    double submitted;                    /* moira_now_seconds() */

    /* Shared: read and written under lock; `changed` is signalled on every change. */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    char *text; /* owned: the text so far (NUL-terminated) */
    size_t len, capacity;
    int64_t completion_tokens;
    int64_t cached_tokens;     /* prompt tokens a cached prefix spared */
    double first_token;        /* when the first token was chosen (0: not yet) */
    const char *finish_reason; /* static: "stop" or "length"; set when done */
    char *error;               /* owned: why it failed, when it did (done is then set) */
    bool running, done, cancelled;
    bool unavailable; /* it failed because the server stops (HTTP 503, not 500) */
    int refs;
} serve_request_t;

/* A request with one reference (the caller's). NULL when out of memory. */
serve_request_t *serve_request_create(void);

void serve_request_retain(serve_request_t *request);

/* Drops one reference; the last frees the request. */
void serve_request_release(serve_request_t *request);

/* Engine side: adds generated text and the token count so far, waking the connection. */
void serve_request_append(serve_request_t *request, const char *text, size_t len,
                          int64_t completion_tokens);

/* Engine side: the request ended, with `finish_reason` (static) or, when `error` is not NULL, with
 * that error (copied). */
void serve_request_finish(serve_request_t *request, const char *finish_reason,
                          int64_t completion_tokens, const char *error);

/* Engine side: the request ends unfinished because the server stops. */
void serve_request_refuse(serve_request_t *request, const char *why);

/* Connection side: the client left or the server stops; the engine loop drops the request at
 * its next step. */
void serve_request_cancel(serve_request_t *request);

/* Whether the engine loop should drop the request. */
bool serve_request_cancelled(serve_request_t *request);

/* Connection side: waits (at most `timeout_s`) until there is text past `sent` bytes or the
 * request is done. Call with the lock held, as a condition wait does. */
void serve_request_wait_locked(serve_request_t *request, size_t sent, double timeout_s);

#endif
