/* The enumerated devices as placement's discovery takes them (placement never calls into the
 * device layer itself). */
#include <stdlib.h>

#include "placement/topology.h"
#include "runtime/backend.h"
#include "runtime/cli/cli.h"

/* Discovery takes one contiguous array of infos; the runtime keeps each inside its device. */
moira_status_t moira_cli_device_infos(moira_device_info_t **out_infos, int *out_count) {
    MOIRA_RETURN_IF_ERROR(moira_runtime_init());
    int n = moira_device_count();
    moira_device_info_t *infos = calloc((size_t)n + 1, sizeof(*infos));
    if (!infos) return moira_status_make(MOIRA_CODE_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < n; i++)
        infos[i] = *moira_device_info(moira_device_at(i));
    *out_infos = infos;
    *out_count = n;
    return MOIRA_OK_STATUS;
}

int moira_cli_backend_names(const char **names, int capacity) {
    int n = 0;
    for (int i = 0; i < moira_backend_count() && n < capacity; i++)
        names[n++] = moira_backend_name(i);
    return n;
}

/* --topology FILE, or this machine discovered; backends checked against the registered ones.
 * What plan and calibrate share. */
moira_status_t moira_cli_load_topology(const char *path, bool with_emulated,
                                       moira_topology_t *out) {
    moira_device_info_t *infos = NULL;
    int n_infos = 0;
    MOIRA_RETURN_IF_ERROR(moira_cli_device_infos(&infos, &n_infos));
    const char *backends[16];
    moira_discovery_devices_t devices = {infos, n_infos, backends,
                                         moira_cli_backend_names(backends, 16),
                                         with_emulated || getenv("MOIRA_NPU_DEVICES")};
    moira_status_t status = path ? moira_topology_load(path, &devices, out)
                                 : moira_topology_discover_local(&devices, out);
    free(infos);
    return status;
}
