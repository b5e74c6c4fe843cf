/* `moira serve`'s HTTP side: libmicrohttpd, one thread per connection, routing the OpenAI API
 * (completions, chat completions, models), /health, /metrics and /v1/moira/expert-load to the
 * engine loop. It listens before the model is loaded, answering 503 until it is ready. */
#ifndef MOIRA_RUNTIME_SERVER_HTTP_SERVER_H
#define MOIRA_RUNTIME_SERVER_HTTP_SERVER_H

#include <stddef.h>

#include "runtime/server/metrics.h"
#include "runtime/server/openai_api.h"
#include "runtime/server/scheduler.h"

typedef struct serve_http serve_http_t;

typedef struct serve_http_options {
    const char *host; /* an IPv4 or IPv6 address to bind; default 127.0.0.1 */
    int port;         /* 0: any free port (serve_http_port says which) */
    size_t max_body;  /* bytes a request body may hold */
    int max_connections;
    double receive_s; /* seconds a client has to send a whole request (0: 30) */
} serve_http_options_t;

/* What the routes need once the model is up; all borrowed until serve_http_stop. */
typedef struct serve_http_backend {
    const serve_api_model_t *api;
    serve_scheduler_t *scheduler;
    serve_metrics_t *metrics;
    /* Optional: the expert load observed since start, in moira plan --profile's format (a
     * malloc'd text, or NULL with *status_code and *error set when there is none). */
    char *(*expert_load)(void *context, int *status_code, const char **error);
    void *expert_load_context;
} serve_http_backend_t;

/* Binds and starts answering (503 until serve_http_ready). A port in use or an address that is
 * not one is INVALID_ARGUMENT. Caller stops with serve_http_stop. */
moira_status_t serve_http_start(const serve_http_options_t *options, serve_http_t **out);

int serve_http_port(const serve_http_t *http);

/* The model is loaded: requests go to `backend` from now on. */
void serve_http_ready(serve_http_t *http, const serve_http_backend_t *backend);

/* Stops accepting connections; those open finish. */
void serve_http_quiesce(serve_http_t *http);

/* Waits (at most `timeout_s`) until every generation answered has been sent: the answers of
 * requests that finished just before a stop. */
void serve_http_drain(serve_http_t *http, double timeout_s);

/* Closes every connection and frees. Accepts NULL. */
void serve_http_stop(serve_http_t *http);

#endif
