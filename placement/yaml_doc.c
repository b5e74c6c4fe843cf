#include "placement/yaml_doc.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/read_file.h"
#include "runtime/suggest.h"
#include "runtime/yaml_text.h"

/* Placement files are small; anything larger is not one of them. */
#define MAX_PLACEMENT_FILE_BYTES ((size_t)256 << 20)

/* libyaml marks are 0-based; messages are 1-based like compilers'. */
static moira_status_t fail_at(const moira_yaml_doc_t *doc, yaml_mark_t mark, const char *message) {
    return moira_status_at(MOIRA_CODE_INVALID_INPUT, doc->file, (int)mark.line + 1,
                           (int)mark.column + 1, "%s", message);
}

moira_status_t moira_yaml_fail(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                               const char *fmt, ...) {
    char message[640];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    yaml_mark_t start = {0, 0, 0};
    if (node) start = node->start_mark;
    return fail_at(doc, start, message);
}

/* libyaml's own parse errors carry the position of the problem; keep it. */
static moira_status_t parser_failure(const moira_yaml_doc_t *doc, const yaml_parser_t *parser,
                                     const char *text, size_t len) {
    char message[512];
    snprintf(message, sizeof(message), "YAML syntax error: %s%s%s%s",
             parser->problem ? parser->problem : "malformed", parser->context ? " " : "",
             parser->context ? parser->context : "", moira_yaml_hint(parser, text, len));
    return fail_at(doc, parser->problem_mark, message);
}

moira_status_t moira_yaml_doc_parse(const char *text, size_t len, const char *display_name,
                                    const char *what, moira_yaml_doc_t *out_doc) {
    memset(out_doc, 0, sizeof(*out_doc));
    snprintf(out_doc->file, sizeof(out_doc->file), "%s", display_name ? display_name : "<input>");
    MOIRA_RETURN_IF_ERROR(moira_yaml_check_depth(text, len, out_doc->file));
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot start the YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    moira_status_t status = MOIRA_OK_STATUS;
    if (!yaml_parser_load(&parser, &out_doc->document)) {
        status = parser_failure(out_doc, &parser, text, len);
    } else {
        out_doc->loaded = true;
        yaml_node_t *root = yaml_document_get_root_node(&out_doc->document);
        if (!root) {
            status = moira_status_at(MOIRA_CODE_INVALID_INPUT, out_doc->file, 1, 1, "empty %s file",
                                     what);
        } else {
            /* A second document would be ignored silently; say so instead. */
            yaml_document_t next;
            if (!yaml_parser_load(&parser, &next)) {
                status = parser_failure(out_doc, &parser, text, len);
            } else {
                yaml_node_t *next_root = yaml_document_get_root_node(&next);
                if (next_root) {
                    char message[128];
                    snprintf(message, sizeof(message), "a %s file holds one YAML document", what);
                    status = fail_at(out_doc, next_root->start_mark, message);
                }
                yaml_document_delete(&next);
            }
        }
    }
    yaml_parser_delete(&parser);
    if (status) moira_yaml_doc_free(out_doc);
    return status;
}

moira_status_t moira_yaml_doc_load(const char *path, const char *what, moira_yaml_doc_t *out_doc) {
    memset(out_doc, 0, sizeof(*out_doc));
    char noun[64];
    snprintf(noun, sizeof(noun), "%s file", what);
    char *text = NULL;
    size_t len = 0;
    moira_status_t status = moira_read_file(path, noun, MAX_PLACEMENT_FILE_BYTES, &text, &len);
    if (!status) status = moira_yaml_doc_parse(text, len, path, what, out_doc);
    free(text);
    return status;
}

void moira_yaml_doc_free(moira_yaml_doc_t *doc) {
    if (doc->loaded) yaml_document_delete(&doc->document);
    doc->loaded = false;
}

yaml_node_t *moira_yaml_root(moira_yaml_doc_t *doc) {
    return yaml_document_get_root_node(&doc->document);
}

moira_status_t moira_yaml_expect_mapping(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                         const char *what) {
    if (node->type == YAML_MAPPING_NODE) return MOIRA_OK_STATUS;
    return moira_yaml_fail(doc, node, "%s must be a mapping", what);
}

moira_status_t moira_yaml_expect_sequence(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                          const char *what) {
    if (node->type == YAML_SEQUENCE_NODE) return MOIRA_OK_STATUS;
    return moira_yaml_fail(doc, node, "%s must be a list", what);
}

/* Keys are compared as whole strings; a key holding a NUL byte matches nothing. */
static const char *key_text(const yaml_node_t *key) {
    if (key->type != YAML_SCALAR_NODE) return NULL;
    const char *text = (const char *)key->data.scalar.value;
    return strlen(text) == key->data.scalar.length ? text : NULL;
}

