/* A parsed YAML (or JSON) file with helpers that read typed values and report problems at the
 * value's file:line:col. Topology, profile and plan files share it so that every placement input
 * gives the same kind of message: `topo.yaml:12:5: unknown backend "cuda"`. */
#ifndef MOIRA_PLACEMENT_YAML_DOC_H
#define MOIRA_PLACEMENT_YAML_DOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

#include "runtime/status.h"

typedef struct moira_yaml_doc {
    char file[512]; /* the name used in messages (a copy of the path) */
    yaml_document_t document;
    bool loaded; /* whether `document` must be deleted */
} moira_yaml_doc_t;

/* Reads and parses the single YAML document in `path`. `what` names the kind of file in messages
 * ("topology"). On success the caller owns `*out_doc` and releases it with moira_yaml_doc_free.
 * Errors: NOT_FOUND, IO, INVALID_INPUT at file:line:col (syntax, empty file, two documents). */
moira_status_t moira_yaml_doc_load(const char *path, const char *what, moira_yaml_doc_t *out_doc);

/* Parses text held in memory; `display_name` names it in messages. Ownership as _load. */
moira_status_t moira_yaml_doc_parse(const char *text, size_t len, const char *display_name,
                                    const char *what, moira_yaml_doc_t *out_doc);

/* Releases a document. Accepts one that failed to load. */
void moira_yaml_doc_free(moira_yaml_doc_t *doc);

/* The root node (never NULL after a successful load). Borrowed from the document. */
yaml_node_t *moira_yaml_root(moira_yaml_doc_t *doc);

/* An INVALID_INPUT status located at `node` (or at 1:1 when node is NULL). Caller owns it. */
moira_status_t moira_yaml_fail(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                               const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Requires `node` to be a mapping (a list) called `what`. */
moira_status_t moira_yaml_expect_mapping(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                         const char *what);
moira_status_t moira_yaml_expect_sequence(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                          const char *what);

/* Rejects keys of `mapping` outside `allowed` (NULL-terminated), and repeated keys, so that a
 * typo is an error rather than a silently ignored setting. */
moira_status_t moira_yaml_check_keys(const moira_yaml_doc_t *doc, const yaml_node_t *mapping,
                                     const char *const *allowed);

/* The value of `key` in `mapping`, or NULL when absent. Borrowed from the document. */
yaml_node_t *moira_yaml_get(moira_yaml_doc_t *doc, const yaml_node_t *mapping, const char *key);

/* The value of a required `key`; an error located at the mapping when it is missing. */
moira_status_t moira_yaml_require(moira_yaml_doc_t *doc, const yaml_node_t *mapping,
                                  const char *key, const char *context, yaml_node_t **out_node);

/* Number of items of a sequence node, and the item at `index`. */
int moira_yaml_length(const yaml_node_t *sequence);
yaml_node_t *moira_yaml_item(moira_yaml_doc_t *doc, const yaml_node_t *sequence, int index);

/* Typed scalars. `what` names the value in messages. Integers must lie in [min, max]; numbers
 * must be finite and >= min. Strings are copied into `buf` (error when longer than cap - 1). */
moira_status_t moira_yaml_int(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                              const char *what, int64_t min, int64_t max, int64_t *out_value);
moira_status_t moira_yaml_number(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                 const char *what, double min, double *out_value);
/* A number in [min, max], for values whose sums must stay finite (token counts). */
moira_status_t moira_yaml_number_range(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                       const char *what, double min, double max, double *out_value);
moira_status_t moira_yaml_bool(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                               const char *what, bool *out_value);
moira_status_t moira_yaml_string(const moira_yaml_doc_t *doc, const yaml_node_t *node,
                                 const char *what, char *buf, size_t cap);

#endif
