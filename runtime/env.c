/* MOIRA_* environment variables (see env.h). */
#include "runtime/env.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names already warned about, so a variable read per launch warns once per process. */
#define MAX_WARNED 16
static const char *warned[MAX_WARNED];
static int warned_count;
static pthread_mutex_t warned_lock = PTHREAD_MUTEX_INITIALIZER;

/* Prints the warning unless this variable already had one. */
static void warn_once(const char *name, const char *value, const char *expected) {
    pthread_mutex_lock(&warned_lock);
    bool seen = false;
    for (int i = 0; i < warned_count; i++)
        seen |= warned[i] == name || !strcmp(warned[i], name);
    if (!seen && warned_count < MAX_WARNED) warned[warned_count++] = name;
    pthread_mutex_unlock(&warned_lock);
    if (!seen)
        fprintf(stderr, "moira: warning: %s=%s is not %s; using the default\n", name, value,
                expected);
}

int moira_env_choice(const char *name, const char *const *choices) {
    const char *value = getenv(name);
    if (!value || !*value) return -1;
    for (int i = 0; choices[i]; i++)
        if (!strcmp(value, choices[i])) return i;
    /* Read per launch by some callers: the message is built only for a value that is wrong. */
    char expected[256] = "one of";
    for (int i = 0; choices[i]; i++) {
        size_t used = strlen(expected);
        snprintf(expected + used, sizeof(expected) - used, "%s %s", i ? "," : "", choices[i]);
    }
    warn_once(name, value, expected);
    return -1;
}

long moira_env_int(const char *name, long min, long max, long fallback) {
    const char *value = getenv(name);
    if (!value || !*value) return fallback;
    char *end = NULL;
    errno = 0;
    long n = strtol(value, &end, 10);
    if (*end || errno || n < min || n > max) {
        char expected[96];
        snprintf(expected, sizeof(expected), "an integer in [%ld, %ld]", min, max);
        warn_once(name, value, expected);
        return fallback;
    }
    return n;
}
