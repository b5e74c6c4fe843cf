#include "runtime/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/output_target.h"
#include "runtime/temp_cleanup.h"

static moira_status_t io_error(const char *path, const char *doing, int err) {
    char text[128];
    return moira_status_at(MOIRA_CODE_IO, path, 0, 0, "%s: %s", doing,
                           err ? strerror_r(err, text, sizeof(text))
                               : "a write to the temporary file failed (disk full?)");
}

static moira_status_t out_of_memory(const char *path) {
    return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
}

/* The same open file as standard output (/dev/stdout, /proc/self/fd/1, the terminal Moira
 * prints to): written through stdout itself, so it interleaves with what else Moira prints
 * instead of overwriting it through a second file offset. */
static bool is_stdout(const struct stat *st) {
    struct stat out;
    return fstat(STDOUT_FILENO, &out) == 0 && out.st_dev == st->st_dev && out.st_ino == st->st_ino;
}

/* A device, FIFO or socket, or a file reached through /proc: opened as it is, never replaced. A
 * FIFO is opened without blocking first, so that one nobody reads is refused at once instead of
 * hanging Moira; the descriptor is then made blocking, as writes to a slow reader must wait. */
static moira_status_t open_in_place(moira_atomic_file_t *out, const moira_output_target_t *t) {
    if (is_stdout(&t->st)) {
        out->stream = stdout;
        return MOIRA_OK_STATUS;
    }
    int flags = O_WRONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK;
    if (S_ISREG(t->st.st_mode)) flags |= O_TRUNC;
    int fd = open(t->final, flags);
    if (fd < 0 && errno == ENXIO && S_ISFIFO(t->st.st_mode))
        return moira_status_at(MOIRA_CODE_IO, out->path, 0, 0,
                               "a named pipe with nobody reading from it: start the reader first");
    if (fd < 0) return io_error(out->path, "cannot open it for writing", errno);
    int status_flags = fcntl(fd, F_GETFL);
    if (status_flags < 0 || fcntl(fd, F_SETFL, status_flags & ~O_NONBLOCK) != 0 ||
        !(out->stream = fdopen(fd, "w"))) {
        int err = errno;
        close(fd);
        return io_error(out->path, "cannot open it for writing", err);
    }
    return MOIRA_OK_STATUS;
}

