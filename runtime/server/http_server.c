/* The HTTP routes over libmicrohttpd (runtime/server/http_server.h). */
#include "runtime/server/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/clock.h"

/* How often a connection waiting on its request looks whether its client is still there. */
#define PEER_CHECK_S 0.1
/* Seconds a connection may sit idle (sending nothing, or being sent nothing) before it is closed:
 * a guard against clients that open connections and dribble. A connection answering a
 * generation is exempt while it waits for tokens (a queued request may wait minutes); it watches
 * its client itself. */
#define IDLE_TIMEOUT_S 30

struct serve_http {
    struct MHD_Daemon *daemon;
    MHD_socket listener; /* after serve_http_quiesce: closed only once the daemon has stopped */
    serve_http_options_t options;
    serve_http_backend_t backend;
    atomic_bool ready;
    atomic_int answering; /* connections with a submitted generation not yet completed */
};

/* One HTTP request while it is being received and answered. */
typedef struct connection {
    char *body; /* owned */
    size_t len, capacity;
    size_t received; /* body bytes, kept or not */
    bool too_large, answered;
    bool generating; /* counted in serve_http's `answering` until completed */
} connection_t;

/* A streamed answer: the SSE bytes formatted and not yet handed to MHD. */
typedef struct stream {
    serve_api_call_t call;             /* owned */
    struct MHD_Connection *connection; /* borrowed: lives as long as its response */
    int fd;
    char *pending; /* owned */
    size_t pending_len, pending_off, sent;
    bool started, ended;
    serve_metrics_t *metrics;
} stream_t;

static void count(serve_http_t *h, uint64_t *counter) {
    if (!h->backend.metrics) return;
    pthread_mutex_lock(&h->backend.metrics->lock);
    (*counter)++;
    pthread_mutex_unlock(&h->backend.metrics->lock);
}

/* Queues `text` (owned, may be NULL for out of memory) as the answer. */
static enum MHD_Result answer_with(struct MHD_Connection *c, unsigned status, const char *type,
                                   char *text, const char *header, const char *value) {
    if (!text) {
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        type = "application/json";
        text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}");
        if (!text) return MHD_NO;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (header) MHD_add_response_header(r, header, value);
    enum MHD_Result result = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return result;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type,
                              char *text) {
    return answer_with(c, status, type, text, NULL, NULL);
}

static enum MHD_Result answer_error(struct MHD_Connection *c, unsigned status, const char *message,
                                    const char *type, const char *param, const char *code) {
    return answer(c, status, "application/json", serve_api_error(message, type, param, code));
}

/* Whether the client closed its side: a read that would block means it is still there. */
static bool peer_gone(int fd) {
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

/* libmicrohttpd counts time blocked in a handler as idle time: lift the limit while a
 * generation is answered (and restored once the wait is over). */
static void wait_without_timeout(struct MHD_Connection *c) {
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)0);
}

/* Appends one SSE event to the stream's pending bytes; false when memory ran out. */
static bool add_event(stream_t *s, char *json) {
    if (!json) return false;
    size_t len = strlen(json), need = s->pending_len + len + sizeof("data: \n\n");
    char *grown = realloc(s->pending, need);
    if (!grown) {
        free(json);
        return false;
    }
    s->pending = grown;
    s->pending_len += (size_t)sprintf(s->pending + s->pending_len, "data: %s\n\n", json);
    free(json);
    return true;
}

/* What a stream takes from its request under the lock, to format outside it (the engine loop
 * appends to the request under the same lock and must not wait for JSON to be written). */
typedef struct stream_snapshot {
    char *text; /* owned: the text not yet sent */
    size_t len;
    bool done;
    const char *finish_reason;
    char *error; /* owned */
    int64_t completion_tokens;
} stream_snapshot_t;

/* The closing events: the finish (or the error), usage when asked, then [DONE]. */
static bool end_events(stream_t *s, const stream_snapshot_t *snap) {
    bool ok;
    if (snap->finish_reason) {
        ok = add_event(s, serve_api_chunk(&s->call, "", 0, false, snap->finish_reason));
        if (ok && s->call.include_usage)
            ok = add_event(s, serve_api_usage_chunk(&s->call, snap->completion_tokens));
    } else {
        ok = add_event(s, serve_api_error(snap->error ? snap->error : "generation failed",
                                          "server_error", NULL, NULL));
    }
    return ok && add_event(s, strdup("[DONE]"));
}

/* Waits (at most PEER_CHECK_S) for new text or the end, and copies what there is. */
static bool take_snapshot(stream_t *s, stream_snapshot_t *snap) {
    serve_request_t *r = s->call.request;
    memset(snap, 0, sizeof(*snap));
    pthread_mutex_lock(&r->lock);
    serve_request_wait_locked(r, s->sent, PEER_CHECK_S);
    snap->len = r->len - s->sent;
    snap->text = malloc(snap->len + 1);
    snap->done = r->done;
    snap->finish_reason = r->finish_reason;
    snap->error = r->done && r->error ? strdup(r->error) : NULL;
    snap->completion_tokens = r->completion_tokens;
    if (snap->text) memcpy(snap->text, r->text + s->sent, snap->len);
    pthread_mutex_unlock(&r->lock);
    s->sent += snap->len;
    return snap->text != NULL;
}

