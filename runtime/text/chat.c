/* Applying a chat template: the variables transformers gives a template, and the choice between
 * the checkpoint's own template and a built-in one. */
#include "runtime/text/chat.h"

#include <string.h>

#include "runtime/text/jinja.h"

moira_status_t moira_chat_check_messages(const json_t *messages, const char *origin) {
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return moira_status_at(
            MOIRA_CODE_INVALID_INPUT, origin, 0, 0,
            "messages must be a non-empty JSON array of {\"role\", \"content\"}");
    size_t i;
    const json_t *message;
    json_array_foreach((json_t *)messages, i, message) {
        const json_t *role = json_object_get(message, "role");
        const json_t *content = json_object_get(message, "content");
        if (!json_is_object(message) || !json_is_string(role))
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, origin, 0, 0,
                                   "message %zu: needs a string \"role\"", i + 1);
        if (!json_is_string(content) && !json_is_null(content) && !json_is_array(content))
            return moira_status_at(MOIRA_CODE_INVALID_INPUT, origin, 0, 0,
                                   "message %zu (%s): \"content\" must be a string", i + 1,
                                   json_string_value(role));
    }
    return MOIRA_OK_STATUS;
}

/* The template to use and where it came from. */
static moira_status_t pick_template(const moira_tokenizer_t *tokenizer, const char *format,
                                    const char **source, size_t *length, const char **origin) {
    if (format) {
        for (size_t i = 0; i < moira_chat_format_count; i++)
            if (!strcmp(moira_chat_formats[i].name, format)) {
                *source = moira_chat_formats[i].source;
                *length = moira_chat_formats[i].length;
                *origin = moira_chat_formats[i].name;
                return MOIRA_OK_STATUS;
            }
    } else {
        *source = moira_tokenizer_chat_template(tokenizer, origin);
        if (*source) {
            *length = strlen(*source);
            return MOIRA_OK_STATUS;
        }
    }
    char names[256] = "";
    for (size_t i = 0; i < moira_chat_format_count; i++) {
        strncat(names, i ? ", " : "", sizeof(names) - strlen(names) - 1);
        strncat(names, moira_chat_formats[i].name, sizeof(names) - strlen(names) - 1);
    }
    if (format)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "unknown chat format \"%s\" (built in: %s)", format, names);
    return moira_status_make(MOIRA_CODE_UNSUPPORTED,
                             "the model's tokenizer_config.json has no chat_template; pick a "
                             "built-in one with --chat-format (%s)",
                             names);
}

/* Sets a string variable, or leaves it undefined when the tokenizer has no such token. */
static int set_token(json_t *context, const char *key, const char *token) {
    return token ? json_object_set_new(context, key, json_string(token)) : 0;
}

moira_status_t moira_chat_render(const moira_tokenizer_t *tokenizer, const char *format,
                                 const json_t *messages, bool add_generation_prompt,
                                 char **out_text, size_t *out_len) {
    *out_text = NULL;
    *out_len = 0;
    const char *source = NULL, *origin = NULL;
    size_t length = 0;
    MOIRA_RETURN_IF_ERROR(pick_template(tokenizer, format, &source, &length, &origin));
    moira_jinja_template_t *tmpl;
    MOIRA_RETURN_IF_ERROR(moira_jinja_parse(source, length, origin, &tmpl));
    json_t *context = json_object();
    if (!context || json_object_set(context, "messages", (json_t *)messages) ||
        set_token(context, "bos_token", moira_tokenizer_bos_token(tokenizer)) ||
        set_token(context, "eos_token", moira_tokenizer_eos_token(tokenizer)) ||
        json_object_set_new(context, "add_generation_prompt",
                            json_boolean(add_generation_prompt))) {
        json_decref(context);
        moira_jinja_free(tmpl);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "chat template variables");
    }
    moira_status_t status = moira_jinja_render(tmpl, context, out_text, out_len);
    json_decref(context);
    moira_jinja_free(tmpl);
    return status;
}
