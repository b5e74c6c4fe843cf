/* JSON string literals as every Moira writer prints them (plans and profiles with --json, device
 * lists, run reports, tokenizer output). */
#ifndef MOIRA_RUNTIME_JSON_STRING_H
#define MOIRA_RUNTIME_JSON_STRING_H

#include <stddef.h>
#include <stdio.h>

/* Writes `text` (UTF-8) as a JSON string literal, quotes included. Quotes, backslashes and control
 * characters are escaped as JSON requires; so are U+0085, U+2028, U+2029 and U+FEFF, which are
 * valid in JSON text but which YAML readers (Moira reads --json plans back through libyaml) and
 * some line-oriented tools take for line breaks or a byte-order mark. */
void moira_json_write_string(FILE *out, const char *text);

/* The same for `len` bytes that may hold NUL (written as \u0000), such as decoded token text. */
void moira_json_write_stringn(FILE *out, const char *text, size_t len);

#endif
