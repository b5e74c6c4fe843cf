/* Jinja templates, the subset chat templates use.
 *
 * Hugging Face checkpoints ship their chat template as Jinja source in tokenizer_config.json, and
 * `transformers` renders it with trim_blocks and lstrip_blocks on. This interpreter parses such a
 * template once and renders it as Jinja would, against variables given as a JSON object (the
 * messages, bos_token, eos_token, add_generation_prompt, tools, ...). Rendering reads nothing but
 * the template, the variables and (for strftime_now, which transformers provides) the clock, and
 * a template cannot loop forever or exhaust memory (bounded output, recursion and loop work). */
#ifndef MOIRA_RUNTIME_TEXT_JINJA_H
#define MOIRA_RUNTIME_TEXT_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "runtime/status.h"

typedef struct moira_jinja_template moira_jinja_template_t;

/* Parses `len` bytes of template source. `origin` names the template in messages (for example
 * "tokenizer_config.json chat_template"): a syntax error is INVALID_INPUT located at
 * origin:line:col of the template text. On success *out (owned by the caller, released with
 * moira_jinja_free) is the parsed template. */
moira_status_t moira_jinja_parse(const char *source, size_t len, const char *origin,
                                 moira_jinja_template_t **out);

/* Renders the template with the variables of `context` (a JSON object, borrowed). An error the
 * template raises (raise_exception, an undefined attribute of an undefined value, a type error) is
 * INVALID_INPUT with the template's message and location. On success *out_text (malloc'd,
 * NUL-terminated, owned by the caller) holds *out_len bytes. */
moira_status_t moira_jinja_render(const moira_jinja_template_t *tmpl, const json_t *context,
                                  char **out_text, size_t *out_len);

/* Releases a parsed template. Accepts NULL. */
void moira_jinja_free(moira_jinja_template_t *tmpl);

#endif
