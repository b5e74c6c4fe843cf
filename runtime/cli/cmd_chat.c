/* `moira chat`: a conversation with a model on the terminal (or through a pipe). Each turn is
 * rendered with the chat template; the tokens an earlier turn left in the cache are reused, so a
 * reply costs only the new message's prefill. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/cli/cli.h"
#include "runtime/cli/generate.h"
#include "runtime/text/chat.h"

#define VERB "chat"

typedef struct chat_args {
    generate_options_t common;
    const char *system;
} chat_args_t;

static void print_help(void) {
    printf("usage: moira chat --model DIR [--system TEXT] [--max-tokens N] [--temperature T]\n"
           "                  [--top-p P] [--top-k K] [--seed S] [--stop STR]...\n"
           "                  [--backend DEVICE]\n\n"
           "Talks with the model: type a message and press Enter; the reply streams as it is\n"
           "generated and the conversation is kept. /exit (or end of input) leaves, /reset\n"
           "starts a new conversation.\n\n"
           "  --system TEXT      a system message opening the conversation\n");
    generate_print_common_help(true);
    printf("\nexit codes: 0 success, 1 a device failed, 2 bad usage or bad input\n");
}

static int parse_args(int argc, char **argv, chat_args_t *a) {
    for (int i = 1; i < argc; i++) {
        int common = generate_parse_option(VERB, argc, argv, &i, &a->common);
        if (common == 2) return 2;
        if (common == 1) continue;
        if (!strcmp(argv[i], "--system")) {
            if (i + 1 >= argc) return moira_cli_usage_error(VERB, "--system needs a value");
            a->system = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_help();
            return -1;
        } else {
            return moira_cli_usage_error(VERB, "unknown option \"%s\"", argv[i]);
        }
    }
    if (!a->common.model) return moira_cli_usage_error(VERB, "--model DIR is required");
    return 0;
}

/* The conversation so far and the token ids the engine's cache holds. */
typedef struct chat {
    const chat_args_t *args;
    generate_session_t session;
    json_t *messages; /* owned */
    moira_token_ids_t cached;
} chat_t;

static moira_status_t add_message(chat_t *c, const char *role, const char *text, size_t len) {
    json_t *message = json_pack("{s:s, s:s%}", "role", role, "content", text, len);
    if (!message || json_array_append_new(c->messages, message))
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "the message is not valid UTF-8 text");
    return MOIRA_OK_STATUS;
}

static moira_status_t reset(chat_t *c) {
    json_array_clear(c->messages);
    c->cached.count = 0;
    moira_engine_reset(c->session.engine, 0);
    if (!c->args->system) return MOIRA_OK_STATUS;
    return add_message(c, "system", c->args->system, strlen(c->args->system));
}

static bool print_text(void *context, const char *text, size_t len) {
    (void)context;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return !ferror(stdout);
}

/* How many leading ids the new prompt shares with what the cache holds (at least one token of
 * the prompt is always run, for its logits). */
static int64_t shared_prefix(const moira_token_ids_t *cached, const moira_token_ids_t *prompt) {
    size_t n = 0;
    while (n < cached->count && n < prompt->count && cached->ids[n] == prompt->ids[n])
        n++;
    return (int64_t)(n < prompt->count ? n : prompt->count - 1);
}

/* One user message in, the reply streamed out and kept in the conversation. */
static moira_status_t turn(chat_t *c, const char *line, size_t len) {
    MOIRA_RETURN_IF_ERROR(add_message(c, "user", line, len));
    char *text = NULL;
    size_t text_len = 0;
    moira_token_ids_t prompt = {0};
    moira_status_t status =
        moira_chat_render(c->session.model.tokenizer, c->args->common.chat_format, c->messages,
                          true, &text, &text_len);
    if (!status)
        status = moira_tokenizer_encode(c->session.model.tokenizer, text, text_len, false, &prompt);
    free(text);
    moira_generation_result_t result;
    memset(&result, 0, sizeof(result));
    if (!status) {
        moira_generation_request_t r =
            generate_request(&c->args->common, &c->session, prompt.ids, (int64_t)prompt.count);
        r.cached = shared_prefix(&c->cached, &prompt);
        moira_engine_truncate(c->session.engine, 0, r.cached);
        status =
            moira_generate(c->session.engine, &c->session.model, 0, &r, print_text, NULL, &result);
    }
    if (!status) {
        printf("\n");
        fflush(stdout);
        /* The cache now holds the prompt and every generated token but the last. */
        c->cached.count = 0;
        for (size_t i = 0; !status && i < prompt.count; i++)
            status = moira_token_ids_push(&c->cached, prompt.ids[i]);
        for (size_t i = 0; !status && i + 1 < result.ids.count; i++)
            status = moira_token_ids_push(&c->cached, result.ids.ids[i]);
    }
    if (!status) status = add_message(c, "assistant", result.text, result.text_len);
    moira_generation_result_free(&result);
    moira_token_ids_free(&prompt);
    return status;
}

static moira_status_t converse(chat_t *c) {
    bool tty = isatty(0) && isatty(1);
    char *line = NULL;
    size_t capacity = 0;
    ssize_t len;
    moira_status_t status = reset(c);
    if (!status && tty) fprintf(stderr, "moira chat: /exit leaves, /reset starts over\n");
    while (!status) {
        if (tty) fprintf(stderr, "> ");
        if ((len = getline(&line, &capacity, stdin)) < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            status = reset(c);
            continue;
        }
        if (len == 0) continue;
        status = turn(c, line, (size_t)len);
    }
    free(line);
    return status;
}

int moira_cli_chat(int argc, char **argv) {
    chat_args_t a;
    memset(&a, 0, sizeof(a));
    a.common.max_tokens = -1;
    int code = parse_args(argc, argv, &a);
    if (code) return code < 0 ? 0 : code;
    chat_t c = {.args = &a, .messages = json_array()};
    moira_status_t status = c.messages ? generate_session_open(VERB, &a.common, &c.session)
                                       : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "no memory");
    if (!status && !moira_tokenizer_chat_template(c.session.model.tokenizer, NULL) &&
        !a.common.chat_format)
        status = moira_status_make(MOIRA_CODE_INVALID_INPUT,
                                   "%s/tokenizer_config.json has no chat_template; name a built-in "
                                   "one with --chat-format",
                                   a.common.model);
    if (!status) status = converse(&c);
    generate_session_close(&c.session);
    moira_token_ids_free(&c.cached);
    json_decref(c.messages);
    return moira_status_report(status);
}
