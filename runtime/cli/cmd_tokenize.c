/* `moira tokenize`: a model directory's tokenizer and chat template from the command line, for
 * checking Moira's ids against Hugging Face's and for seeing what prompt a conversation becomes. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/cli.h"
#include "runtime/json_string.h"
#include "runtime/read_file.h"
#include "runtime/text/chat.h"
#include "runtime/text/tokenizer.h"

#define VERB "tokenize"
/* Bounds on what stdin or a messages file may hold, against a runaway pipe. */
#define MAX_INPUT_BYTES (256u << 20)

typedef struct tokenize_options {
    const char *model;
    const char *text;
    const char *messages;
    const char *chat_format;
    bool jsonl, json, decode, no_special, skip_special, no_generation_prompt;
} tokenize_options_t;

static void print_help(void) {
    printf("usage: moira tokenize --model DIR [--text TEXT | --jsonl | --messages F.json]\n"
           "                      [--chat-format NAME] [--no-generation-prompt] [--no-special]\n"
           "                      [--json]\n"
           "       moira tokenize --model DIR --decode [--skip-special]\n\n"
           "Encodes text with the model directory's tokenizer.json and tokenizer_config.json, as\n"
           "Hugging Face's `tokenizer(text).input_ids` does (BOS first when add_bos_token).\n\n"
           "  --text TEXT       encode TEXT (without --text, --jsonl or --messages: all of stdin)\n"
           "  --jsonl           read one JSON string per line of stdin, print one JSON array of\n"
           "                    ids per line; a line holding a conversation (a JSON list of\n"
           "                    messages) prints {\"count\", \"ids\", \"prompt\"}\n"
           "  --messages F.json render a JSON list of {role, content} with the chat template (and\n"
           "                    the generation prompt) and print the prompt's ids\n"
           "  --chat-format N   use the built-in template N instead of the model's own:");
    for (size_t i = 0; i < moira_chat_format_count; i++)
        printf("%s %s", i ? "," : "", moira_chat_formats[i].name);
    printf("\n"
           "  --no-generation-prompt  leave out the assistant's opening (add_generation_prompt "
           "false)\n"
           "  --no-special      no BOS/EOS framing (add_special_tokens=False)\n"
           "  --json            one JSON object: ids, count (and prompt for --messages)\n"
           "  --decode          read one JSON array of ids per line of stdin, print the decoded\n"
           "                    text as one JSON string per line\n"
           "  --skip-special    with --decode: leave special tokens out\n\n"
           "exit codes: 0 success, 2 bad usage or bad input (malformed tokenizer files,\n"
           "a line that is not a JSON string, text that is not UTF-8)\n");
}

static int parse_options(int argc, char **argv, tokenize_options_t *o) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **value = !strcmp(arg, "--model")         ? &o->model
                             : !strcmp(arg, "--text")        ? &o->text
                             : !strcmp(arg, "--messages")    ? &o->messages
                             : !strcmp(arg, "--chat-format") ? &o->chat_format
                                                             : NULL;
        if (value) {
            if (i + 1 >= argc) return moira_cli_usage_error(VERB, "%s needs a value", arg);
            *value = argv[++i];
        } else if (!strcmp(arg, "--jsonl")) {
            o->jsonl = true;
        } else if (!strcmp(arg, "--json")) {
            o->json = true;
        } else if (!strcmp(arg, "--decode")) {
            o->decode = true;
        } else if (!strcmp(arg, "--no-special")) {
            o->no_special = true;
        } else if (!strcmp(arg, "--skip-special")) {
            o->skip_special = true;
        } else if (!strcmp(arg, "--no-generation-prompt")) {
            o->no_generation_prompt = true;
        } else if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help();
            return -1;
        } else {
            return moira_cli_usage_error(VERB, "unknown option \"%s\"", arg);
        }
    }
    if (!o->model) return moira_cli_usage_error(VERB, "--model DIR is required");
    if ((o->text != NULL) + o->jsonl + (o->messages != NULL) + o->decode > 1)
        return moira_cli_usage_error(VERB, "--text, --jsonl, --messages and --decode exclude "
                                           "each other");
    if ((o->chat_format || o->no_generation_prompt) && !o->messages && !o->jsonl)
        return moira_cli_usage_error(VERB, "--chat-format and --no-generation-prompt apply to "
                                           "conversations (--messages, --jsonl)");
    return 0;
}

