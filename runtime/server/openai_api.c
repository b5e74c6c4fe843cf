/* OpenAI's request and response JSON (runtime/server/openai_api.h). */
#include "runtime/server/openai_api.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/text/chat.h"

/* OpenAI's default for /v1/completions; a chat runs to the end of the context by default. */
#define COMPLETIONS_DEFAULT_MAX_TOKENS 16

static moira_status_t bad(const char **param, const char *name, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* A client error naming the field at fault. */
static moira_status_t bad(const char **param, const char *name, const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof(message), format, args);
    va_end(args);
    *param = name;
    return moira_status_make(MOIRA_CODE_INVALID_INPUT, "%s", message);
}

/* A field that is absent or null takes its default. */
static json_t *field(const json_t *body, const char *name) {
    json_t *value = json_object_get(body, name);
    return json_is_null(value) ? NULL : value;
}

static moira_status_t get_number(const json_t *body, const char *name, double min, double max,
                                 double *out, const char **param) {
    json_t *v = field(body, name);
    if (!v) return MOIRA_OK_STATUS;
    if (!json_is_number(v)) return bad(param, name, "'%s' must be a number", name);
    double x = json_number_value(v);
    if (!(x >= min && x <= max))
        return bad(param, name, "'%s' must be between %g and %g, got %g", name, min, max, x);
    *out = x;
    return MOIRA_OK_STATUS;
}

static moira_status_t get_integer(const json_t *body, const char *name, json_int_t min,
                                  json_int_t max, json_int_t *out, const char **param) {
    json_t *v = field(body, name);
    if (!v) return MOIRA_OK_STATUS;
    if (!json_is_integer(v)) return bad(param, name, "'%s' must be an integer", name);
    json_int_t x = json_integer_value(v);
    if (x < min || x > max)
        return bad(param, name, "'%s' must be between %lld and %lld, got %lld", name,
                   (long long)min, (long long)max, (long long)x);
    *out = x;
    return MOIRA_OK_STATUS;
}

static moira_status_t get_bool(const json_t *body, const char *name, bool *out,
                               const char **param) {
    json_t *v = field(body, name);
    if (!v) return MOIRA_OK_STATUS;
    if (!json_is_boolean(v)) return bad(param, name, "'%s' must be true or false", name);
    *out = json_is_true(v);
    return MOIRA_OK_STATUS;
}

/* Fields of the API that Moira does not implement are refused rather than silently ignored,
 * unless they ask for the default behaviour. */
