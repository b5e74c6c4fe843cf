/* The HTTP routes over libmicrohttpd (runtime/server/http_server.h). */
#include "runtime/server/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/clock.h"
#include "runtime/server/http_answer.h"
#include "runtime/server/receive_deadline.h"

struct serve_http {
    struct MHD_Daemon *daemon;
    serve_deadlines_t *deadlines; /* owned: each request must arrive within receive_s */
    MHD_socket listener; /* after serve_http_quiesce: closed only once the daemon has stopped */
    serve_http_options_t options;
    serve_http_backend_t backend;
    atomic_bool ready;
    atomic_int answering; /* connections with a submitted generation not yet completed */
    /* Request bodies parsed at once: a body of --max-body bytes of JSON takes many times that in
     * memory while it is parsed and tokenized, so a crowd of large bodies waits its turn. */
    sem_t parsing;
};

#define PARALLEL_PARSES 4

/* One HTTP request while it is being received and answered. */
typedef struct connection {
    char *body; /* owned */
    size_t len, capacity;
    size_t received; /* body bytes, kept or not */
    bool too_large, answered;
    bool generating; /* counted in serve_http's `answering` until completed */
} connection_t;

/* The receive deadline on_connection gave the connection (NULL when there was no room). */
static serve_deadline_t *deadline_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* Counts an outcome in the metrics (only once the model is up: before, there are none). */
static void count(serve_http_t *h, uint64_t *counter) {
    if (!h->backend.metrics) return;
    pthread_mutex_lock(&h->backend.metrics->lock);
    (*counter)++;
    pthread_mutex_unlock(&h->backend.metrics->lock);
}

/* An answer without extra headers; `text` is owned. */
static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type,
                              char *text) {
    return serve_answer_text(c, status, type, text, NULL, NULL);
}

/* An OpenAI-style error body. */
static enum MHD_Result answer_error(struct MHD_Connection *c, unsigned status, const char *message,
                                    const char *type, const char *param, const char *code) {
    return answer(c, status, "application/json", serve_api_error(message, type, param, code));
}

/* A completion or chat request: checked (400 naming the field), queued (429 when the queue is
 * full, 503 while stopping), then answered whole or streamed. */
static enum MHD_Result generate(serve_http_t *h, struct MHD_Connection *c, connection_t *conn,
                                bool chat) {
    serve_api_call_t call;
    const char *param = NULL;
    while (sem_wait(&h->parsing) && errno == EINTR)
        ;
    moira_status_t status = serve_api_parse(h->backend.api, chat, conn->body ? conn->body : "",
                                            conn->len, &call, &param);
    sem_post(&h->parsing);
    if (status) {
        bool memory = moira_status_code(status) == MOIRA_CODE_OUT_OF_MEMORY;
        count(h, &h->backend.metrics->requests_bad);
        enum MHD_Result result =
            answer_error(c, memory ? 500 : 400, moira_status_message(status),
                         memory ? "server_error" : "invalid_request_error", param,
                         param && !strcmp(param, "model") ? "model_not_found" : NULL);
        moira_status_free(status);
        serve_api_call_free(&call);
        return result;
    }
    call.request->submitted = moira_now_seconds();
    serve_submit_result_t submitted = serve_scheduler_submit(h->backend.scheduler, call.request);
    if (submitted != SERVE_SUBMITTED) {
        serve_api_call_free(&call);
        count(h, &h->backend.metrics->requests_rejected);
        return submitted == SERVE_QUEUE_FULL
                   ? serve_answer_text(
                         c, 429, "application/json",
                         serve_api_error("too many requests are waiting; try again later",
                                         "rate_limit_error", NULL, "queue_full"),
                         MHD_HTTP_HEADER_RETRY_AFTER, "1")
                   : answer_error(c, 503, "the server is shutting down", "server_error", NULL,
                                  NULL);
    }
    conn->generating = true;
    atomic_fetch_add(&h->answering, 1);
    if (call.stream) return serve_answer_stream(c, &call);
    enum MHD_Result result = serve_answer_whole(c, &call);
    serve_api_call_free(&call);
    return result;
}

/* 405, saying which method the route takes. */
static enum MHD_Result wrong_method(struct MHD_Connection *c, const char *allowed) {
    char message[32];
    snprintf(message, sizeof(message), "use %s", allowed);
    return serve_answer_text(c, 405, "application/json",
                             serve_api_error(message, "invalid_request_error", NULL, NULL),
                             MHD_HTTP_HEADER_ALLOW, allowed);
}

