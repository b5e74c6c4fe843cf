/* Output files are written whole or not at all (DESIGN.md §6): every writer (safetensors, plans,
 * plan pictures) writes a temporary file beside the final one and renames it into place only
 * when everything was written and synced, so a reader never sees half a file, a failure leaves an
 * existing file as it was, and no temporary is left behind, not even when Ctrl-C or SIGTERM ends
 * Moira half way (runtime/temp_cleanup.h). Several outputs of one command are committed together
 * (moira_atomic_commit_all): both or neither.
 *
 * Only a regular file is replaced (runtime/output_target.h): through a symbolic link the file it
 * names is replaced and the link kept; a device, a FIFO or a socket (/dev/null, /dev/stdout, a
 * named pipe) is written in place and never replaced; a folder is refused. What is written in
 * place reaches its reader as it is written, so "whole or not at all" cannot hold for it. A named
 * pipe nobody reads from is refused (IO) rather than waited on, so start the reader first. */
#ifndef MOIRA_RUNTIME_ATOMIC_FILE_H
#define MOIRA_RUNTIME_ATOMIC_FILE_H

#include <stdbool.h>
#include <stdio.h>

#include "runtime/status.h"

/* One output in the making. `path` "-" means standard output (no temporary, nothing to rename).
 * A zeroed struct is a valid "nothing open". */
typedef struct moira_atomic_file {
    char *path;       /* owned copy of the path as given (messages) */
    char *target;     /* owned: the file the rename replaces; NULL when written in place */
    char *temp;       /* owned: "TARGET.tmp.XXXXXX" beside the target; NULL when in place */
    FILE *stream;     /* where to write; owned unless it is stdout */
    int cleanup_slot; /* 1 + the temp's slot in runtime/temp_cleanup.h; 0 when none */
} moira_atomic_file_t;

/* Creates the temporary file beside the file `path` leads to (same directory, so the rename
 * cannot cross file systems), or opens a device, FIFO or socket for writing in place (a FIFO
 * without a reader is refused, not waited on). Errors: INVALID_ARGUMENT for a folder; IO naming
 * the path (a missing or read-only directory, a pipe with no reader, a loop of links);
 * OUT_OF_MEMORY. On error `*out` holds nothing to release. */
moira_status_t moira_atomic_open(const char *path, moira_atomic_file_t *out);

/* Finishes the file: flushes and syncs it, gives it the mode a new file gets (0666 less the
 * umask) or the mode of the file it replaces, and renames it over the target. Any failure,
 * including a write error the stream remembered, removes the temporary and returns IO. Releases
 * `file` either way. */
moira_status_t moira_atomic_commit(moira_atomic_file_t *file);

/* Commits `n` files as one: every file is finished first (a write error anywhere renames
 * nothing), then they are renamed in order, and if a rename fails the ones already renamed are
 * put back (the file each replaced, kept meanwhile as a hard link beside it, or nothing where
 * there was none), so either every output is new or none is. Releases every file either way;
 * zeroed entries (outputs not asked for) are skipped. */
moira_status_t moira_atomic_commit_all(moira_atomic_file_t *files, int n);

/* Closes and removes the temporary without touching the target; releases `file`. Safe to call
 * on a file already committed or aborted, or zeroed. */
void moira_atomic_abort(moira_atomic_file_t *file);

/* One output in one call: `write` produces the contents into the stream and returns false on
 * failure, which (like a write error of the stream) aborts the file: IO naming the path. */
typedef bool (*moira_stream_writer_fn)(FILE *out, void *context);
moira_status_t moira_write_file_atomically(const char *path, moira_stream_writer_fn write,
                                           void *context);

#endif
