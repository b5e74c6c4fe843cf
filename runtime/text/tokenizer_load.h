/* Helpers shared by the files that load a tokenizer (tokenizer_load.c, tokenizer_pipeline.c,
 * tokenizer_config.c). Internal to runtime/text. */
#ifndef MOIRA_RUNTIME_TEXT_TOKENIZER_LOAD_H
#define MOIRA_RUNTIME_TEXT_TOKENIZER_LOAD_H

#include <jansson.h>
#include <stdarg.h>

#include "runtime/text/tokenizer_internal.h"

/* Reads and parses a JSON file whose top level must be an object; `what` names it in messages.
 * Syntax errors are INVALID_INPUT at path:line:col. On success *out is owned by the caller. */
moira_status_t moira_tokenizer_json_load(const char *path, const char *what, json_t **out);

/* The same for text already in memory; `path` names it in messages. */
moira_status_t moira_tokenizer_json_parse(const char *text, size_t len, const char *path,
                                          const char *what, json_t **out);

/* INVALID_INPUT naming tokenizer.json and the JSON path `key` of the bad value. */
moira_status_t moira_tokenizer_bad(const moira_tokenizer_t *tokenizer, const char *key,
                                   const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A boolean member, or `fallback` when it is absent or not a boolean. */
bool moira_json_flag(const json_t *object, const char *key, bool fallback);

/* tokenizer_pipeline.c: compiles a regex as Hugging Face does (Oniguruma's default syntax, UTF-8);
 * a pattern Oniguruma refuses is INVALID_INPUT naming `key` and the reason. */
moira_status_t moira_tokenizer_compile_regex(const moira_tokenizer_t *tokenizer, const char *key,
                                             const char *pattern, size_t len, regex_t **out);

/* tokenizer_pipeline.c: the normalizer, pre-tokenizer, post-processor and decoder sections. */
moira_status_t moira_tokenizer_load_pipeline(moira_tokenizer_t *tokenizer, const json_t *root);

/* tokenizer_config.c: BOS/EOS, add_bos_token/add_eos_token and the chat template. `config` may be
 * NULL (no tokenizer_config.json); `root` is tokenizer.json, for its post-processor. */
moira_status_t moira_tokenizer_load_config(moira_tokenizer_t *tokenizer, const json_t *root,
                                           const json_t *config, const char *config_path);

#endif
