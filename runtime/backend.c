#include "runtime/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BACKENDS 8

static struct {
    const moira_backend_t *backends[MAX_BACKENDS];
    char *unavailable[MAX_BACKENDS]; /* owned; why a backend has no devices */
    int n_backends;
    moira_device_t *devices[MOIRA_MAX_DEVICES];
    int n_devices;
    bool initialised;
} registry;

static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;

moira_status_t moira_backend_register(const moira_backend_t *backend) {
    for (int i = 0; i < registry.n_backends; i++)
        if (!strcmp(registry.backends[i]->name, backend->name)) return MOIRA_OK_STATUS;
    if (registry.n_backends == MAX_BACKENDS)
        return moira_status_make(MOIRA_CODE_INTERNAL, "too many backends");
    registry.backends[registry.n_backends++] = backend;
    return MOIRA_OK_STATUS;
}

/* Asks one backend for its devices and names them; a failure only marks the backend absent. */
static void enumerate_backend(int b) {
    const moira_backend_t *backend = registry.backends[b];
    int capacity = MOIRA_MAX_DEVICES - registry.n_devices;
    int count = 0;
    moira_status_t status =
        backend->enumerate(registry.devices + registry.n_devices, capacity, &count);
    if (status) {
        registry.unavailable[b] = strdup(moira_status_message(status));
        moira_status_free(status);
        return;
    }
    if (count == 0) registry.unavailable[b] = strdup("no devices found");
    for (int i = 0; i < count; i++) {
        moira_device_info_t *info = &registry.devices[registry.n_devices + i]->info;
        info->index = i;
        snprintf(info->backend, sizeof(info->backend), "%s", backend->name);
        snprintf(info->name, sizeof(info->name), "%s:%d", backend->name, i);
    }
    registry.n_devices += count;
}

void moira_runtime_enumerate(void) {
    pthread_mutex_lock(&registry_mutex);
    if (!registry.initialised) {
        for (int b = 0; b < registry.n_backends; b++)
            enumerate_backend(b);
        registry.initialised = true;
    }
    pthread_mutex_unlock(&registry_mutex);
}

void moira_runtime_shutdown(void) {
    pthread_mutex_lock(&registry_mutex);
    for (int i = 0; i < registry.n_devices; i++)
        registry.devices[i]->vtable->destroy(registry.devices[i]);
    for (int b = 0; b < registry.n_backends; b++)
        free(registry.unavailable[b]);
    memset(&registry, 0, sizeof(registry));
    pthread_mutex_unlock(&registry_mutex);
}

int moira_device_count(void) {
    return registry.n_devices;
}

moira_device_t *moira_device_at(int index) {
    return index >= 0 && index < registry.n_devices ? registry.devices[index] : NULL;
}

moira_status_t moira_device_find(const char *name, moira_device_t **out_device) {
    *out_device = NULL;
    char known[512] = "";
    size_t used = 0;
    for (int i = 0; i < registry.n_devices; i++) {
        const char *device_name = registry.devices[i]->info.name;
        if (!strcmp(device_name, name)) {
            *out_device = registry.devices[i];
            return MOIRA_OK_STATUS;
        }
        if (used < sizeof(known))
            used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                                     device_name);
    }
    return moira_status_make(MOIRA_CODE_NOT_FOUND, "no device named \"%s\" (devices: %s)", name,
                             registry.n_devices ? known : "none");
}

int moira_backend_count(void) {
    return registry.n_backends;
}

const char *moira_backend_name(int index) {
    return registry.backends[index]->name;
}

const char *moira_backend_unavailable_reason(int index) {
    return registry.unavailable[index];
}
