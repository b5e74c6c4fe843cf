#include "runtime/output_target.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The kernel's own limit on links followed in one lookup (MAXSYMLINKS). */
#define MAX_LINKS 40

/* A link's text is relative to the folder holding the link; returns a new owned path. */
static char *join_link(const char *link_path, const char *text) {
    if (text[0] == '/') return strdup(text);
    const char *slash = strrchr(link_path, '/');
    size_t dir_len = slash ? (size_t)(slash - link_path) + 1 : 0;
    size_t text_len = strlen(text);
    char *joined = malloc(dir_len + text_len + 1);
    if (!joined) return NULL;
    memcpy(joined, link_path, dir_len);
    memcpy(joined + dir_len, text, text_len + 1);
    return joined;
}

/* /proc/self/fd/N and its kin are "magic" links: their text ("pipe:[42]", a deleted file's old
 * name) is not a path to follow, while open() reaches the right file through them. */
static bool in_proc(const char *path) {
    return !strncmp(path, "/proc/", 6);
}

/* The kind of an existing, fully followed file. */
static moira_output_kind_t kind_of(const struct stat *st) {
    if (S_ISDIR(st->st_mode)) return MOIRA_OUTPUT_DIRECTORY;
    return S_ISREG(st->st_mode) ? MOIRA_OUTPUT_REGULAR : MOIRA_OUTPUT_IN_PLACE;
}

moira_status_t moira_output_target_resolve(const char *path, moira_output_target_t *out) {
    memset(out, 0, sizeof(*out));
    char *current = strdup(path);
    if (!current) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
    for (int hops = 0;; hops++) {
        if (in_proc(current)) {
            free(current);
            out->final = strdup(path);
            if (!out->final)
                return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
            if (stat(path, &out->st) != 0) { /* a closed descriptor: let the open report it */
                out->kind = MOIRA_OUTPUT_NEW;
                return MOIRA_OK_STATUS;
            }
            out->kind = S_ISDIR(out->st.st_mode) ? MOIRA_OUTPUT_DIRECTORY : MOIRA_OUTPUT_IN_PLACE;
            return MOIRA_OK_STATUS;
        }
        if (lstat(current, &out->st) != 0) {
            out->kind = MOIRA_OUTPUT_NEW; /* missing, or a folder problem the create reports */
            break;
        }
        if (!S_ISLNK(out->st.st_mode)) {
            out->kind = kind_of(&out->st);
            break;
        }
        if (hops == MAX_LINKS) {
            free(current);
            return moira_status_at(MOIRA_CODE_IO, path, 0, 0,
                                   "more than %d symbolic links to follow", MAX_LINKS);
        }
        char text[PATH_MAX];
        ssize_t n = readlink(current, text, sizeof(text) - 1);
        if (n < 0) {
            out->kind = MOIRA_OUTPUT_NEW;
            break;
        }
        text[n] = '\0';
        char *next = join_link(current, text);
        free(current);
        if (!next) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "%s: out of memory", path);
        current = next;
    }
    out->final = current;
    return MOIRA_OK_STATUS;
}

void moira_output_target_free(moira_output_target_t *target) {
    free(target->final);
    memset(target, 0, sizeof(*target));
}