/* Prints ids as a JSON array (no newline). */
static void print_id_array(const moira_token_ids_t *ids) {
    putchar('[');
    for (size_t i = 0; i < ids->count; i++)
        printf(i ? ",%d" : "%d", ids->ids[i]);
    putchar(']');
}

/* The result of one encode: plain ids separated by spaces, or a JSON object (with the prompt a
 * conversation rendered to, when there is one). */
static void print_ids(bool json, const moira_token_ids_t *ids, const char *prompt,
                      size_t prompt_len) {
    if (!json) {
        for (size_t i = 0; i < ids->count; i++)
            printf(i ? " %d" : "%d", ids->ids[i]);
        putchar('\n');
        return;
    }
    printf("{\"count\": %zu, \"ids\": ", ids->count);
    print_id_array(ids);
    if (prompt) {
        printf(", \"prompt\": ");
        moira_json_write_stringn(stdout, prompt, prompt_len);
    }
    printf("}\n");
}

/* A located error for line `line` of stdin. */
static moira_status_t stdin_error(size_t line, int column, const char *what) {
    return moira_status_at(MOIRA_CODE_INVALID_INPUT, "<stdin>", (int)line, column, "%s", what);
}

/* Reads stdin line by line, handing each line (without its newline) to `each`. */
static moira_status_t
for_each_line(moira_status_t (*each)(const tokenize_options_t *, const moira_tokenizer_t *,
                                     const char *, size_t, size_t),
              const tokenize_options_t *o, const moira_tokenizer_t *tokenizer) {
    char *line = NULL;
    size_t capacity = 0, number = 0;
    ssize_t len;
    moira_status_t status = MOIRA_OK_STATUS;
    while (!status && (len = getline(&line, &capacity, stdin)) >= 0) {
        number++;
        if (len > 0 && line[len - 1] == '\n') len--;
        if (len > 0 && line[len - 1] == '\r') len--;
        if ((size_t)len > MAX_INPUT_BYTES) {
            status = stdin_error(number, 0, "line too long");
            break;
        }
        status = each(o, tokenizer, line, (size_t)len, number);
        fflush(stdout);
    }
    free(line);
    return status;
}

/* Renders a conversation (already checked) and encodes the prompt as apply_chat_template does
 * (the template writes BOS itself, so no framing is added). On success *prompt is malloc'd. */
static moira_status_t encode_conversation(const tokenize_options_t *o,
                                          const moira_tokenizer_t *tokenizer,
                                          const json_t *messages, char **prompt, size_t *prompt_len,
                                          moira_token_ids_t *ids) {
    *prompt = NULL;
    MOIRA_RETURN_IF_ERROR(moira_chat_render(tokenizer, o->chat_format, messages,
                                            !o->no_generation_prompt, prompt, prompt_len));
    return moira_tokenizer_encode(tokenizer, *prompt, *prompt_len, false, ids);
}

/* --jsonl: a JSON string in, its JSON array of ids out; or a conversation (a JSON array of
 * messages) in, {"count", "ids", "prompt"} out. */
static moira_status_t encode_line(const tokenize_options_t *o, const moira_tokenizer_t *tokenizer,
                                  const char *line, size_t len, size_t number) {
    json_error_t error;
    json_t *value = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
    if (!json_is_string(value) && !json_is_array(value)) {
        json_decref(value);
        return value ? stdin_error(number, 1, "expected a JSON string, or a JSON array of messages")
                     : stdin_error(number, error.column, error.text);
    }
    bool conversation = json_is_array(value);
    char origin[48];
    snprintf(origin, sizeof(origin), "<stdin>:%zu", number);
    /* The message check names the line itself; other failures get it added. */
    moira_status_t status =
        conversation ? moira_chat_check_messages(value, origin) : MOIRA_OK_STATUS;
    if (status) {
        json_decref(value);
        return status;
    }
    moira_token_ids_t ids = {0};
    char *prompt = NULL;
    size_t prompt_len = 0;
    if (conversation)
        status = encode_conversation(o, tokenizer, value, &prompt, &prompt_len, &ids);
    else
        status = moira_tokenizer_encode(tokenizer, json_string_value(value),
                                        json_string_length(value), !o->no_special, &ids);
    json_decref(value);
    if (status) {
        status = moira_status_annotate(status, "%s", origin);
    } else if (conversation) {
        print_ids(true, &ids, prompt, prompt_len);
    } else {
        print_id_array(&ids);
        putchar('\n');
    }
    free(prompt);
    moira_token_ids_free(&ids);
    return status;
}

