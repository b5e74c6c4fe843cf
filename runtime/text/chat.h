/* Conversations to prompts: a list of {role, content} messages rendered by the model's chat
 * template (tokenizer_config.json's chat_template, Jinja) exactly as Hugging Face's
 * apply_chat_template renders it, or by a built-in template picked by name (--chat-format). */
#ifndef MOIRA_RUNTIME_TEXT_CHAT_H
#define MOIRA_RUNTIME_TEXT_CHAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "runtime/status.h"
#include "runtime/text/tokenizer.h"

/* A built-in chat template (configs/chat_templates/NAME.jinja, embedded at build time). */
typedef struct moira_chat_format {
    const char *name;
    const char *source;
    size_t length;
} moira_chat_format_t;

extern const moira_chat_format_t moira_chat_formats[];
extern const size_t moira_chat_format_count;

/* Checks that `messages` is what a chat template expects: a non-empty array of objects, each with
 * a string "role" and a string (or, for an assistant's tool calls, null) "content". `origin`
 * names the file in messages. Errors: INVALID_INPUT naming the message. */
moira_status_t moira_chat_check_messages(const json_t *messages, const char *origin);

/* Renders `messages` (borrowed) into a prompt. `format` names a built-in template, or NULL for the
 * tokenizer's own (UNSUPPORTED naming the built-in ones when it has none, INVALID_ARGUMENT for an
 * unknown name). The template sees messages, bos_token, eos_token and add_generation_prompt, as
 * in transformers. On success *out_text (malloc'd, NUL-terminated, owned by the caller) holds
 * *out_len bytes. */
moira_status_t moira_chat_render(const moira_tokenizer_t *tokenizer, const char *format,
                                 const json_t *messages, bool add_generation_prompt,
                                 char **out_text, size_t *out_len);

#endif