static moira_status_t refuse_unsupported(const json_t *body, bool chat, const char **param) {
    static const char *const must_be_false[] = {"echo", "logprobs", "parallel_tool_calls"};
    static const char *const must_be_zero[] = {"frequency_penalty", "presence_penalty"};
    static const char *const must_be_absent[] = {"suffix",      "tools",     "tool_choice",
                                                 "logit_bias",  "functions", "response_format",
                                                 "top_logprobs"};
    for (size_t i = 0; i < sizeof(must_be_false) / sizeof(*must_be_false); i++) {
        json_t *v = field(body, must_be_false[i]);
        if (v && !json_is_false(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
            return bad(param, must_be_false[i], "'%s' is not supported", must_be_false[i]);
    }
    for (size_t i = 0; i < sizeof(must_be_zero) / sizeof(*must_be_zero); i++) {
        json_t *v = field(body, must_be_zero[i]);
        if (v && !(json_is_number(v) && json_number_value(v) == 0))
            return bad(param, must_be_zero[i], "'%s' is not supported (only 0)", must_be_zero[i]);
    }
    for (size_t i = 0; i < sizeof(must_be_absent) / sizeof(*must_be_absent); i++) {
        json_t *v = field(body, must_be_absent[i]);
        bool empty = !v || (json_is_array(v) && !json_array_size(v)) ||
                     (json_is_string(v) && (!strcmp(json_string_value(v), "none") ||
                                            !strcmp(json_string_value(v), "auto"))) ||
                     (json_is_integer(v) && json_integer_value(v) == 0) ||
                     (!strcmp(must_be_absent[i], "response_format") && json_is_object(v) &&
                      json_is_string(json_object_get(v, "type")) &&
                      !strcmp(json_string_value(json_object_get(v, "type")), "text"));
        if (!empty)
            return bad(param, must_be_absent[i], "'%s' is not supported", must_be_absent[i]);
    }
    json_int_t n = 1, best_of = 1;
    (void)chat;
    MOIRA_RETURN_IF_ERROR(get_integer(body, "n", 1, 1, &n, param));
    return get_integer(body, "best_of", 1, 1, &best_of, param);
}

/* A prompt given as token ids: each must be in the vocabulary. */
static moira_status_t ids_prompt(const json_t *array, int64_t vocab, int64_t context,
                                 moira_token_ids_t *ids, const char **param) {
    if ((int64_t)json_array_size(array) >= context)
        return bad(param, "prompt", "the prompt's %zu tokens leave no room in the context of %lld",
                   json_array_size(array), (long long)context);
    size_t i;
    json_t *v;
    json_array_foreach(array, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
            return bad(param, "prompt", "prompt[%zu] must be a token id from 0 to %lld", i,
                       (long long)vocab - 1);
        MOIRA_RETURN_IF_ERROR(moira_token_ids_push(ids, (int32_t)json_integer_value(v)));
    }
    return MOIRA_OK_STATUS;
}

/* No token is this long: a text longer than this many bytes per token of the context cannot fit
 * it, and is refused before the tokenizer spends time and memory on it. */
#define MAX_BYTES_PER_TOKEN 256

static moira_status_t encode(const serve_api_model_t *m, const char *text, size_t len,
                             bool add_special, moira_token_ids_t *ids, const char **param,
                             const char *name) {
    if ((double)len > (double)m->context * MAX_BYTES_PER_TOKEN)
        return bad(param, name, "the prompt's %zu bytes cannot fit the context of %lld tokens", len,
                   (long long)m->context);
    moira_status_t status =
        moira_tokenizer_encode(m->model->tokenizer, text, len, add_special, ids);
    if (!status) return MOIRA_OK_STATUS;
    moira_status_t out = bad(param, name, "%s", moira_status_message(status));
    moira_status_free(status);
    return out;
}

/* /v1/completions' prompt: a string, one string in an array, token ids, or one list of ids. */
static moira_status_t completion_prompt(const serve_api_model_t *m, const json_t *body,
                                        moira_token_ids_t *ids, const char **param) {
    json_t *prompt = field(body, "prompt");
    if (json_is_array(prompt) && json_array_size(prompt) == 1 &&
        (json_is_string(json_array_get(prompt, 0)) || json_is_array(json_array_get(prompt, 0))))
        prompt = json_array_get(prompt, 0);
    if (json_is_string(prompt))
        return encode(m, json_string_value(prompt), json_string_length(prompt), true, ids, param,
                      "prompt");
    if (json_is_array(prompt) && json_array_size(prompt) > 0 &&
        json_is_integer(json_array_get(prompt, 0)))
        return ids_prompt(prompt, m->model->vocab, m->context, ids, param);
    if (json_is_array(prompt) && json_array_size(prompt) > 1)
        return bad(param, "prompt", "one prompt per request (n = 1): got %zu",
                   json_array_size(prompt));
    return bad(param, "prompt", "'prompt' is required: a string, or an array of token ids");
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined). */
static moira_status_t flatten_content(json_t *message, size_t index, const char **param) {
    json_t *content = json_object_get(message, "content");
    if (!json_is_array(content)) return MOIRA_OK_STATUS;
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") ||
            !json_is_string(text))
            return bad(param, "messages",
                       "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts "
                       "are supported",
                       index, i);
        total += json_string_length(text);
    }
    char *joined = malloc(total + 1);
    if (!joined) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    size_t at = 0;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(joined + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    json_t *flat = json_stringn(joined, total);
    free(joined);
    if (!flat || json_object_set_new(message, "content", flat))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    return MOIRA_OK_STATUS;
}

/* /v1/chat/completions' messages, rendered with the chat template and its generation prompt. */
static moira_status_t chat_prompt(const serve_api_model_t *m, json_t *body, moira_token_ids_t *ids,
                                  const char **param) {
    json_t *messages = field(body, "messages");
    if (!json_is_array(messages) || !json_array_size(messages))
        return bad(param, "messages", "'messages' must be a non-empty array of {role, content}");
    size_t i;
    json_t *message;
    json_array_foreach(messages, i, message) {
        if (!json_is_object(message))
            return bad(param, "messages", "messages[%zu] must be an object", i);
        /* OpenAI's newer name for the system message; chat templates know only "system". */
        json_t *role = json_object_get(message, "role");
        if (json_is_string(role) && !strcmp(json_string_value(role), "developer"))
            json_object_set_new(message, "role", json_string("system"));
        MOIRA_RETURN_IF_ERROR(flatten_content(message, i, param));
    }
    moira_status_t status = moira_chat_check_messages(messages, "request");
    char *text = NULL;
    size_t len = 0;
    if (!status)
        status =
            moira_chat_render(m->model->tokenizer, m->chat_format, messages, true, &text, &len);
    if (status) {
        moira_status_t out = bad(param, "messages", "%s", moira_status_message(status));
        moira_status_free(status);
        return out;
    }
    status = encode(m, text, len, false, ids, param, "messages");
    free(text);
    return status;
}

/* "stop": a string (one stop, read as stop[0]) or up to SERVE_MAX_STOPS non-empty strings. */
static moira_status_t get_stops(const json_t *body, serve_request_t *r, const char **param) {
    json_t *stop = field(body, "stop");
    if (!stop) return MOIRA_OK_STATUS;
    bool one = json_is_string(stop);
    if (!one && (!json_is_array(stop) || json_array_size(stop) > SERVE_MAX_STOPS))
        return bad(param, "stop", "'stop' must be a string or an array of at most %d strings",
                   SERVE_MAX_STOPS);
    size_t n = one ? 1 : json_array_size(stop);
    for (size_t i = 0; i < n; i++) {
        json_t *s = one ? stop : json_array_get(stop, i);
        if (!json_is_string(s) || !json_string_length(s) ||
            strlen(json_string_value(s)) != json_string_length(s))
            return bad(param, "stop", "stop[%zu] must be a non-empty string", i);
        r->stop_strings[i] = strdup(json_string_value(s));
        if (!r->stop_strings[i])
            return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    }
    r->params.stops = (const char *const *)r->stop_strings;
    r->params.n_stops = (int)n;
    return MOIRA_OK_STATUS;
}

static moira_status_t get_sampling(const serve_api_model_t *m, const json_t *body,
                                   moira_sampling_t *s, const char **param) {
    *s = m->defaults;
    json_int_t top_k = s->top_k, seed = (json_int_t)(s->seed & INT64_MAX);
    MOIRA_RETURN_IF_ERROR(get_number(body, "temperature", 0, 2, &s->temperature, param));
    MOIRA_RETURN_IF_ERROR(get_number(body, "top_p", 1e-9, 1, &s->top_p, param));
    MOIRA_RETURN_IF_ERROR(get_integer(body, "top_k", -1, INT32_MAX, &top_k, param));
    MOIRA_RETURN_IF_ERROR(get_integer(body, "seed", INT64_MIN, INT64_MAX, &seed, param));
    s->top_k = top_k < 0 ? 0 : (int32_t)top_k; /* -1 means "off", as vLLM reads it */
    s->seed = (uint64_t)seed;
    return MOIRA_OK_STATUS;
}

/* max_tokens (max_completion_tokens for chat): the prompt and the new tokens must fit the
 * context, said as OpenAI says it. */
static moira_status_t get_max_tokens(const serve_api_model_t *m, const json_t *body, bool chat,
                                     int64_t n_prompt, int64_t *out, const char **param) {
    const char *name =
        chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    json_int_t max_tokens = -1;
    MOIRA_RETURN_IF_ERROR(get_integer(body, name, 1, INT32_MAX, &max_tokens, param));
    if (max_tokens < 0 && !chat) max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS;
    if (max_tokens < 0) max_tokens = m->context - n_prompt;
    if (n_prompt + max_tokens > m->context || max_tokens < 1)
        return bad(param, max_tokens < 1 ? (chat ? "messages" : "prompt") : name,
                   "this model's context holds %lld tokens, but %lld were asked (%lld in the "
                   "prompt, %lld to generate)",
                   (long long)m->context, (long long)(n_prompt + (max_tokens < 1 ? 1 : max_tokens)),
                   (long long)n_prompt, (long long)(max_tokens < 1 ? 1 : max_tokens));
    *out = max_tokens;
    return MOIRA_OK_STATUS;
}

static moira_status_t parse_object(const serve_api_model_t *m, bool chat, json_t *body,
                                   serve_api_call_t *out, const char **param) {
    serve_request_t *r = out->request;
    json_t *model = json_object_get(body, "model");
    if (model && !json_is_string(model)) return bad(param, "model", "'model' must be a string");
    if (model && strcmp(json_string_value(model), m->name))
        return bad(param, "model", "the model '%s' does not exist; this server serves '%s'",
                   json_string_value(model), m->name);
    MOIRA_RETURN_IF_ERROR(refuse_unsupported(body, chat, param));
    MOIRA_RETURN_IF_ERROR(get_bool(body, "stream", &out->stream, param));
    json_t *options = field(body, "stream_options");
    if (options && !json_is_object(options))
        return bad(param, "stream_options", "'stream_options' must be an object");
    if (options)
        MOIRA_RETURN_IF_ERROR(get_bool(options, "include_usage", &out->include_usage, param));
    MOIRA_RETURN_IF_ERROR(get_sampling(m, body, &r->params.sampling, param));
    MOIRA_RETURN_IF_ERROR(get_stops(body, r, param));
    /* vLLM's extension: generate max_tokens whatever comes (what a benchmark needs). */
    MOIRA_RETURN_IF_ERROR(get_bool(body, "ignore_eos", &r->params.ignore_eos, param));
    moira_token_ids_t ids = {0};
    moira_status_t status =
        chat ? chat_prompt(m, body, &ids, param) : completion_prompt(m, body, &ids, param);
    if (!status && !ids.count)
        status = bad(param, chat ? "messages" : "prompt", "the prompt holds no tokens");
    r->prompt = ids.ids;
    r->n_prompt = (int64_t)ids.count;
    if (!status) status = get_max_tokens(m, body, chat, r->n_prompt, &r->params.max_tokens, param);
    return status;
}

moira_status_t serve_api_parse(const serve_api_model_t *m, bool chat, const char *body, size_t len,
                               serve_api_call_t *out, const char **param) {
    memset(out, 0, sizeof(*out));
    *param = NULL;
    out->chat = chat;
    out->model = m->name;
    out->created = (int64_t)time(NULL);
    static unsigned long long counter;
    snprintf(out->id, sizeof(out->id), "%s-%llx%08llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)out->created, __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    out->request = serve_request_create();
    if (!out->request) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    json_error_t error;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return bad(param, NULL, "the body is not valid JSON (line %d, column %d: %s)", error.line,
                   error.column, error.text);
    moira_status_t status = json_is_object(root)
                                ? parse_object(m, chat, root, out, param)
                                : bad(param, NULL, "the body must be a JSON object");
    json_decref(root);
    return status;
}

void serve_api_call_free(serve_api_call_t *call) {
    serve_request_release(call->request);
    call->request = NULL;
}

/* A JSON string of generated text. The detokenizer emits whole characters, so invalid UTF-8
 * would be a bug; it still becomes U+FFFD rather than a dropped response. */
static json_t *text_value(const char *text, size_t len) {
    json_t *s = json_stringn(text, len);
    return s ? s : json_string("\xEF\xBF\xBD");
}

/* A JSON value as compact text (the value is consumed); NULL when out of memory. */
static char *dump(json_t *value) {
    char *text = value ? json_dumps(value, JSON_COMPACT) : NULL;
    json_decref(value);
    return text;
}

/* OpenAI's usage object, with the tokens the prefix cache spared. */
static json_t *usage(const serve_api_call_t *call, int64_t completion_tokens) {
    const serve_request_t *r = call->request;
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)r->n_prompt,
                     "completion_tokens", (json_int_t)completion_tokens, "total_tokens",
                     (json_int_t)(r->n_prompt + completion_tokens), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)r->cached_tokens);
}

