/* Where an output path really leads, before anything is written to it. An output is replaced by
 * renaming a finished temporary over it, but only a regular file (or a name not yet taken) may be
 * replaced: a symbolic link keeps being a link (the file it names is replaced, and the temporary
 * goes beside that file so the rename stays on one file system), and a device, a FIFO or a
 * socket (/dev/null, /dev/stdout, a named pipe) is written in place, never replaced. */
#ifndef MOIRA_RUNTIME_OUTPUT_TARGET_H
#define MOIRA_RUNTIME_OUTPUT_TARGET_H

#include <stdbool.h>
#include <sys/stat.h>

#include "runtime/status.h"

typedef enum moira_output_kind {
    MOIRA_OUTPUT_NEW,       /* nothing there yet: created by a rename */
    MOIRA_OUTPUT_REGULAR,   /* a regular file: replaced by a rename */
    MOIRA_OUTPUT_IN_PLACE,  /* a device, FIFO, socket or /proc link: opened and written as is */
    MOIRA_OUTPUT_DIRECTORY, /* a folder: not an output */
} moira_output_kind_t;

typedef struct moira_output_target {
    moira_output_kind_t kind;
    char *final;    /* owned: the path a rename replaces (the last link's target), or for
                       IN_PLACE the path as given, which open() follows */
    struct stat st; /* of the existing file (not for NEW) */
} moira_output_target_t;

/* Follows `path` through symbolic links (at most 40, as the kernel does) to the name a rename
 * must replace. A link into /proc (/dev/stdout is one) names an open file, not a path, so such
 * a path is written in place whatever the file is. A path that cannot be examined (a missing
 * folder, a path through a regular file) comes back as NEW, so that creating the temporary
 * reports the problem. Errors: IO naming the path for a loop of links, OUT_OF_MEMORY. On error
 * `*out` holds nothing to release. */
moira_status_t moira_output_target_resolve(const char *path, moira_output_target_t *out);

/* Releases what resolve allocated; safe on a zeroed target. */
void moira_output_target_free(moira_output_target_t *target);

#endif
