#include "runtime/fault.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LOST_DEVICES 8

static struct {
    long long alloc_at; /* 0: no allocation fault */
    bool alloc_from_then_on;
    bool kernel_build;
    int n_lost;
    char lost[MAX_LOST_DEVICES][32];
    char slow[32]; /* the device slow:DEVICE:MS names, "" when none */
    long slow_ms;
} faults;

static pthread_once_t parse_once = PTHREAD_ONCE_INIT;
static atomic_llong allocations;

/* One entry of MOIRA_FAULT; false when it means nothing. */
static bool parse_entry(const char *entry) {
    if (!strcmp(entry, "kernel-build")) {
        faults.kernel_build = true;
        return true;
    }
    if (!strncmp(entry, "alloc:", 6)) {
        char *end = NULL;
        long long n = strtoll(entry + 6, &end, 10);
        if (end == entry + 6 || n < 1 || (*end && strcmp(end, "+"))) return false;
        faults.alloc_at = n;
        faults.alloc_from_then_on = *end == '+';
        return true;
    }
    if (!strncmp(entry, "lost:", 5) && entry[5] && faults.n_lost < MAX_LOST_DEVICES &&
        strlen(entry + 5) < sizeof(faults.lost[0])) {
        snprintf(faults.lost[faults.n_lost++], sizeof(faults.lost[0]), "%s", entry + 5);
        return true;
    }
    const char *colon = !strncmp(entry, "slow:", 5) ? strrchr(entry + 5, ':') : NULL;
    if (colon && colon > entry + 5 && (size_t)(colon - entry - 5) < sizeof(faults.slow)) {
        char *end = NULL;
        long ms = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || ms < 1 || ms > 600000) return false;
        snprintf(faults.slow, sizeof(faults.slow), "%.*s", (int)(colon - entry - 5), entry + 5);
        faults.slow_ms = ms;
        return true;
    }
    return false;
}

/* Reads MOIRA_FAULT once per process. */
static void parse_faults(void) {
    const char *spec = getenv("MOIRA_FAULT");
    if (!spec || !*spec) return;
    char *copy = strdup(spec);
    if (!copy) return;
    char *save = NULL;
    for (char *entry = strtok_r(copy, ",", &save); entry; entry = strtok_r(NULL, ",", &save))
        if (!parse_entry(entry))
            fprintf(stderr,
                    "moira: warning: MOIRA_FAULT entry \"%s\" is not one of alloc:N, "
                    "alloc:N+, kernel-build, lost:DEVICE, slow:DEVICE:MS; ignored\n",
                    entry);
    free(copy);
}

moira_status_t moira_fault_alloc(const moira_device_t *device, size_t bytes) {
    pthread_once(&parse_once, parse_faults);
    if (!faults.alloc_at) return MOIRA_OK_STATUS;
    long long n = atomic_fetch_add(&allocations, 1) + 1;
    if (n < faults.alloc_at || (n > faults.alloc_at && !faults.alloc_from_then_on))
        return MOIRA_OK_STATUS;
    return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY,
                             "%s: out of device memory allocating %zu bytes (injected: "
                             "MOIRA_FAULT=alloc:%lld%s, allocation %lld)",
                             device->info.name, bytes, faults.alloc_at,
                             faults.alloc_from_then_on ? "+" : "", n);
}

moira_status_t moira_fault_device_lost(const moira_device_t *device, const char *doing) {
    pthread_once(&parse_once, parse_faults);
    for (int i = 0; i < faults.n_lost; i++)
        if (!strcmp(faults.lost[i], device->info.name))
            return moira_status_make(MOIRA_CODE_DEVICE,
                                     "%s: the device is gone (%s failed; injected: "
                                     "MOIRA_FAULT=lost:%s)",
                                     device->info.name, doing, device->info.name);
    return MOIRA_OK_STATUS;
}

void moira_fault_slow_launch(const moira_device_t *device) {
    pthread_once(&parse_once, parse_faults);
    if (!faults.slow_ms || strcmp(faults.slow, device->info.name)) return;
    struct timespec pause = {faults.slow_ms / 1000, (faults.slow_ms % 1000) * 1000000L};
    while (nanosleep(&pause, &pause))
        ;
}

const char *moira_fault_kernel_build_options(void) {
    pthread_once(&parse_once, parse_faults);
    return faults.kernel_build ? "-DMOIRA_BUILD_SELFTEST_ERROR" : "";
}
