/* Output files are written whole or not at all (DESIGN.md §6). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "placement/plan.h"

moira_status_t moira_write_file_atomically(const char *path, moira_stream_writer_fn write,
                                           void *context) {
    if (!strcmp(path, "-")) {
        bool ok = write(stdout, context) && fflush(stdout) == 0;
        return ok ? MOIRA_OK_STATUS : moira_status_make(MOIRA_CODE_IO, "cannot write to stdout");
    }
    size_t n = strlen(path);
    char *temp = malloc(n + sizeof(".tmp.XXXXXX"));
    if (!temp) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
    memcpy(temp, path, n);
    memcpy(temp + n, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
    int fd = mkstemp(temp);
    if (fd < 0) {
        int err = errno;
        free(temp);
        return moira_status_make(MOIRA_CODE_IO, "cannot create %s: %s", path, strerror(err));
    }
    FILE *out = fdopen(fd, "w");
    bool ok = out && write(out, context);
    ok = ok && fflush(out) == 0 && fsync(fileno(out)) == 0;
    int err = errno;
    if (out)
        ok = (fclose(out) == 0) && ok;
    else
        close(fd);
    if (ok && rename(temp, path) != 0) {
        err = errno;
        ok = false;
    }
    moira_status_t status = MOIRA_OK_STATUS;
    if (!ok) {
        unlink(temp);
        status = moira_status_make(MOIRA_CODE_IO, "cannot write %s: %s", path,
                                   err ? strerror(err) : "write failed");
    }
    free(temp);
    return status;
}