/* The request's path and method to its answer; everything but /health waits for the model. */
static enum MHD_Result route(serve_http_t *h, struct MHD_Connection *c, connection_t *conn,
                             const char *url, const char *method) {
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    bool ready = atomic_load(&h->ready);
    if (!strcmp(url, "/health"))
        return get ? answer(c, ready ? 200 : 503, "application/json",
                            strdup(ready ? "{\"status\":\"ok\"}" : "{\"status\":\"loading\"}"))
                   : wrong_method(c, "GET");
    bool completions = !strcmp(url, "/v1/completions"), chat = !strcmp(url, "/v1/chat/completions"),
         models = !strcmp(url, "/v1/models"), metrics = !strcmp(url, "/metrics"),
         load = !strcmp(url, "/v1/moira/expert-load"),
         one_model = !strncmp(url, "/v1/models/", strlen("/v1/models/"));
    if (!completions && !chat && !models && !metrics && !load && !one_model) {
        char message[300];
        snprintf(message, sizeof(message), "no route %s %.200s", method, url);
        return answer_error(c, 404, message, "invalid_request_error", NULL, "not_found");
    }
    if ((completions || chat) ? !post : !get)
        return wrong_method(c, (completions || chat) ? "POST" : "GET");
    if (!ready)
        return answer_error(c, 503, "the model is still loading", "server_error", NULL, NULL);
    if (conn->too_large) {
        char message[160];
        snprintf(message, sizeof(message), "the request body is larger than %zu bytes",
                 h->options.max_body);
        count(h, &h->backend.metrics->requests_bad);
        return answer_error(c, 400, message, "invalid_request_error", NULL, NULL);
    }
    if (models) return answer(c, 200, "application/json", serve_api_models(h->backend.api));
    if (one_model) {
        const char *id = url + strlen("/v1/models/");
        if (!strcmp(id, h->backend.api->name))
            return answer(c, 200, "application/json", serve_api_model(h->backend.api));
        char message[300];
        snprintf(message, sizeof(message), "the model '%.200s' does not exist", id);
        return answer_error(c, 404, message, "invalid_request_error", NULL, "model_not_found");
    }
    if (metrics) {
        size_t len = 0;
        serve_device_busy_t experts[32];
        int n = serve_scheduler_read_device_busy(h->backend.scheduler, experts, 32);
        char *text =
            serve_metrics_render(h->backend.metrics, moira_now_seconds(), experts, n, &len);
        return answer(c, 200, "text/plain; version=0.0.4", text);
    }
    if (load) {
        int code = 404;
        const char *error = "expert load is not recorded";
        char *text = h->backend.expert_load
                         ? h->backend.expert_load(h->backend.expert_load_context, &code, &error)
                         : NULL;
        return text ? answer(c, 200, "application/yaml", text)
                    : answer_error(c, (unsigned)code, error, "invalid_request_error", NULL, NULL);
    }
    return generate(h, c, conn, chat);
}

/* Receives the body (up to the limit; a larger one is refused as soon as it shows), then
 * routes. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
    (void)version;
    serve_http_t *h = cls;
    connection_t *conn = *state;
    if (!conn) {
        conn = calloc(1, sizeof(*conn));
        if (!conn) return MHD_NO;
        *state = conn;
        /* A declared body over the limit is refused before it is read when the client waits
         * for "100 Continue" or the body is past all reason; otherwise it is read and dropped,
         * since most clients (Python's, Node's fetch) send it whole and see only a broken pipe
         * if the connection closes under them. */
        const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long declared = length ? strtoull(length, NULL, 10) : 0;
        if (declared <= h->options.max_body) return MHD_YES;
        conn->too_large = true;
        const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
        if (!(expect && !strcasecmp(expect, "100-continue")) && declared / 4 <= h->options.max_body)
            return MHD_YES;
        conn->answered = true;
        serve_deadlines_received(h->deadlines, deadline_of(c));
        return route(h, c, conn, url, method);
    }
    if (*upload_size) {
        /* A body that outgrows the limit is read to its end and dropped (libmicrohttpd answers
         * only once the upload is done), up to a bound past which the connection is closed. */
        conn->received += *upload_size;
        if (conn->received > h->options.max_body) conn->too_large = true;
        if (conn->received / 4 > h->options.max_body) return MHD_NO;
        if (!conn->too_large) {
            if (conn->len + *upload_size + 1 > conn->capacity) {
                size_t capacity = (conn->len + *upload_size + 1) * 2;
                if (capacity > h->options.max_body + 1) capacity = h->options.max_body + 1;
                char *grown = realloc(conn->body, capacity);
                if (!grown) return MHD_NO;
                conn->body = grown;
                conn->capacity = capacity;
            }
            memcpy(conn->body + conn->len, upload, *upload_size);
            conn->len += *upload_size;
            conn->body[conn->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (conn->answered) return MHD_YES;
    conn->answered = true;
    serve_deadlines_received(h->deadlines, deadline_of(c));
    return route(h, c, conn, url, method);
}

/* The request is over (answered, or the client left): its state goes, a kept-alive connection
 * gets its idle timeout back. */
static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code) {
    serve_http_t *h = cls;
    (void)code;
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)SERVE_IDLE_TIMEOUT_S);
    serve_deadlines_rearm(h->deadlines, deadline_of(c));
    connection_t *conn = *state;
    if (!conn) return;
    if (conn->generating) atomic_fetch_sub(&h->answering, 1);
    free(conn->body);
    free(conn);
    *state = NULL;
}

