/* Whole-file reads for the parsers of small text inputs (model configs, topologies, plans,
 * profiles): one bounded loop, so a device node, a pipe or a huge file is refused the same way
 * everywhere. */
#ifndef MOIRA_RUNTIME_READ_FILE_H
#define MOIRA_RUNTIME_READ_FILE_H

#include <stddef.h>

#include "runtime/status.h"

/* Reads all of `path`. `what` names the kind of file in messages ("model config", "plan file").
 * Errors: NOT_FOUND or IO naming the path; INVALID_INPUT when it grows past `max_bytes`;
 * OUT_OF_MEMORY. On success *out_text (malloc'd, owned by the caller, not NUL-terminated) holds
 * *out_len bytes. */
moira_status_t moira_read_file(const char *path, const char *what, size_t max_bytes,
                               char **out_text, size_t *out_len);

#endif
