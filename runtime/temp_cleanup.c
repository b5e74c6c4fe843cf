#include "runtime/temp_cleanup.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The table the handler reads. A slot's path is written before its flag is raised and the flag
 * lowered before the slot is reused, so the handler never removes a half-written name. */
static char paths[MOIRA_TEMP_CLEANUP_SLOTS][PATH_MAX];
static volatile sig_atomic_t live[MOIRA_TEMP_CLEANUP_SLOTS];
static volatile sig_atomic_t folder[MOIRA_TEMP_CLEANUP_SLOTS]; /* a folder of files */
static bool taken[MOIRA_TEMP_CLEANUP_SLOTS]; /* under `lock`: claimed by remember */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
#define N_SIGNALS (sizeof(cleanup_signals) / sizeof(cleanup_signals[0]))

/* What each signal did before: a library loaded earlier (LLVM, under the OpenCL driver) may have
 * its own handler, which still runs after the temporaries are gone. */
static struct sigaction previous[N_SIGNALS];

/* A folder's files, then the folder, with system calls only (readdir may allocate). Entries are
 * read again from the start after each batch, as removing them while listing may skip some. */
static void remove_folder(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[4096] __attribute__((aligned(8)));
    for (int pass = 0; pass < 1000; pass++) {
        lseek(fd, 0, SEEK_SET);
        long n = syscall(SYS_getdents64, fd, buf, sizeof(buf));
        bool removed = false;
        for (long at = 0; at < n;) {
            const struct dirent64_record {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *e = (const void *)(buf + at);
            bool dots =
                e->name[0] == '.' && (e->name[1] == 0 || (e->name[1] == '.' && e->name[2] == 0));
            if (!dots && unlinkat(fd, e->name, 0) == 0) removed = true;
            at += e->reclen;
        }
        if (!removed) break;
    }
    close(fd);
    rmdir(path);
}

/* Removes every live temporary, then lets the signal do what it did before Moira: with the
 * previous action (the default, or a library's handler) restored, the re-raised signal (blocked
 * while this handler runs) takes that action as soon as this handler returns. */
static void remove_temporaries(int sig) {
    for (int i = 0; i < MOIRA_TEMP_CLEANUP_SLOTS; i++)
        if (live[i] && folder[i])
            remove_folder(paths[i]);
        else if (live[i])
            unlink(paths[i]);
    bool restored = false;
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (cleanup_signals[i] == sig) restored = sigaction(sig, &previous[i], NULL) == 0;
    if (!restored) signal(sig, SIG_DFL);
    raise(sig);
}

/* Installed once, in front of whatever handled the signal before; a signal the user ignores (as
 * nohup's SIGHUP) stays ignored. */
static void install_handler(void) {
    for (size_t i = 0; i < N_SIGNALS; i++) {
        if (sigaction(cleanup_signals[i], NULL, &previous[i]) != 0 ||
            previous[i].sa_handler == SIG_IGN)
            continue;
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_handler = remove_temporaries;
        sigfillset(&action.sa_mask); /* no other signal runs the handler half way */
        sigaction(cleanup_signals[i], &action, NULL);
    }
}

/* Claims a slot for `path`, a folder when `is_folder`; -1 when none is free or it is too long. */
static int remember(const char *path, bool is_folder) {
    size_t n = strlen(path);
    if (n >= PATH_MAX) return -1;
    pthread_once(&install_once, install_handler);
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < MOIRA_TEMP_CLEANUP_SLOTS && slot < 0; i++)
        if (!taken[i]) slot = i;
    if (slot >= 0) {
        taken[slot] = true;
        memcpy(paths[slot], path, n + 1);
        folder[slot] = is_folder;
        atomic_thread_fence(memory_order_seq_cst);
        live[slot] = 1;
    }
    pthread_mutex_unlock(&lock);
    return slot;
}

int moira_temp_cleanup_remember(const char *path) {
    return remember(path, false);
}

int moira_temp_cleanup_remember_folder(const char *path) {
    return remember(path, true);
}

void moira_temp_cleanup_forget(int slot) {
    if (slot < 0 || slot >= MOIRA_TEMP_CLEANUP_SLOTS) return;
    pthread_mutex_lock(&lock);
    live[slot] = 0;
    atomic_thread_fence(memory_order_seq_cst);
    taken[slot] = false;
    pthread_mutex_unlock(&lock);
}