/* A regular file or a new one: the temporary goes beside the file a rename will replace. */
static moira_status_t open_temporary(moira_atomic_file_t *out, const char *target) {
    out->target = strdup(target);
    size_t n = strlen(target);
    out->temp = malloc(n + sizeof(".tmp.XXXXXX"));
    if (!out->target || !out->temp) {
        free(out->temp);
        out->temp = NULL;
        return out_of_memory(out->path);
    }
    memcpy(out->temp, target, n);
    memcpy(out->temp + n, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
    int fd = mkostemp(out->temp, O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        free(out->temp);
        out->temp = NULL; /* nothing was created: nothing to remove */
        return io_error(out->path, "cannot create a temporary file next to it", err);
    }
    out->cleanup_slot = moira_temp_cleanup_remember(out->temp) + 1;
    out->stream = fdopen(fd, "w");
    if (!out->stream) {
        int err = errno;
        close(fd);
        return io_error(out->path, "cannot open the temporary file", err);
    }
    return MOIRA_OK_STATUS;
}

moira_status_t moira_atomic_open(const char *path, moira_atomic_file_t *out) {
    memset(out, 0, sizeof(*out));
    if (!path || !*path)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT, "an output file needs a name");
    out->path = strdup(path);
    if (!out->path) return out_of_memory(path);
    if (!strcmp(path, "-")) {
        out->stream = stdout;
        return MOIRA_OK_STATUS;
    }
    moira_output_target_t target;
    moira_status_t status = moira_output_target_resolve(path, &target);
    if (!status && target.kind == MOIRA_OUTPUT_DIRECTORY)
        status = moira_status_at(MOIRA_CODE_INVALID_ARGUMENT, path, 0, 0,
                                 "is a folder; an output must name a file");
    else if (!status && target.kind == MOIRA_OUTPUT_IN_PLACE)
        status = open_in_place(out, &target);
    else if (!status)
        status = open_temporary(out, target.final);
    moira_output_target_free(&target);
    if (status) moira_atomic_abort(out);
    return status;
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

/* Everything but the rename: the bytes reach the file (and, for a temporary, the disk, with its
 * final mode), and the stream is closed. Standard output is flushed, not closed. */
static moira_status_t finish(moira_atomic_file_t *file) {
    if (!file->stream)
        return moira_status_make(MOIRA_CODE_INTERNAL, "commit of an output that is not open");
    bool to_stdout = file->stream == stdout;
    errno = 0;
    bool ok = !ferror(file->stream) && fflush(file->stream) == 0;
    if (ok && file->temp)
        ok = fchmod(fileno(file->stream), new_file_mode(file->target)) == 0 &&
             fsync(fileno(file->stream)) == 0;
    int err = errno;
    if (!to_stdout && fclose(file->stream) != 0 && ok) {
        ok = false;
        err = errno;
    }
    file->stream = NULL;
    return ok ? MOIRA_OK_STATUS
              : io_error(to_stdout ? "<stdout>" : file->path, "cannot write", err);
}

/* Keeps the file `file` is about to replace as a hard link beside it, so that a later failure
 * can put it back. Returns the owned link's name, or NULL when there is nothing to keep or the
 * file system cannot link (then a failure can only remove the new file). `*slot` is 1 + its
 * cleanup slot. */
static char *keep_old(const moira_atomic_file_t *file, int *slot) {
    *slot = 0;
    struct stat st;
    if (lstat(file->target, &st) != 0 || !S_ISREG(st.st_mode)) return NULL;
    size_t n = strlen(file->temp);
    char *backup = malloc(n + sizeof(".old"));
    if (!backup) return NULL;
    memcpy(backup, file->temp, n);
    memcpy(backup + n, ".old", sizeof(".old"));
    *slot = moira_temp_cleanup_remember(backup) + 1;
    if (link(file->target, backup) != 0) {
        moira_temp_cleanup_forget(*slot - 1);
        *slot = 0;
        free(backup);
        return NULL;
    }
    return backup;
}

/* Undoes the renames of files[0..k): each gets back the file it replaced, or is removed where
 * there was none. A backup that cannot be put back is left where it is (the user's old data),
 * never removed. */
static void put_back(moira_atomic_file_t *files, int k, char **backups, int *backup_slots) {
    for (int i = k - 1; i >= 0; i--) {
        if (!files[i].target) continue;
        if (!backups[i]) {
            unlink(files[i].target);
            continue;
        }
        (void)rename(backups[i], files[i].target);
        moira_temp_cleanup_forget(backup_slots[i] - 1);
        backup_slots[i] = 0;
        free(backups[i]);
        backups[i] = NULL;
    }
}

/* More outputs than any command has; commit_all refuses more. */
#define MAX_COMMITTED_TOGETHER 8

moira_status_t moira_atomic_commit_all(moira_atomic_file_t *files, int n) {
    moira_status_t status = MOIRA_OK_STATUS;
    if (n > MAX_COMMITTED_TOGETHER) {
        for (int i = 0; i < n; i++)
            moira_atomic_abort(&files[i]);
        return moira_status_make(MOIRA_CODE_INTERNAL, "%d outputs committed together (at most %d)",
                                 n, MAX_COMMITTED_TOGETHER);
    }
    int last_rename = -1;
    for (int i = 0; i < n && !status; i++) {
        if (!files[i].path) continue;
        status = finish(&files[i]);
        if (files[i].temp) last_rename = i;
    }
    char *backups[MAX_COMMITTED_TOGETHER];
    int backup_slots[MAX_COMMITTED_TOGETHER];
    memset(backups, 0, sizeof(backups));
    memset(backup_slots, 0, sizeof(backup_slots));
    for (int i = 0; i < n && !status; i++) {
        if (!files[i].temp) continue;
        if (i < last_rename) backups[i] = keep_old(&files[i], &backup_slots[i]);
        if (rename(files[i].temp, files[i].target) != 0) {
            status = io_error(files[i].path,
                              i > 0 ? "cannot write (the outputs written with it were put back)"
                                    : "cannot write",
                              errno);
            put_back(files, i, backups, backup_slots);
            break;
        }
        moira_temp_cleanup_forget(files[i].cleanup_slot - 1);
        files[i].cleanup_slot = 0;
        free(files[i].temp);
        files[i].temp = NULL; /* renamed: nothing to remove */
    }
    for (int i = 0; i < n; i++) {
        if (backups[i]) unlink(backups[i]);
        moira_temp_cleanup_forget(backup_slots[i] - 1);
        free(backups[i]);
        if (!status && files[i].target) sync_parent_dir(files[i].target);
        moira_atomic_abort(&files[i]);
    }
    return status;
}

moira_status_t moira_atomic_commit(moira_atomic_file_t *file) {
    if (!file->path) {
        moira_atomic_abort(file);
        return moira_status_make(MOIRA_CODE_INTERNAL, "commit of an output that is not open");
    }
    return moira_atomic_commit_all(file, 1);
}

void moira_atomic_abort(moira_atomic_file_t *file) {
    if (file->stream && file->stream != stdout) fclose(file->stream);
    if (file->temp) unlink(file->temp);
    moira_temp_cleanup_forget(file->cleanup_slot - 1);
    free(file->temp);
    free(file->target);
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