/* Waits for the request's next text (or its end) and formats it as events. False when the
 * client left, or memory ran out: the stream then ends with an error. The idle timeout is lifted
 * only while waiting, so a client that stops reading is still dropped. */
static bool refill(stream_t *s) {
    s->pending_len = s->pending_off = 0;
    wait_without_timeout(s->connection);
    for (;;) {
        stream_snapshot_t snap;
        bool ok = take_snapshot(s, &snap);
        if (ok && (snap.len || (!s->started && s->call.chat))) {
            ok = add_event(s, serve_api_chunk(&s->call, snap.text, snap.len, !s->started, NULL));
            s->started = true;
        }
        if (ok && snap.done) {
            ok = end_events(s, &snap);
            s->ended = true;
        }
        free(snap.text);
        free(snap.error);
        if (!ok) return false;
        if (s->pending_len) break;
        if (peer_gone(s->fd)) return false;
    }
    MHD_set_connection_option(s->connection, MHD_CONNECTION_OPTION_TIMEOUT,
                              (unsigned)IDLE_TIMEOUT_S);
    return true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_t *s = cls;
    if (s->pending_off == s->pending_len) {
        if (s->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!refill(s)) {
            serve_request_cancel(s->call.request);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = s->pending_len - s->pending_off < max ? s->pending_len - s->pending_off : max;
    memcpy(buf, s->pending + s->pending_off, n);
    s->pending_off += n;
    return (ssize_t)n;
}

/* The response is gone (sent, or the client left): a request still running is cancelled. */
static void stream_free(void *cls) {
    stream_t *s = cls;
    serve_request_cancel(s->call.request);
    serve_api_call_free(&s->call);
    free(s->pending);
    free(s);
}

static enum MHD_Result answer_stream(serve_http_t *h, struct MHD_Connection *c,
                                     serve_api_call_t *call) {
    stream_t *s = calloc(1, sizeof(*s));
    if (!s) {
        serve_request_cancel(call->request);
        serve_api_call_free(call);
        return answer(c, 500, "application/json", NULL);
    }
    s->call = *call;
    memset(call, 0, sizeof(*call));
    s->connection = c;
    s->fd = connection_fd(c);
    s->metrics = h->backend.metrics;
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
    if (!r) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result result = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return result;
}

/* A non-streamed answer: waits for the whole generation, watching for the client leaving. */
static enum MHD_Result answer_whole(struct MHD_Connection *c, serve_api_call_t *call) {
    serve_request_t *r = call->request;
    int fd = connection_fd(c);
    wait_without_timeout(c);
    pthread_mutex_lock(&r->lock);
    while (!r->done) {
        serve_request_wait_locked(r, r->len, PEER_CHECK_S);
        if (r->done) break;
        pthread_mutex_unlock(&r->lock);
        if (peer_gone(fd)) {
            serve_request_cancel(r);
            return MHD_NO;
        }
        pthread_mutex_lock(&r->lock);
    }
    char *text = r->finish_reason ? serve_api_response(call, r->text, r->len, r->finish_reason,
                                                       r->completion_tokens)
                                  : NULL;
    char *error = r->finish_reason ? NULL
                                   : serve_api_error(r->error ? r->error : "generation failed",
                                                     "server_error", NULL, NULL);
    unsigned failure =
        r->unavailable ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_INTERNAL_SERVER_ERROR;
    pthread_mutex_unlock(&r->lock);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S);
    if (error) return answer(c, failure, "application/json", error);
    return answer(c, MHD_HTTP_OK, "application/json", text);
}

static enum MHD_Result generate(serve_http_t *h, struct MHD_Connection *c, connection_t *conn,
                                bool chat) {
    serve_api_call_t call;
    const char *param = NULL;
    moira_status_t status = serve_api_parse(h->backend.api, chat, conn->body ? conn->body : "",
                                            conn->len, &call, &param);
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
                   ? answer_with(c, 429, "application/json",
                                 serve_api_error("too many requests are waiting; try again later",
                                                 "rate_limit_error", NULL, "queue_full"),
                                 MHD_HTTP_HEADER_RETRY_AFTER, "1")
                   : answer_error(c, 503, "the server is shutting down", "server_error", NULL,
                                  NULL);
    }
    conn->generating = true;
    atomic_fetch_add(&h->answering, 1);
    if (call.stream) return answer_stream(h, c, &call);
    enum MHD_Result result = answer_whole(c, &call);
    serve_api_call_free(&call);
    return result;
}

static enum MHD_Result wrong_method(struct MHD_Connection *c, const char *allowed) {
    char message[32];
    snprintf(message, sizeof(message), "use %s", allowed);
    return answer_with(c, 405, "application/json",
                       serve_api_error(message, "invalid_request_error", NULL, NULL),
                       MHD_HTTP_HEADER_ALLOW, allowed);
}

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
    return route(h, c, conn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode code) {
    serve_http_t *h = cls;
    (void)code;
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S);
    connection_t *conn = *state;
    if (!conn) return;
    if (conn->generating) atomic_fetch_sub(&h->answering, 1);
    free(conn->body);
    free(conn);
    *state = NULL;
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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                     (ipv6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)h->options.port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&address, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->options.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_END);
    if (!h->daemon) {
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
    free(h);
}