/* The fields every completion object carries around its choices. */
static json_t *envelope(const serve_api_call_t *call, const char *object, json_t *choices) {
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", call->id, "object", object, "created",
                     (json_int_t)call->created, "model", call->model, "choices", choices);
}

char *serve_api_response(const serve_api_call_t *call, const char *text, size_t len,
                         const char *finish_reason, int64_t completion_tokens) {
    json_t *choice =
        call->chat ? json_pack("{s:i, s:{s:s, s:o}, s:n, s:s}", "index", 0, "message", "role",
                               "assistant", "content", text_value(text, len), "logprobs",
                               "finish_reason", finish_reason)
                   : json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "text", text_value(text, len),
                               "logprobs", "finish_reason", finish_reason);
    json_t *root = envelope(call, call->chat ? "chat.completion" : "text_completion",
                            json_pack("[o]", choice));
    if (root) json_object_set_new(root, "usage", usage(call, completion_tokens));
    return dump(root);
}

char *serve_api_chunk(const serve_api_call_t *call, const char *text, size_t len, bool first,
                      const char *finish_reason) {
    json_t *choice;
    if (call->chat) {
        json_t *delta = json_object();
        if (first) json_object_set_new(delta, "role", json_string("assistant"));
        if (len || first) json_object_set_new(delta, "content", text_value(text, len));
        choice = json_pack("{s:i, s:o, s:n}", "index", 0, "delta", delta, "logprobs");
    } else {
        choice =
            json_pack("{s:i, s:o, s:n}", "index", 0, "text", text_value(text, len), "logprobs");
    }
    if (choice)
        json_object_set_new(choice, "finish_reason",
                            finish_reason ? json_string(finish_reason) : json_null());
    json_t *root = envelope(call, call->chat ? "chat.completion.chunk" : "text_completion",
                            json_pack("[o]", choice));
    if (root && call->include_usage) json_object_set_new(root, "usage", json_null());
    return dump(root);
}

char *serve_api_usage_chunk(const serve_api_call_t *call, int64_t completion_tokens) {
    json_t *root =
        envelope(call, call->chat ? "chat.completion.chunk" : "text_completion", json_array());
    if (root) json_object_set_new(root, "usage", usage(call, completion_tokens));
    return dump(root);
}

char *serve_api_error(const char *message, const char *type, const char *param, const char *code) {
    return dump(json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type,
                          "param", param, "code", code));
}

/* One model as /v1/models lists it. */
static json_t *model_object(const serve_api_model_t *m) {
    return json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", m->name, "object", "model", "created",
                     (json_int_t)m->created, "owned_by", "moira", "max_model_len",
                     (json_int_t)m->context);
}

char *serve_api_models(const serve_api_model_t *m) {
    return dump(json_pack("{s:s, s:[o]}", "object", "list", "data", model_object(m)));
}

char *serve_api_model(const serve_api_model_t *m) {
    return dump(model_object(m));
}
