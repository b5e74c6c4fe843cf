#include "runtime/distinct_paths.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/output_target.h"

/* What makes two paths the same file. */
typedef struct identity {
    bool exists, exempt; /* exempt: a character device */
    dev_t dev;
    ino_t ino;
    char *name; /* owned: for a file not there yet, its folder's real path and its name */
} identity_t;

/* A file not there yet: the real path of the folder the last link leads into, and the name. A
 * folder that cannot be resolved keeps the path as written (creating the file will fail). */
static moira_status_t new_file_name(const char *final, identity_t *id) {
    const char *slash = strrchr(final, '/');
    char *dir = slash ? strndup(final, slash == final ? 1 : (size_t)(slash - final)) : strdup(".");
    if (!dir) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", final);
    const char *base = slash ? slash + 1 : final;
    char real[PATH_MAX];
    const char *folder = realpath(dir, real) ? real : dir;
    size_t n = strlen(folder) + strlen(base) + 2;
    id->name = malloc(n);
    if (id->name) snprintf(id->name, n, "%s/%s", folder, base);
    free(dir);
    return id->name ? MOIRA_OK_STATUS
                    : moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", final);
}

static moira_status_t identify(const char *path, identity_t *id) {
    memset(id, 0, sizeof(*id));
    struct stat st;
    bool found = !strcmp(path, "-") ? fstat(STDOUT_FILENO, &st) == 0 : stat(path, &st) == 0;
    if (found) {
        id->exists = true;
        id->exempt = S_ISCHR(st.st_mode);
        id->dev = st.st_dev;
        id->ino = st.st_ino;
        return MOIRA_OK_STATUS;
    }
    if (!strcmp(path, "-")) return MOIRA_OK_STATUS; /* stdout closed: nothing to collide with */
    moira_output_target_t target;
    MOIRA_RETURN_IF_ERROR(moira_output_target_resolve(path, &target));
    moira_status_t status = new_file_name(target.final, id);
    moira_output_target_free(&target);
    return status;
}

static bool same_file(const identity_t *a, const identity_t *b) {
    if (a->exempt || b->exempt) return false;
    if (a->exists && b->exists) return a->dev == b->dev && a->ino == b->ino;
    return !a->exists && !b->exists && a->name && b->name && !strcmp(a->name, b->name);
}

/* The complaint for a pair, the output named second when only one is an output. */
static moira_status_t collision(const moira_path_use_t *a, const moira_path_use_t *b) {
    if (a->output && b->output)
        return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                                 "%s %s and %s %s are the same file; give each output its own",
                                 a->option, a->path, b->option, b->path);
    const moira_path_use_t *in = a->output ? b : a, *out = a->output ? a : b;
    return moira_status_make(MOIRA_CODE_INVALID_ARGUMENT,
                             "%s %s is the file %s %s reads; writing it would replace that input",
                             out->option, out->path, in->option, in->path);
}

moira_status_t moira_check_distinct_paths(const moira_path_use_t *uses, int n) {
    identity_t *ids = calloc(n > 0 ? (size_t)n : 1, sizeof(*ids));
    if (!ids) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    moira_status_t status = MOIRA_OK_STATUS;
    for (int i = 0; i < n && !status; i++)
        if (uses[i].path) status = identify(uses[i].path, &ids[i]);
    for (int i = 0; i < n && !status; i++)
        for (int j = i + 1; j < n && !status; j++)
            if (uses[i].path && uses[j].path && (uses[i].output || uses[j].output) &&
                same_file(&ids[i], &ids[j]))
                status = collision(&uses[i], &uses[j]);
    for (int i = 0; i < n; i++)
        free(ids[i].name);
    free(ids);
    return status;
}
