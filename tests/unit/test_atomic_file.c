/* Outputs are written whole or not at all (runtime/atomic_file.h): a committed file has its
 * contents and an ordinary mode, and every failure (a missing folder, a path through a file, a
 * write error, a writer's own error, an abort) leaves the old file as it was and no temporary.
 * Outputs committed together are both new or both old, even when the second rename fails; a
 * symbolic link stays a link, a FIFO or device is written in place and never replaced, a folder is
 * refused, and SIGTERM during a write leaves no temporary. */
#include "runtime/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
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

/* Two outputs together: when the second rename fails (here a folder appeared at its name after
 * the open) the first is put back: the old file where there was one, nothing where there was
 * none. */
static void test_commit_all_puts_back(void) {
    char first[128], second[128], inside[160];
    in_dir(first, sizeof(first), "first.txt");
    in_dir(second, sizeof(second), "second.txt");
    moira_atomic_file_t files[2];
    CHECK_OK(moira_atomic_open(first, &files[0]));
    write_text(&files[0], "old");
    CHECK_OK(moira_atomic_commit(&files[0]));
    for (int existed = 1; existed >= 0; existed--) {
        if (!existed) CHECK(unlink(first) == 0);
        CHECK_OK(moira_atomic_open(first, &files[0]));
        CHECK_OK(moira_atomic_open(second, &files[1]));
        write_text(&files[0], "new");
        write_text(&files[1], "new");
        CHECK(mkdir(second, 0777) == 0);
        snprintf(inside, sizeof(inside), "%s/x", second);
        FILE *f = fopen(inside, "w");
        CHECK(f && fclose(f) == 0);
        moira_status_t status = moira_atomic_commit_all(files, 2);
        CHECK(moira_status_code(status) == MOIRA_CODE_IO);
        CHECK(strstr(moira_status_message(status), "second.txt") != NULL);
        printf("  %s\n", moira_status_message(status));
        moira_status_free(status);
        if (existed)
            CHECK(!strcmp(contents(first), "old"));
        else
            CHECK(access(first, F_OK) != 0);
        CHECK(unlink(inside) == 0 && rmdir(second) == 0);
        CHECK(temporaries() == 0);
    }
    /* Both renames succeed: both new; a zeroed entry (an output not asked for) is skipped. */
    moira_atomic_file_t three[3];
    memset(three, 0, sizeof(three));
    CHECK_OK(moira_atomic_open(first, &three[0]));
    CHECK_OK(moira_atomic_open(second, &three[2]));
    write_text(&three[0], "one");
    write_text(&three[2], "two");
    CHECK_OK(moira_atomic_commit_all(three, 3));
    CHECK(!strcmp(contents(first), "one"));
    CHECK(!strcmp(contents(second), "two"));
    CHECK(temporaries() == 0);
}

/* Through a chain of links (the last one dangling) the file at the end is created and the links
 * stay links; a folder is refused; a FIFO nobody reads is refused at once, and one with a reader
 * gets the bytes and stays a FIFO; a character device (made here, as root) stays one. */
static void test_special_targets(void) {
    char link1[128], link2[128], target[128], fifo[128], node[128], sub[128];
    in_dir(link1, sizeof(link1), "link1");
    in_dir(link2, sizeof(link2), "link2");
    in_dir(target, sizeof(target), "sub/target.txt");
    in_dir(sub, sizeof(sub), "sub");
    CHECK(mkdir(sub, 0777) == 0);
    CHECK(symlink("sub/target.txt", link2) == 0);
    CHECK(symlink("link2", link1) == 0);
    moira_atomic_file_t file;
    CHECK_OK(moira_atomic_open(link1, &file));
    write_text(&file, "through links");
    CHECK_OK(moira_atomic_commit(&file));
    struct stat st;
    CHECK(lstat(link1, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(lstat(link2, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(!strcmp(contents(target), "through links"));
    CHECK_OK(moira_atomic_open(link1, &file)); /* and replaced through them */
    write_text(&file, "again");
    CHECK_OK(moira_atomic_commit(&file));
    CHECK(lstat(link1, &st) == 0 && S_ISLNK(st.st_mode));
    CHECK(!strcmp(contents(target), "again"));

    moira_status_t status = moira_atomic_open(sub, &file);
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_ARGUMENT);
    CHECK(strstr(moira_status_message(status), "is a folder") != NULL);
    moira_status_free(status);

    in_dir(fifo, sizeof(fifo), "fifo");
    CHECK(mkfifo(fifo, 0666) == 0);
    status = moira_atomic_open(fifo, &file);
    CHECK(moira_status_code(status) == MOIRA_CODE_IO);
    CHECK(strstr(moira_status_message(status), "nobody reading") != NULL);
    moira_status_free(status);
    int reader = open(fifo, O_RDONLY | O_NONBLOCK);
    CHECK(reader >= 0);
    CHECK_OK(moira_atomic_open(fifo, &file));
    CHECK(file.temp == NULL);
    write_text(&file, "piped");
    CHECK_OK(moira_atomic_commit(&file));
    char got[16] = "";
    CHECK(read(reader, got, sizeof(got) - 1) == 5 && !strcmp(got, "piped"));
    close(reader);
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));

    in_dir(node, sizeof(node), "null");
    if (mknod(node, S_IFCHR | 0666, makedev(1, 3)) == 0) {
        CHECK_OK(moira_atomic_open(node, &file));
        write_text(&file, "discarded");
        CHECK_OK(moira_atomic_commit(&file));
        CHECK(lstat(node, &st) == 0 && S_ISCHR(st.st_mode));
    } else {
        printf("  (not root: no character device to write to)\n");
    }
    CHECK(temporaries() == 0);
}

/* SIGTERM while an output is being written: the child dies of the signal as before, and its
 * temporary is gone. */
static void test_signal_removes_temporary(void) {
    char path[128];
    in_dir(path, sizeof(path), "killed.txt");
    fflush(stdout);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        moira_atomic_file_t file;
        if (moira_atomic_open(path, &file)) _exit(3);
        fputs("half a file", file.stream);
        fflush(file.stream);
        if (temporaries() != 1) _exit(4);
        raise(SIGTERM);
        _exit(5); /* not reached */
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    if (!WIFSIGNALED(status)) printf("  child exited %d\n", WEXITSTATUS(status));
    CHECK(access(path, F_OK) != 0);
    CHECK(temporaries() == 0);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/moira-atomic-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    test_commit();
    test_abort_and_failures();
    test_write_file_atomically();
    test_commit_all_puts_back();
    test_special_targets();
    test_signal_removes_temporary();
    char command[128];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    CHECK(system(command) == 0);
    return moira_test_finish("test_atomic_file");
}
