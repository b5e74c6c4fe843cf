#include "placement/tree_writer.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/json_string.h"

/* libyaml writes through a callback so that errors on the stream are seen. */
static int write_to_stream(void *data, unsigned char *buffer, size_t size) {
    return fwrite(buffer, 1, size, (FILE *)data) == size;
}

/* Hands an event to libyaml, remembering the first failure so callers check once at the end. */
static void emit(moira_tree_writer_t *w, yaml_event_t *event, int initialized) {
    if (!initialized || !w->ok) {
        if (initialized) yaml_event_delete(event);
        w->ok = false;
        return;
    }
    if (!yaml_emitter_emit(&w->emitter, event)) w->ok = false;
}

void moira_tree_begin(moira_tree_writer_t *w, FILE *out, bool json) {
    memset(w, 0, sizeof(*w));
    w->out = out;
    w->json = json;
    w->ok = true;
    if (json) return;
    if (!yaml_emitter_initialize(&w->emitter)) {
        w->ok = false;
        return;
    }
    yaml_emitter_set_output(&w->emitter, write_to_stream, out);
    yaml_emitter_set_width(&w->emitter, 100);
    yaml_emitter_set_unicode(&w->emitter, 1);
    yaml_event_t event;
    emit(w, &event, yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING));
    emit(w, &event, yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1));
}

bool moira_tree_end(moira_tree_writer_t *w) {
    if (w->json) {
        if (fputc('\n', w->out) == EOF) w->ok = false;
        return w->ok;
    }
    yaml_event_t event;
    emit(w, &event, yaml_document_end_event_initialize(&event, 1));
    emit(w, &event, yaml_stream_end_event_initialize(&event));
    if (w->ok && !yaml_emitter_flush(&w->emitter)) w->ok = false;
    yaml_emitter_delete(&w->emitter);
    return w->ok;
}

/* JSON: a comma between items, and in block containers a new line indented by depth. */
static void json_before_value(moira_tree_writer_t *w) {
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth == 0) return;
    int d = w->depth - 1;
    if (w->items[d] > 0) fputc(',', w->out);
    if (w->flow[d]) {
        if (w->items[d] > 0) fputc(' ', w->out);
    } else {
        fprintf(w->out, "\n%*s", 2 * w->depth, "");
    }
    w->items[d]++;
}

/* Starts a mapping or list in either format. */
static void open_container(moira_tree_writer_t *w, bool flow, bool map) {
    if (w->depth >= MOIRA_TREE_MAX_DEPTH) {
        w->ok = false;
        return;
    }
    if (w->json) {
        json_before_value(w);
        fputc(map ? '{' : '[', w->out);
        w->flow[w->depth] = flow || (w->depth > 0 && w->flow[w->depth - 1]);
        w->items[w->depth] = 0;
        w->depth++;
        return;
    }
    yaml_event_t event;
    if (map)
        emit(w, &event,
             yaml_mapping_start_event_initialize(
                 &event, NULL, NULL, 1, flow ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE));
    else
        emit(w, &event,
             yaml_sequence_start_event_initialize(&event, NULL, NULL, 1,
                                                  flow ? YAML_FLOW_SEQUENCE_STYLE
                                                       : YAML_BLOCK_SEQUENCE_STYLE));
    w->depth++;
}

void moira_tree_map(moira_tree_writer_t *w, bool flow) {
    open_container(w, flow, true);
}

void moira_tree_list(moira_tree_writer_t *w, bool flow) {
    open_container(w, flow, false);
}

void moira_tree_close(moira_tree_writer_t *w, bool was_map) {
    if (w->depth <= 0) {
        w->ok = false;
        return;
    }
    w->depth--;
    if (w->json) {
        if (!w->flow[w->depth] && w->items[w->depth] > 0)
            fprintf(w->out, "\n%*s", 2 * w->depth, "");
        fputc(was_map ? '}' : ']', w->out);
        return;
    }
    yaml_event_t event;
    if (was_map)
        emit(w, &event, yaml_mapping_end_event_initialize(&event));
    else
        emit(w, &event, yaml_sequence_end_event_initialize(&event));
}

/* Whether YAML readers would take this string for something else (a boolean, null or number) if
 * it were written plain; such strings are quoted so that every reader sees a string. */
static bool looks_typed(const char *text) {
    static const char *const words[] = {"true", "false", "yes", "no", "on", "off",  "null",
                                        "True", "False", "Yes", "No", "On", "Off",  "Null",
                                        "TRUE", "FALSE", "YES", "NO", "ON", "OFF",  "NULL",
                                        "~",    "y",     "n",   "Y",  "N",  ".inf", ".nan"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (!strcmp(text, words[i])) return true;
    char *end = NULL;
    if (*text) {
        strtod(text, &end);
        if (end && *end == '\0') return true;
    }
    return false;
}

/* A scalar: JSON quotes strings and leaves numbers bare; YAML picks its own style, quoting strings
 * that would otherwise read as another type. */
static void scalar(moira_tree_writer_t *w, const char *text, bool is_string) {
    if (w->json) {
        json_before_value(w);
        if (!is_string) {
            fputs(text, w->out);
            return;
        }
        moira_json_write_string(w->out, text);
        return;
    }
    yaml_scalar_style_t style = !is_string          ? YAML_PLAIN_SCALAR_STYLE
                                : looks_typed(text) ? YAML_SINGLE_QUOTED_SCALAR_STYLE
                                                    : YAML_ANY_SCALAR_STYLE;
    yaml_event_t event;
    emit(w, &event,
         yaml_scalar_event_initialize(&event, NULL, NULL, (yaml_char_t *)text, (int)strlen(text), 1,
                                      1, style));
}

void moira_tree_key(moira_tree_writer_t *w, const char *key) {
    scalar(w, key, true);
    if (w->json) {
        fputs(": ", w->out);
        w->after_key = true;
    }
}

void moira_tree_string(moira_tree_writer_t *w, const char *value) {
    scalar(w, value, true);
}

void moira_tree_int(moira_tree_writer_t *w, int64_t value) {
    char text[32];
    snprintf(text, sizeof(text), "%" PRId64, value);
    scalar(w, text, false);
}

void moira_tree_double(moira_tree_writer_t *w, double value) {
    char text[40];
    if (!isfinite(value)) value = 0;
    if (value == 0) value = 0; /* no "-0" */
    snprintf(text, sizeof(text), "%.9g", value);
    scalar(w, text, false);
}

void moira_tree_bool(moira_tree_writer_t *w, bool value) {
    scalar(w, value ? "true" : "false", false);
}