/* A connection opened or closed: its receive deadline starts or goes. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    serve_http_t *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = info ? serve_deadlines_open(h->deadlines, info->connect_fd) : NULL;
    } else {
        serve_deadlines_close(h->deadlines, *socket_context);
        *socket_context = NULL;
    }
}

/* The address to bind: IPv4 or IPv6, numeric. */
static moira_status_t parse_address(const char *host, int port, struct sockaddr_storage *out,
                                    bool *ipv6) {
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *ipv6 = false;
        return MOIRA_OK_STATUS;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *ipv6 = true;
        return MOIRA_OK_STATUS;
    }
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                             "--host \"%s\" is not a numeric IPv4 or IPv6 address", host);
}

moira_status_t serve_http_start(const serve_http_options_t *options, serve_http_t **out) {
    *out = NULL;
    serve_http_t *h = calloc(1, sizeof(*h));
    if (!h) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "serve: out of memory");
    h->options = *options;
    h->listener = MHD_INVALID_SOCKET;
    if (!h->options.host) h->options.host = "127.0.0.1";
    struct sockaddr_storage address;
    bool ipv6 = false;
    moira_status_t status = parse_address(h->options.host, h->options.port, &address, &ipv6);
    if (status) {
        free(h);
        return status;
    }
    status = serve_deadlines_create(h->options.receive_s > 0 ? h->options.receive_s : 30,
                                    h->options.max_connections, &h->deadlines);
    if (status) {
        free(h);
        return status;
    }
    sem_init(&h->parsing, 0, PARALLEL_PARSES);
    /* poll(), not select(): select cannot watch a descriptor past FD_SETSIZE (1024). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ITC | (ipv6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)h->options.port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&address, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)h->options.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)SERVE_IDLE_TIMEOUT_S, MHD_OPTION_END);
    if (!h->daemon) {
        serve_deadlines_destroy(h->deadlines);
        sem_destroy(&h->parsing);
        free(h);
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "cannot listen on %s port %d (in use, or not this machine's "
                                 "address)",
                                 options->host ? options->host : "127.0.0.1", options->port);
    }
    *out = h;
    return MOIRA_OK_STATUS;
}

int serve_http_port(const serve_http_t *h) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : h->options.port;
}

void serve_http_ready(serve_http_t *h, const serve_http_backend_t *backend) {
    h->backend = *backend;
    atomic_store(&h->ready, true);
}

void serve_http_quiesce(serve_http_t *h) {
    if (h->listener == MHD_INVALID_SOCKET) h->listener = MHD_quiesce_daemon(h->daemon);
}

void serve_http_drain(serve_http_t *h, double timeout_s) {
    double until = moira_now_seconds() + timeout_s;
    while (atomic_load(&h->answering) > 0 && moira_now_seconds() < until) {
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

void serve_http_stop(serve_http_t *h) {
    if (!h) return;
    MHD_stop_daemon(h->daemon);
    if (h->listener != MHD_INVALID_SOCKET) close(h->listener);
    serve_deadlines_destroy(h->deadlines);
    sem_destroy(&h->parsing);
    free(h);
}