moira_status_t moira_yaml_check_keys(const moira_yaml_doc_t *doc, const yaml_node_t *mapping,
                                     const char *const *allowed) {
    yaml_document_t *document = (yaml_document_t *)&doc->document;
    for (yaml_node_pair_t *pair = mapping->data.mapping.pairs.start;
         pair < mapping->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(document, pair->key);
        const char *name = key_text(key);
        if (!name) return moira_yaml_fail(doc, key, "keys must be plain names");
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = !strcmp(*a, name);
        if (!known) {
            const char *meant = moira_suggest(name, allowed);
            if (meant)
                return moira_yaml_fail(doc, key, "unknown key \"%s\" (did you mean \"%s\"?)", name,
                                       meant);
            char expected[400] = "";
            size_t used = 0;
            for (const char *const *a = allowed; *a && used < sizeof(expected); a++)
                used += (size_t)snprintf(expected + used, sizeof(expected) - used, "%s%s",
                                         a == allowed ? "" : ", ", *a);
            return moira_yaml_fail(doc, key, "unknown key \"%s\" (expected one of: %s)", name,
                                   expected);
        }
        for (yaml_node_pair_t *earlier = mapping->data.mapping.pairs.start; earlier < pair;
             earlier++) {
            const char *other = key_text(yaml_document_get_node(document, earlier->key));
            if (other && !strcmp(other, name))
                return moira_yaml_fail(doc, key, "key \"%s\" given twice", name);
        }
    }
    return MOIRA_OK_STATUS;
}

yaml_node_t *moira_yaml_get(moira_yaml_doc_t *doc, const yaml_node_t *mapping, const char *key) {
    if (mapping->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *pair = mapping->data.mapping.pairs.start;
         pair < mapping->data.mapping.pairs.top; pair++) {
        const char *name = key_text(yaml_document_get_node(&doc->document, pair->key));
        if (name && !strcmp(name, key)) return yaml_document_get_node(&doc->document, pair->value);
    }
    return NULL;
}

moira_status_t moira_yaml_require(moira_yaml_doc_t *doc, const yaml_node_t *mapping,
                                  const char *key, const char *context, yaml_node_t **out_node) {
    *out_node = moira_yaml_get(doc, mapping, key);
    if (*out_node) return MOIRA_OK_STATUS;
    return moira_yaml_fail(doc, mapping, "%s lacks the required key \"%s\"", context, key);
}

int moira_yaml_length(const yaml_node_t *sequence) {
    if (sequence->type != YAML_SEQUENCE_NODE) return 0;
    return (int)(sequence->data.sequence.items.top - sequence->data.sequence.items.start);
}

yaml_node_t *moira_yaml_item(moira_yaml_doc_t *doc, const yaml_node_t *sequence, int index) {
    return yaml_document_get_node(&doc->document, sequence->data.sequence.items.start[index]);
}

/* A scalar's text for number parsing: plain or quoted, without an embedded NUL. */
static const char *scalar_value(const yaml_node_t *node) {
    if (node->type != YAML_SCALAR_NODE) return NULL;
    const char *text = (const char *)node->data.scalar.value;
    return strlen(text) == node->data.scalar.length && node->data.scalar.length > 0 ? text : NULL;
}

moira_status_t moira_yaml_int(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                              const char *what, int64_t min, int64_t max, int64_t *out_value) {
    const char *text = scalar_value(node);
    char *end = NULL;
    errno = 0;
    long long value = text ? strtoll(text, &end, 10) : 0;
    if (!text || *end || errno) return moira_yaml_fail(doc, node, "%s must be an integer", what);
    if (value < min || value > max)
        return moira_yaml_fail(doc, node, "%s must be in [%lld, %lld], got %lld", what,
                               (long long)min, (long long)max, value);
    *out_value = value;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_yaml_number(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                 const char *what, double min, double *out_value) {
    const char *text = scalar_value(node);
    char *end = NULL;
    double value = text ? strtod(text, &end) : 0;
    if (!text || *end || !isfinite(value))
        return moira_yaml_fail(doc, node, "%s must be a finite number", what);
    if (value < min)
        return moira_yaml_fail(doc, node, "%s must be >= %g, got %g", what, min, value);
    *out_value = value;
    return MOIRA_OK_STATUS;
}

moira_status_t moira_yaml_number_range(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                       const char *what, double min, double max,
                                       double *out_value) {
    MOIRA_RETURN_IF_ERROR(moira_yaml_number(doc, node, what, min, out_value));
    if (*out_value > max)
        return moira_yaml_fail(doc, node, "%s must be <= %g, got %g", what, max, *out_value);
    return MOIRA_OK_STATUS;
}

moira_status_t moira_yaml_bool(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                               const char *what, bool *out_value) {
    const char *text = scalar_value(node);
    if (text && (!strcmp(text, "true") || !strcmp(text, "false"))) {
        *out_value = text[0] == 't';
        return MOIRA_OK_STATUS;
    }
    return moira_yaml_fail(doc, node, "%s must be true or false", what);
}

moira_status_t moira_yaml_string(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                 const char *what, char *buf, size_t cap) {
    const char *text = scalar_value(node);
    if (!text) return moira_yaml_fail(doc, node, "%s must be a non-empty string", what);
    if (strlen(text) >= cap)
        return moira_yaml_fail(doc, node, "%s is longer than %zu characters", what, cap - 1);
    memcpy(buf, text, strlen(text) + 1);
    return MOIRA_OK_STATUS;
}
