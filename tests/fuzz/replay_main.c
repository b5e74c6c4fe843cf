/* The fuzz targets as ordinary tests: feeds every file named on the command line, and every file
 * in every directory named there, through LLVMFuzzerTestOneInput once. Used by CTest with the
 * regression inputs (tests/fuzz/regressions/TARGET) and the seeds, so that a crash a fuzzer once
 * found stays fixed in the normal gcc build. Exits 1 when it was given nothing to replay. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

static int replayed;

/* Reads one input whole and runs the target on it; a broken invariant aborts the process. */
static void replay_file(const char *path) {
    size_t len = 0;
    char *data = moira_fuzz_read_fixture(path, &len);
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    free(data);
    replayed++;
}

/* qsort's order for replay_dir: by path, so every run replays in the same order. */
static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory's regular files in name order, so a failure is reproducible. */
static void replay_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        exit(1);
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "README.md")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof(*names));
            if (!names) abort();
        }
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (!names[n]) abort();
        sprintf(names[n++], "%s/%s", dir, e->d_name);
    }
    closedir(d);
    /* An empty directory leaves `names` NULL, which qsort must not be given even for 0 items. */
    if (n > 1) qsort(names, n, sizeof(*names), compare_names);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) replay_file(names[i]);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (S_ISDIR(st.st_mode))
            replay_dir(argv[i]);
        else
            replay_file(argv[i]);
    }
    printf("%s: %d inputs replayed without a finding\n", argv[0], replayed);
    return replayed > 0 ? 0 : 1;
}
