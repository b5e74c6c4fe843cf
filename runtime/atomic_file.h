/* Output files are written whole or not at all (DESIGN.md §6): every writer (safetensors, plans,
 * plan pictures) writes a temporary file beside the final one and renames it into place only
 * when everything was written and synced, so a reader never sees half a file, a failure leaves an
 * existing file as it was, and no temporary is left behind. Several outputs of one command can
 * be committed together: open them all, write them all, then commit them (a failure before the
 * commits leaves every output untouched). */
#ifndef MOIRA_RUNTIME_ATOMIC_FILE_H
#define MOIRA_RUNTIME_ATOMIC_FILE_H

#include <stdbool.h>
#include <stdio.h>

#include "runtime/status.h"

/* One output in the making. `path` "-" means standard output (no temporary, nothing to rename). */
typedef struct moira_atomic_file {
    char *path;   /* owned copy of the final path */
    char *temp;   /* owned: "PATH.tmp.XXXXXX" beside it; NULL for standard output */
    FILE *stream; /* where to write; owned unless it is stdout */
} moira_atomic_file_t;

/* Creates the temporary file beside `path` (same directory, so the rename cannot cross file
 * systems). Errors: IO naming the path (a missing or read-only directory), OUT_OF_MEMORY. On
 * error `*out` holds nothing to release. */
moira_status_t moira_atomic_open(const char *path, moira_atomic_file_t *out);

/* Finishes the file: flushes and syncs it, gives it the mode a new file gets (0666 less the
 * umask) or the mode of the file it replaces, and renames it over `path`. Any failure, including
 * a write error the stream remembered, removes the temporary and returns IO. Releases `file`
 * either way. */
moira_status_t moira_atomic_commit(moira_atomic_file_t *file);

/* Closes and removes the temporary without touching `path`; releases `file`. Safe to call on a
 * file already committed or aborted, or zeroed. */
void moira_atomic_abort(moira_atomic_file_t *file);

/* One output in one call: `write` produces the contents into the stream and returns false on
 * failure, which (like a write error of the stream) aborts the file: IO naming the path. */
typedef bool (*moira_stream_writer_fn)(FILE *out, void *context);
moira_status_t moira_write_file_atomically(const char *path, moira_stream_writer_fn write,
                                           void *context);

#endif
