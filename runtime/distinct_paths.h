/* The files one command names must not collide: two outputs on one file would leave only the
 * last one written, and an output on a file the command reads (`moira plan --check P --svg P`)
 * replaces the user's input with something else. Files are compared as the system sees them:
 * an existing file by device and inode (so a link, a second name or "./x" beside "x" is caught),
 * a new one by its folder's real path and its name. Character devices (/dev/null, a terminal)
 * may be named any number of times: writing to them twice loses nothing. */
#ifndef MOIRA_RUNTIME_DISTINCT_PATHS_H
#define MOIRA_RUNTIME_DISTINCT_PATHS_H

#include <stdbool.h>

#include "runtime/status.h"

/* One file a command line names. */
typedef struct moira_path_use {
    const char *option; /* borrowed: how the user named it ("-o", "--svg", "--model") */
    const char *path;   /* borrowed; NULL when the option was not given; "-" is stdout */
    bool output;        /* written (true) or read (false) */
} moira_path_use_t;

/* INVALID_ARGUMENT (exit 2) naming both options when two outputs, or an output and an input, are
 * the same file; OK otherwise (two inputs may be the same file). OUT_OF_MEMORY. */
moira_status_t moira_check_distinct_paths(const moira_path_use_t *uses, int n);

#endif
