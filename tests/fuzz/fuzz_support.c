/* Helpers the fuzz targets share: invariant failures, the input-error rule, a scratch directory
 * and fixture loading. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/log.h"
#include "runtime/read_file.h"
#include "tests/fuzz/fuzz.h"

static char scratch_dir[64];

void moira_fuzz_fail(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "fuzz invariant broken at %s:%d: ", file, line);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    abort();
}

/* Bad input is the user's to fix: exit 2 and a message saying what. Anything else (INTERNAL,
 * IO on our own scratch files, a run failure) means the parser mistook its input for something
 * else. */
void moira_fuzz_expect_input_error(moira_status_t status, const char *what) {
    FUZZ_ASSERT(status != MOIRA_OK_STATUS, "%s: expected an error", what);
    const char *message = moira_status_message(status);
    FUZZ_ASSERT(message && *message, "%s: error without a message", what);
    FUZZ_ASSERT(moira_status_exit_code(status) == 2, "%s: %s error (exit %d, not 2): %s", what,
                moira_code_name(moira_status_code(status)), moira_status_exit_code(status),
                message);
    moira_status_free(status);
}

/* rm -r of the flat scratch directory: the targets create no subdirectories. */
static void remove_scratch(void) {
    char command[128];
    if (!scratch_dir[0]) return;
    snprintf(command, sizeof(command), "rm -rf '%s'", scratch_dir);
    if (system(command) != 0) fprintf(stderr, "fuzz: could not remove %s\n", scratch_dir);
}

const char *moira_fuzz_setup(void) {
    if (scratch_dir[0]) return scratch_dir;
    moira_log_set_level(MOIRA_LOG_ERROR);
    const char *base = getenv("TMPDIR");
    snprintf(scratch_dir, sizeof(scratch_dir), "%.40s/moira-fuzz-XXXXXX",
             base && *base ? base : "/tmp");
    if (!mkdtemp(scratch_dir)) {
        fprintf(stderr, "fuzz: cannot create %s: %s\n", scratch_dir, strerror(errno));
        abort();
    }
    atexit(remove_scratch);
    return scratch_dir;
}

void moira_fuzz_write_file(const char *path, const void *data, size_t size) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    FUZZ_ASSERT(fd >= 0, "cannot create %s: %s", path, strerror(errno));
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        FUZZ_ASSERT(n > 0, "cannot write %s: %s", path, strerror(errno));
        p += n;
        size -= (size_t)n;
    }
    FUZZ_ASSERT(close(fd) == 0, "cannot close %s", path);
}

char *moira_fuzz_read_fixture(const char *path, size_t *out_len) {
    char *text = NULL;
    size_t len = 0;
    moira_status_t status = moira_read_file(path, "fixture", (size_t)1 << 30, &text, &len);
    FUZZ_ASSERT(!status, "%s", moira_status_message(status));
    char *terminated = realloc(text, len + 1);
    FUZZ_ASSERT(terminated, "out of memory");
    terminated[len] = '\0';
    if (out_len) *out_len = len;
    return terminated;
}
