/* The backend registry.
 *
 * A backend (cpu, opencl, npu) registers once; on first use the runtime asks each backend for its
 * devices and names them BACKEND:INDEX. A backend whose driver is missing or broken reports no
 * devices (and a reason, shown by `moira devices`) rather than failing the program. */
#ifndef MOIRA_RUNTIME_BACKEND_H
#define MOIRA_RUNTIME_BACKEND_H

#include "runtime/device.h"
#include "runtime/status.h"

#define MOIRA_MAX_DEVICES 64

typedef struct moira_backend {
    const char *name; /* "cpu"; static storage */
    /* Appends up to `capacity` devices to `out_devices`, setting `*out_count`. The runtime owns
     * the devices afterwards and destroys them at shutdown. An error here is reported as the
     * backend being unavailable, not as a program failure. */
    moira_status_t (*enumerate)(moira_device_t **out_devices, int capacity, int *out_count);
} moira_backend_t;

/* Adds a backend. `backend` is borrowed and must outlive the runtime (static storage). */
moira_status_t moira_backend_register(const moira_backend_t *backend);

/* Registers the built-in backends (those compiled into this binary) and enumerates devices, once;
 * later calls do nothing. Defined in the file CMake generates from backends/registry_builtin.c.in,
 * which is what links the backends in. */
moira_status_t moira_runtime_init(void);

/* Asks every registered backend for its devices, once; later calls do nothing. */
void moira_runtime_enumerate(void);

/* Destroys every device. Buffers and queues must already be gone. */
void moira_runtime_shutdown(void);

/* All enumerated devices, in backend registration order. Borrowed. */
int moira_device_count(void);
moira_device_t *moira_device_at(int index);

/* Finds a device by name ("cpu:0") among the enumerated ones. NOT_FOUND lists those there are. */
moira_status_t moira_device_find(const char *name, moira_device_t **out_device);

/* Registered backends, and for a backend without devices, why (borrowed; NULL if it has some). */
int moira_backend_count(void);
const char *moira_backend_name(int index);
const char *moira_backend_unavailable_reason(int index);

#endif
