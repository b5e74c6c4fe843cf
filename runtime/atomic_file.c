#include "runtime/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static moira_status_t io_error(const char *path, const char *doing, int err) {
    char text[128];
    return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "%s: %s", doing,
                           err ? strerror_r(err, text, sizeof(text))
                               : "a write to the temporary file failed (disk full?)");
}

moira_status_t moira_atomic_open(const char *path, moira_atomic_file_t *out) {
    memset(out, 0, sizeof(*out));
    if (!path || !*path)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "an output file needs a name");
    out->path = strdup(path);
    if (!out->path) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
    if (!strcmp(path, "-")) {
        out->stream = stdout;
        return MOIRA_OK_STATUS;
    }
    size_t n = strlen(path);
    out->temp = malloc(n + sizeof(".tmp.XXXXXX"));
    if (!out->temp) {
        moira_atomic_abort(out);
        return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    memcpy(out->temp, path, n);
    memcpy(out->temp + n, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
    int fd = mkostemp(out->temp, O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        free(out->temp);
        out->temp = NULL; /* nothing was created: nothing to remove */
        moira_atomic_abort(out);
        return io_error(path, "cannot create a temporary file next to it", err);
    }
    out->stream = fdopen(fd, "w");
    if (!out->stream) {
        int err = errno;
        close(fd);
        moira_atomic_abort(out);
        return io_error(path, "cannot open the temporary file", err);
    }
    return MOIRA_OK_STATUS;
}

/* The mode a file created with open(..., 0666) would get: mkstemp makes 0600, which would hide
 * outputs from other users. umask can only be read by setting it; Moira's threads create no files
 * while an output is committed. */
static mode_t new_file_mode(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) return st.st_mode & 07777;
    mode_t mask = umask(0);
    umask(mask);
    return 0666 & ~mask;
}

/* Best effort: makes the rename itself durable. The data is already synced and the rename cannot
 * be undone, so a failure here is not reported. */
static void sync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    char *slash = strrchr(copy, '/');
    const char *dir = ".";
    if (slash == copy)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = copy;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

moira_status_t moira_atomic_commit(moira_atomic_file_t *file) {
    if (!file->stream) {
        moira_atomic_abort(file);
        return moira_status_make(MOIRA_CODE_INTERNAL, "commit of an output that is not open");
    }
    if (!file->temp) { /* standard output */
        bool ok = !ferror(file->stream) && fflush(file->stream) == 0;
        int err = errno;
        file->stream = NULL;
        moira_status_t status = ok ? MOIRA_OK_STATUS : io_error("<stdout>", "cannot write", err);
        moira_atomic_abort(file);
        return status;
    }
    errno = 0;
    bool ok = !ferror(file->stream) && fflush(file->stream) == 0 &&
              fchmod(fileno(file->stream), new_file_mode(file->path)) == 0 &&
              fsync(fileno(file->stream)) == 0;
    int err = errno;
    if (fclose(file->stream) != 0 && ok) {
        ok = false;
        err = errno;
    }
    file->stream = NULL;
    if (ok && rename(file->temp, file->path) != 0) {
        ok = false;
        err = errno;
    }
    moira_status_t status = MOIRA_OK_STATUS;
    if (ok) {
        sync_parent_dir(file->path);
        free(file->temp);
        file->temp = NULL; /* renamed: nothing to remove */
    } else {
        status = io_error(file->path, "cannot write", err);
    }
    moira_atomic_abort(file);
    return status;
}

void moira_atomic_abort(moira_atomic_file_t *file) {
    if (file->stream && file->stream != stdout) fclose(file->stream);
    if (file->temp) unlink(file->temp);
    free(file->temp);
    free(file->path);
    memset(file, 0, sizeof(*file));
}

moira_status_t moira_write_file_atomically(const char *path, moira_stream_writer_fn write,
                                           void *context) {
    moira_atomic_file_t file;
    MOIRA_RETURN_IF_ERROR(moira_atomic_open(path, &file));
    if (!write(file.stream, context)) {
        moira_atomic_abort(&file);
        return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "cannot write");
    }
    return moira_atomic_commit(&file);
}
