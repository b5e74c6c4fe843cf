#include "runtime/read_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The buffer doubles from here; most inputs fit in the first read. */
#define FIRST_CAPACITY 8192

/* Reads in a doubling buffer rather than trusting the file's size, which pipes and /proc files do
 * not report; the bound keeps a hostile or mistaken path from exhausting memory. */
moira_status_t moira_read_file(const char *path, const char *what, size_t max_bytes,
                               char **out_text, size_t *out_len) {
    *out_text = NULL;
    *out_len = 0;
    /* Opened without blocking: a FIFO nobody writes to would otherwise hang open(2) for ever.
     * Then blocking again, so a pipe with a writer (`--model <(...)`) is read to its end, and one
     * without reads as empty. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int err = errno;
        if (fd >= 0) close(fd);
        return moira_status_at(err == ENOENT ? MOIRA_CODE_NOT_FOUND : MOIRA_CODE_IO, path, 0, 0,
                               "cannot open %s: %s", what, strerror(err));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0, "is a directory, not a %s",
                               what);
    }
    int flags = fcntl(fd, F_GETFL);
    FILE *f = flags >= 0 && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        int err = errno;
        close(fd);
        return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot read %s: %s", what,
                               strerror(err));
    }
    size_t cap = FIRST_CAPACITY, len = 0;
    char *text = malloc(cap);
    moira_status_t status = MOIRA_OK_STATUS;
    while (text) {
        if (len == cap) {
            if (cap >= max_bytes) {
                status = moira_status_at(MOIRA_CODE_INVALID_INPUT, path, 0, 0,
                                         "larger than %zu bytes; not a %s", max_bytes, what);
                break;
            }
            char *grown = realloc(text, cap * 2);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            cap *= 2;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                status =
                    moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot read: %s", strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!text && !status)
        status = moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory reading", path);
    if (status) {
        free(text);
        return status;
    }
    *out_text = text;
    *out_len = len;
    return MOIRA_OK_STATUS;
}
