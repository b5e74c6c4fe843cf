#include "runtime/yaml_text.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Walks the event stream, counting open mappings and lists, and stops at the first one too deep:
 * the work done is bounded by the depth limit however deep the text goes. */
moira_status_t moira_yaml_check_depth(const char *text, size_t len, const char *file) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "cannot start the YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    moira_status_t status = MOIRA_OK_STATUS;
    int depth = 0;
    for (bool done = false; !done && !status;) {
        yaml_event_t event;
        if (!yaml_parser_parse(&parser, &event)) break; /* the loader reports it */
        switch (event.type) {
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (++depth > MOIRA_YAML_MAX_DEPTH)
                status = moira_status_at(
                    MOIRA_CODE_INVALID_INPUT, file, (int)event.start_mark.line + 1,
                    (int)event.start_mark.column + 1,
                    "mappings and lists nested more than %d deep; no Moira file needs that",
                    MOIRA_YAML_MAX_DEPTH);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);
    return status;
}

const char *moira_yaml_hint(const yaml_parser_t *parser, const char *text, size_t len) {
    size_t at = parser->problem_mark.index;
    bool tab = parser->error != YAML_READER_ERROR && text && at < len && text[at] == '\t' &&
               !(parser->problem && strstr(parser->problem, "tab"));
    return tab ? " (the character there is a tab: YAML indents and separates with spaces)" : "";
}
