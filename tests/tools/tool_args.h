/* Command-line helpers shared by the test tools (moira-test-checkpoint, moira-test-reference):
 * option values parsed whole or refused with a message, and the usage-error convention of the
 * `moira` CLI (message on stderr, exit 2). */
#ifndef MOIRA_TESTS_TOOLS_TOOL_ARGS_H
#define MOIRA_TESTS_TOOLS_TOOL_ARGS_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/status.h"

/* Prints "TOOL: message; see TOOL --help" to stderr and returns 2, the exit code of bad usage. */
int moira_tool_usage_error(const char *tool, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses `text` as a whole decimal integer in [min, max] into *out; false after printing which
 * option was wrong and why. `tool`, `option` and `text` are borrowed. */
bool moira_tool_parse_int(const char *tool, const char *option, const char *text, long long min,
                          long long max, long long *out);

/* Parses a comma-separated list of integers in [0, max] ("1,2,3") into a new array: *out_ids
 * (malloc'd, owned by the caller) holds *out_count >= 1 entries. Errors: INVALID_ARGUMENT naming
 * `option` and the 1-based column of the first bad entry in `text`; OUT_OF_MEMORY. */
moira_status_t moira_tool_parse_ids(const char *option, const char *text, long long max,
                                    int32_t **out_ids, int64_t *out_count);

#endif