/* --decode: one JSON array of ids in, one JSON string out. */
static moira_status_t decode_line(const tokenize_options_t *o, const moira_tokenizer_t *tokenizer,
                                  const char *line, size_t len, size_t number) {
    json_error_t error;
    json_t *value = json_loadb(line, len, JSON_DECODE_ANY, &error);
    if (!json_is_array(value)) {
        json_decref(value);
        return value ? stdin_error(number, 1, "expected a JSON array of token ids")
                     : stdin_error(number, error.column, error.text);
    }
    moira_token_ids_t ids = {0};
    moira_status_t status = MOIRA_OK_STATUS;
    size_t i;
    json_t *id;
    json_array_foreach(value, i, id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= moira_tokenizer_vocab_size(tokenizer)) {
            status = stdin_error(number, 1, "ids must be integers within the vocabulary");
            break;
        }
        if ((status = moira_token_ids_push(&ids, (int32_t)json_integer_value(id)))) break;
    }
    json_decref(value);
    char *text = NULL;
    size_t text_len = 0;
    if (!status)
        status = moira_tokenizer_decode(tokenizer, ids.ids, ids.count, o->skip_special, &text,
                                        &text_len);
    moira_token_ids_free(&ids);
    if (status) return status;
    moira_json_write_stringn(stdout, text, text_len);
    putchar('\n');
    free(text);
    return MOIRA_OK_STATUS;
}

/* --messages F.json: one conversation from a file. */
static moira_status_t encode_messages(const tokenize_options_t *o,
                                      const moira_tokenizer_t *tokenizer) {
    char *file;
    size_t file_len;
    MOIRA_RETURN_IF_ERROR(
        moira_read_file(o->messages, "messages file", MAX_INPUT_BYTES, &file, &file_len));
    json_error_t error;
    json_t *messages = json_loadb(file, file_len, 0, &error);
    free(file);
    if (!messages)
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, o->messages, error.line, error.column,
                               "not valid JSON: %s", error.text);
    char *prompt = NULL;
    size_t prompt_len = 0;
    moira_token_ids_t ids = {0};
    moira_status_t status = moira_chat_check_messages(messages, o->messages);
    if (!status) status = encode_conversation(o, tokenizer, messages, &prompt, &prompt_len, &ids);
    json_decref(messages);
    if (!status) print_ids(o->json, &ids, prompt, prompt_len);
    moira_token_ids_free(&ids);
    free(prompt);
    return status;
}

/* --text, or all of stdin. */
static moira_status_t encode_text(const tokenize_options_t *o, const moira_tokenizer_t *tokenizer) {
    char *text = NULL;
    size_t len;
    if (o->text) {
        len = strlen(o->text);
    } else {
        MOIRA_RETURN_IF_ERROR(
            moira_read_file("/dev/stdin", "text on stdin", MAX_INPUT_BYTES, &text, &len));
    }
    moira_token_ids_t ids = {0};
    moira_status_t status =
        moira_tokenizer_encode(tokenizer, o->text ? o->text : text, len, !o->no_special, &ids);
    if (!status) print_ids(o->json, &ids, NULL, 0);
    moira_token_ids_free(&ids);
    free(text);
    return status;
}

int moira_cli_tokenize(int argc, char **argv) {
    tokenize_options_t o = {0};
    int rc = parse_options(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    moira_tokenizer_t *tokenizer;
    moira_status_t status = moira_tokenizer_load(o.model, &tokenizer);
    if (status) return moira_status_report(status);
    if (o.jsonl)
        status = for_each_line(encode_line, &o, tokenizer);
    else if (o.decode)
        status = for_each_line(decode_line, &o, tokenizer);
    else if (o.messages)
        status = encode_messages(&o, tokenizer);
    else
        status = encode_text(&o, tokenizer);
    moira_tokenizer_free(tokenizer);
    return status ? moira_status_report(status) : 0;
}
