/* Whole and streamed answers of a generation (runtime/server/http_answer.h). */
#include "runtime/server/http_answer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* How often a connection waiting on its request looks whether its client is still there. */
#define PEER_CHECK_S 0.1

/* A streamed answer: the SSE bytes formatted and not yet handed to MHD. */
typedef struct stream {
    serve_api_call_t call;             /* owned */
    struct MHD_Connection *connection; /* borrowed: lives as long as its response */
    int fd;
    char *pending; /* owned */
    size_t pending_len, pending_off, sent;
    bool started, ended;
} stream_t;

/* Queues `text` (owned, may be NULL for out of memory) as the answer. */
enum MHD_Result serve_answer_text(struct MHD_Connection *c, unsigned status, const char *type,
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

/* An answer without extra headers. */
static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type,
                              char *text) {
    return serve_answer_text(c, status, type, text, NULL, NULL);
}

/* Whether the client closed its side: a read that would block means it is still there. */
static bool peer_gone(int fd) {
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* The connection's socket, to look at its client without libmicrohttpd. */
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
                              (unsigned)SERVE_IDLE_TIMEOUT_S);
    return true;
}

/* libmicrohttpd asks for the next bytes of the stream: what is pending, else the next events
 * (waiting for them), else the end. */
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

enum MHD_Result serve_answer_stream(struct MHD_Connection *c, serve_api_call_t *call) {
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
enum MHD_Result serve_answer_whole(struct MHD_Connection *c, serve_api_call_t *call) {
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
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)SERVE_IDLE_TIMEOUT_S);
    if (error) return answer(c, failure, "application/json", error);
    return answer(c, MHD_HTTP_OK, "application/json", text);
}
