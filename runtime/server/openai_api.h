/* The OpenAI HTTP API's JSON: a /v1/completions or /v1/chat/completions body checked and turned
 * into a generation request (prompt ids through the tokenizer, or the chat template for
 * messages), and the responses, streamed chunks and errors written back in OpenAI's shapes. */
#ifndef MOIRA_RUNTIME_SERVER_OPENAI_API_H
#define MOIRA_RUNTIME_SERVER_OPENAI_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/engine/model_files.h"
#include "runtime/server/serve_request.h"

/* What a request is checked against. All borrowed. */
typedef struct serve_api_model {
    const char *name; /* the model id clients name */
    const moira_model_files_t *model;
    const char *chat_format; /* a built-in template, or NULL for the tokenizer's */
    moira_sampling_t defaults;
    int64_t context; /* tokens one sequence may hold */
    int64_t created; /* when the server loaded it (Unix seconds) */
} serve_api_model_t;

/* One call: how to answer it, and its generation request. */
typedef struct serve_api_call {
    bool chat, stream, include_usage;
    char id[40]; /* "cmpl-..." or "chatcmpl-..." */
    int64_t created;
    const char *model;        /* borrowed: serve_api_model_t's name */
    serve_request_t *request; /* owned reference */
} serve_api_call_t;

/* Checks `body` and fills *out. Errors are INVALID_INPUT with a message for the client; *param
 * then names the offending field (static, or NULL). Caller frees *out with
 * serve_api_call_free (also after an error). */
moira_status_t serve_api_parse(const serve_api_model_t *model, bool chat, const char *body,
                               size_t len, serve_api_call_t *out, const char **param);

void serve_api_call_free(serve_api_call_t *call);

/* The rest are malloc'd NUL-terminated JSON texts owned by the caller; NULL when out of memory. */

/* The whole answer of a non-streaming call. */
char *serve_api_response(const serve_api_call_t *call, const char *text, size_t len,
                         const char *finish_reason, int64_t completion_tokens);

/* A streamed chunk: `len` bytes of new text, the assistant role on a chat's first chunk, and the
 * finish reason on the last (NULL before). */
char *serve_api_chunk(const serve_api_call_t *call, const char *text, size_t len, bool first,
                      const char *finish_reason);

/* The usage chunk streamed last when stream_options.include_usage asks for it. */
char *serve_api_usage_chunk(const serve_api_call_t *call, int64_t completion_tokens);

/* {"error": {...}} as OpenAI sends it. `param` may be NULL. */
char *serve_api_error(const char *message, const char *type, const char *param, const char *code);

/* GET /v1/models. */
char *serve_api_models(const serve_api_model_t *model);

/* GET /v1/models/{id}. */
char *serve_api_model(const serve_api_model_t *model);

#endif
