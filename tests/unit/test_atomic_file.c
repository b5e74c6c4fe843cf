/* Outputs are written whole or not at all (runtime/atomic_file.h): a committed file has its
 * contents and an ordinary mode, and every failure (a missing folder, a path through a file, a
 * write error, a writer's own error, an abort) leaves the old file as it was and no temporary. */
#include "runtime/atomic_file.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/testing.h"

static char dir[64];

static const char *in_dir(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

/* The whole contents of a small file, or "" when it does not exist. */
static const char *contents(const char *path) {
    static char buf[4096];
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Entries of the test directory whose name holds ".tmp.": left-behind temporaries. */
static int temporaries(void) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;)
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

static void write_text(moira_atomic_file_t *file, const char *text) {
    CHECK(fputs(text, file->stream) >= 0);
}

static void test_commit(void) {
    char path[128];
    in_dir(path, sizeof(path), "out.txt");
    mode_t old_mask = umask(022);
    moira_atomic_file_t file;
    CHECK_OK(moira_atomic_open(path, &file));
    write_text(&file, "first");
    CHECK(access(path, F_OK) != 0); /* nothing at the final path until the commit */
    CHECK(temporaries() == 1);
    CHECK_OK(moira_atomic_commit(&file));
    CHECK(!strcmp(contents(path), "first"));
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
    /* Replacing a file keeps the mode its owner gave it. */
    CHECK(chmod(path, 0640) == 0);
    CHECK_OK(moira_atomic_open(path, &file));
    write_text(&file, "second");
    CHECK_OK(moira_atomic_commit(&file));
    CHECK(!strcmp(contents(path), "second"));
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640);
    umask(old_mask);
    CHECK(temporaries() == 0);
}

static void test_abort_and_failures(void) {
    char path[128], bad[160];
    in_dir(path, sizeof(path), "keep.txt");
    moira_atomic_file_t file;
    CHECK_OK(moira_atomic_open(path, &file));
    write_text(&file, "kept");
    CHECK_OK(moira_atomic_commit(&file));

    CHECK_OK(moira_atomic_open(path, &file));
    write_text(&file, "discarded");
    moira_atomic_abort(&file);
    moira_atomic_abort(&file); /* twice is harmless */
    CHECK(!strcmp(contents(path), "kept"));

    snprintf(bad, sizeof(bad), "%s/no/such/dir/out.txt", dir);
    moira_status_t status = moira_atomic_open(bad, &file);
    CHECK(moira_status_code(status) == MOIRA_CODE_IO);
    CHECK(strstr(moira_status_message(status), bad) != NULL);
    printf("  %s\n", moira_status_message(status));
    moira_status_free(status);
    snprintf(bad, sizeof(bad), "%s/out.txt", path); /* through a regular file */
    CHECK_CODE(moira_atomic_open(bad, &file), MOIRA_CODE_IO);

    /* A write error the stream remembers fails the commit: a 1 KiB file size limit. */
    struct rlimit old_limit, limit;
    CHECK(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    limit = old_limit;
    limit.rlim_cur = 1024;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK_OK(moira_atomic_open(path, &file));
    if (setrlimit(RLIMIT_FSIZE, &limit) == 0) {
        for (int i = 0; i < 100; i++)
            fputs("0123456789012345678901234567890123456789012345678901234567890123", file.stream);
        status = moira_atomic_commit(&file);
        CHECK(setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
        CHECK(moira_status_code(status) == MOIRA_CODE_IO);
        printf("  %s\n", moira_status_message(status));
        moira_status_free(status);
    } else {
        moira_atomic_abort(&file);
    }
    signal(SIGXFSZ, old_handler);
    CHECK(!strcmp(contents(path), "kept"));
    CHECK(temporaries() == 0);
}

static bool failing_writer(FILE *out, void *context) {
    (void)context;
    fputs("half a file", out);
    return false;
}

static bool good_writer(FILE *out, void *context) {
    return fputs((const char *)context, out) >= 0;
}

static void test_write_file_atomically(void) {
    char path[128];
    in_dir(path, sizeof(path), "whole.txt");
    CHECK_OK(moira_write_file_atomically(path, good_writer, "whole"));
    CHECK(!strcmp(contents(path), "whole"));
    moira_status_t status = moira_write_file_atomically(path, failing_writer, NULL);
    CHECK(moira_status_code(status) == MOIRA_CODE_IO);
    CHECK(strstr(moira_status_message(status), "whole.txt: cannot write") != NULL);
    moira_status_free(status);
    CHECK(!strcmp(contents(path), "whole"));
    CHECK(temporaries() == 0);
    /* "-" is standard output: nothing to create or rename. */
    moira_atomic_file_t file;
    CHECK_OK(moira_atomic_open("-", &file));
    CHECK(file.stream == stdout && file.temp == NULL);
    CHECK_OK(moira_atomic_commit(&file));
    CHECK_CODE(moira_atomic_open("", &file), MOIRA_CODE_INVALID_ARGUMENT);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/moira-atomic-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    test_commit();
    test_abort_and_failures();
    test_write_file_atomically();
    char command[128];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    CHECK(system(command) == 0);
    return moira_test_finish("test_atomic_file");
}
