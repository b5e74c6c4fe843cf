#include "runtime/temp_cleanup.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

/* The table the handler reads. A slot's path is written before its flag is raised and the flag
 * lowered before the slot is reused, so the handler never removes a half-written name. */
static char paths[MOIRA_TEMP_CLEANUP_SLOTS][PATH_MAX];
static volatile sig_atomic_t live[MOIRA_TEMP_CLEANUP_SLOTS];
static bool taken[MOIRA_TEMP_CLEANUP_SLOTS]; /* under `lock`: claimed by remember */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
#define N_SIGNALS (sizeof(cleanup_signals) / sizeof(cleanup_signals[0]))

/* What each signal did before: a library loaded earlier (LLVM, under the OpenCL driver) may have
 * its own handler, which still runs after the temporaries are gone. */
static struct sigaction previous[N_SIGNALS];

/* Removes every live temporary, then lets the signal do what it did before Moira: with the
 * previous action (the default, or a library's handler) restored, the re-raised signal (blocked
 * while this handler runs) takes that action as soon as this handler returns. */
static void remove_temporaries(int sig) {
    for (int i = 0; i < MOIRA_TEMP_CLEANUP_SLOTS; i++)
        if (live[i]) unlink(paths[i]);
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

int moira_temp_cleanup_remember(const char *path) {
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
        atomic_thread_fence(memory_order_seq_cst);
        live[slot] = 1;
    }
    pthread_mutex_unlock(&lock);
    return slot;
}

void moira_temp_cleanup_forget(int slot) {
    if (slot < 0 || slot >= MOIRA_TEMP_CLEANUP_SLOTS) return;
    pthread_mutex_lock(&lock);
    live[slot] = 0;
    atomic_thread_fence(memory_order_seq_cst);
    taken[slot] = false;
    pthread_mutex_unlock(&lock);
}
