/* Checks every YAML (and JSON-as-YAML) reader runs on untrusted text before libyaml builds a
 * document from it, and the wording of libyaml's errors. Model configs (runtime/) and the
 * placement files (placement/yaml_doc.c) share them. */
#ifndef MOIRA_RUNTIME_YAML_TEXT_H
#define MOIRA_RUNTIME_YAML_TEXT_H

#include <stddef.h>
#include <yaml.h>

#include "runtime/status.h"

/* Deeper nesting than this is no Moira file and no Hugging Face config; it is refused before the
 * document is built, because libyaml's cost grows with the square of the depth of flow
 * collections (100,000 nested '[' take half a minute). */
#define MOIRA_YAML_MAX_DEPTH 64

/* INVALID_INPUT at file:line:col of the first mapping or list nested deeper than
 * MOIRA_YAML_MAX_DEPTH, else OK. Syntax errors are left to the loader (it reports them with the
 * same position), so this returns OK for text libyaml cannot parse. `file` names the text. */
moira_status_t moira_yaml_check_depth(const char *text, size_t len, const char *file);

/* A plain-English hint to append to libyaml's description of a parse failure, where one helps
 * (a tab where YAML wants spaces), else "". Static storage. */
const char *moira_yaml_hint(const yaml_parser_t *parser, const char *text, size_t len);

#endif
