/* One writer for two formats: the same calls emit YAML (through libyaml's emitter) or JSON, so a
 * plan written with --json has exactly the structure of its YAML form. */
#ifndef MOIRA_PLACEMENT_TREE_WRITER_H
#define MOIRA_PLACEMENT_TREE_WRITER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <yaml.h>

#define MOIRA_TREE_MAX_DEPTH 16

/* Writes to a borrowed stream. `ok` turns false at the first failure and stays so. */
typedef struct moira_tree_writer {
    FILE *out; /* borrowed */
    bool json;
    bool ok;
    yaml_emitter_t emitter;
    int depth;
    int items[MOIRA_TREE_MAX_DEPTH]; /* JSON: items written in each open container */
    bool flow[MOIRA_TREE_MAX_DEPTH]; /* JSON: container written on one line */
    bool after_key;                  /* JSON: the next value follows a key */
} moira_tree_writer_t;

/* Starts a document. Finish with moira_tree_end, which also releases the emitter. */
void moira_tree_begin(moira_tree_writer_t *w, FILE *out, bool json);
bool moira_tree_end(moira_tree_writer_t *w);

/* Containers; `flow` writes them on one line ({a: 1} / [1, 2]). */
void moira_tree_map(moira_tree_writer_t *w, bool flow);
void moira_tree_list(moira_tree_writer_t *w, bool flow);
void moira_tree_close(moira_tree_writer_t *w, bool was_map);

/* A mapping key; the next call writes its value. */
void moira_tree_key(moira_tree_writer_t *w, const char *key);

void moira_tree_string(moira_tree_writer_t *w, const char *value);
void moira_tree_int(moira_tree_writer_t *w, int64_t value);
/* true / false, unquoted in both formats. */
void moira_tree_bool(moira_tree_writer_t *w, bool value);
/* Finite doubles with up to 9 significant digits. */
void moira_tree_double(moira_tree_writer_t *w, double value);

#endif
