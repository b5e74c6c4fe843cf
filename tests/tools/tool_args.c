#include "tests/tools/tool_args.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moira_tool_usage_error(const char *tool, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "%s: ", tool);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "; see %s --help\n", tool);
    va_end(args);
    return 2;
}

/* One integer at `text`, ending at the first character that is not part of it; false when there
 * is no number there or it overflows. */
static bool parse_prefix(const char *text, long long *out, char **end) {
    errno = 0;
    if (!(*text >= '0' && *text <= '9') && *text != '-') return false;
    *out = strtoll(text, end, 10);
    return errno == 0 && *end != text;
}

bool moira_tool_parse_int(const char *tool, const char *option, const char *text, long long min,
                          long long max, long long *out) {
    char *end = NULL;
    long long value = 0;
    if (!parse_prefix(text, &value, &end) || *end != '\0' || value < min || value > max) {
        moira_tool_usage_error(tool, "%s takes an integer from %lld to %lld, got \"%s\"", option,
                               min, max, text);
        return false;
    }
    *out = value;
    return true;
}

moira_status_t moira_tool_parse_ids(const char *option, const char *text, long long max,
                                    int32_t **out_ids, int64_t *out_count) {
    size_t capacity = 1;
    for (const char *p = text; *p; p++)
        capacity += *p == ',';
    int32_t *ids = malloc(capacity * sizeof(*ids));
    if (!ids) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", option);
    int64_t count = 0;
    const char *p = text;
    for (;;) {
        char *end = NULL;
        long long value = 0;
        if (!parse_prefix(p, &value, &end) || value < 0 || value > max ||
            (*end != ',' && *end != '\0')) {
            free(ids);
            return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                     "%s: column %d: expected a token id from 0 to %lld in \"%s\"",
                                     option, (int)(p - text) + 1, max, text);
        }
        ids[count++] = (int32_t)value;
        if (*end == '\0') break;
        p = end + 1;
    }
    *out_ids = ids;
    *out_count = count;
    return MOIRA_OK_STATUS;
}
